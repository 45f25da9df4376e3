"""Subject-independent cross-validation: one model trained per fold on the other folds' subjects, each
evaluated on its own held-out subjects, and the folds summarised as mean ± standard deviation.

Training goes through the trainer's Python API (`affectvlm.train.main.run`) with the same options as
`affectvlm train`; fold k of K is exactly `affectvlm train --fold k --folds K` (the trainer's own
`subject_kfold` split), so folds can be trained on different machines into OUT/fold-k and evaluated here
together. A fold whose finished checkpoint was trained with the same settings is evaluated, not trained again.

Protocols:
- "kfold": K folds of the data's subjects.
- "bu3dfe": the protocol of most BU-3DFE papers (`affectvlm.data.splits.bu3dfe_protocol`): 60 subjects, the six
  expressions at intensities 3 and 4, 10 folds of 6 subjects. The chosen scans are linked into
  OUT/bu3dfe-protocol with a labels.csv: the dataset the folds train on.

Each fold is evaluated with its last checkpoint, never the "best" one (that one was chosen on the held-out fold).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from affectvlm.evaluate.evaluation import Predictions, predict_samples, report_of
from affectvlm.train.config import UNRECORDED, TrainConfig, validate

PROTOCOLS = ("kfold", "bu3dfe")
BU3DFE_FOLDER = "bu3dfe-protocol"
# TrainConfig fields that only say how a run is carried out, not what it learns: a stored fold that differs from
# this run only in these is the same fold.
RUNNING_FIELDS = ("out", "cache_dir", "resume", "checkpoint_every", "device", "amp", "compile", "backend",
                  "log_every", "trace_samples", "progress")


class ProtocolError(ValueError):
    """A protocol that cannot run on the given data or settings; the message says why."""


def bu3dfe_dataset(data: str | Path, out: str | Path, seed: int = 0) -> tuple[Path, list]:
    """OUT/bu3dfe-protocol: a dataset folder of the BU-3DFE protocol's 720 scans of `data` (symbolic links to
    them, by subject) with its labels.csv; returns the folder and the protocol's folds (`bu3dfe_protocol`, fold
    seed `seed`)."""
    from dataclasses import replace as with_path

    from affectvlm.data.datasets import DatasetError, index_bu3dfe, write_labels
    from affectvlm.data.splits import bu3dfe_protocol

    try:
        selected, folds = bu3dfe_protocol(index_bu3dfe(data), fold_seed=seed)
    except DatasetError as error:
        raise ProtocolError(str(error)) from None
    folder = Path(out) / BU3DFE_FOLDER
    linked = []
    for sample in selected:
        link = folder / sample.subject / Path(sample.path).name
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(Path(sample.path).resolve())
        linked.append(with_path(sample, path=link))
    write_labels(folder, linked)
    return folder, folds


def fold_configs(base: TrainConfig, protocol: str, folds: int | None, out: str | Path,
                 only_fold: int | None = None) -> list[TrainConfig]:
    """The training config of each fold (or only of `only_fold`): the base options, the protocol's data and fold
    count, OUT/fold-k as output, and one cache folder shared by all folds (data generated and rendered once)."""
    if protocol not in PROTOCOLS:
        raise ProtocolError(f"unknown protocol '{protocol}' (choose from {', '.join(PROTOCOLS)})")
    out = Path(out)
    data = base.data
    if protocol == "bu3dfe":
        if data is None:
            raise ProtocolError("the bu3dfe protocol needs a BU-3DFE folder as DATA")
        if folds not in (None, 10):
            raise ProtocolError(f"the bu3dfe protocol has 10 folds, not {folds}")
        folds = 10
        data = str(bu3dfe_dataset(data, out, base.seed)[0])
    folds = folds or 5
    chosen = range(folds) if only_fold is None else [only_fold]
    configs = []
    for fold in chosen:
        config = replace(base, data=data, folds=folds, fold=fold, out=str(out / f"fold-{fold}"),
                         cache_dir=base.cache_dir or str(out / "cache"), resume=None)
        try:
            validate(config)
        except ValueError as error:
            raise ProtocolError(str(error)) from None
        configs.append(config)
    return configs


def finished_checkpoint(config: TrainConfig) -> Path | None:
    """OUT/last.safetensors of this fold when it holds a finished run of the same settings, else None."""
    from affectvlm.train.checkpoint import CheckpointError, load_checkpoint
    from affectvlm.train.main import LAST

    path = Path(config.out) / LAST
    if not path.is_file():
        return None
    try:
        info = load_checkpoint(path).info
    except CheckpointError:
        return None
    if not same_training(info["config"], config.as_dict()):
        return None
    state = info["training"]
    finished = state["epoch"] >= config.epochs or (config.max_steps is not None
                                                   and state["global_step"] >= config.max_steps)
    return path if finished else None


def same_training(stored: dict, wanted: dict) -> bool:
    """Whether a stored fold's config trains what `wanted` asks for: every field but the RUNNING_FIELDS equal, a
    field the stored config predates counting as its default (options are added with defaults that keep what
    runs did before them; `UNRECORDED` where that default has changed since)."""
    default = {**TrainConfig().as_dict(), **UNRECORDED}
    return all(stored.get(key, default[key]) == value for key, value in wanted.items() if key not in RUNNING_FIELDS)


def train_fold(config: TrainConfig) -> Path:
    """Train one fold (unless a finished run of it is there) and return its last checkpoint."""
    from affectvlm.train.main import LAST, run

    existing = finished_checkpoint(config)
    if existing is not None:
        print(f"fold {config.fold}: using the finished run in {config.out}")
        return existing
    print(f"fold {config.fold} of {config.folds}: training into {config.out}")
    if run(config) != 0:
        raise ProtocolError(f"training fold {config.fold} failed (see above)")
    return Path(config.out) / LAST


def evaluate_fold(checkpoint: Path, device: str = "cpu") -> tuple[Predictions, dict]:
    """A fold's checkpoint on its own held-out subjects, read from the views it was trained from."""
    from affectvlm.predict import load_predictor
    from affectvlm.train.checkpoint import load_checkpoint

    info = load_checkpoint(checkpoint).info
    predictor = load_predictor(checkpoint, device)
    predictions = predict_samples(predictor, info["data"]["source"]["path"], info["data"]["test_subjects"])
    fold = {"fold": info["config"]["fold"], "checkpoint": str(checkpoint),
            "train_subjects": info["data"]["train_subjects"], "test_subjects": info["data"]["test_subjects"]}
    return predictions, fold


def run_protocol(configs: list[TrainConfig], device: str = "cpu", bins: int | None = None) -> dict:
    """Train and evaluate each fold; the document: per-fold reports, the summary over folds, the pooled report
    (every fold's held-out predictions together), and the pooled Predictions under key "_predictions"."""
    folds, parts = [], []
    for config in configs:
        predictions, fold = evaluate_fold(train_fold(config), device)
        fold["report"] = report_of(predictions, **({"bins": bins} if bins else {}))
        folds.append(fold)
        parts.append(predictions)
    pooled = Predictions.concatenate(parts)
    return {"folds": folds, "summary": summarise(f["report"] for f in folds),
            "pooled": report_of(pooled, **({"bins": bins} if bins else {})), "_predictions": pooled}


def summarise(reports) -> dict:
    """Mean and standard deviation over folds (sample standard deviation, ddof=1; 0 for one fold) of accuracy,
    macro F1, ECE, accuracy per intensity level and, for 4D data, sequence accuracy."""
    reports = list(reports)
    values: dict[str, list[float]] = {"accuracy": [], "macro_f1": [], "ece": []}
    for report in reports:
        for key in ("accuracy", "macro_f1", "ece"):
            values[key].append(report[key])
        for level, accuracy in report.get("accuracy_by_intensity", {}).items():
            values.setdefault(f"accuracy_intensity_{level}", []).append(accuracy)
        if "sequences" in report:
            values.setdefault("sequence_accuracy", []).append(report["sequences"]["accuracy"])
    return {key: mean_std(series) for key, series in values.items()}


def mean_std(values: list[float]) -> dict:
    values = np.asarray(values, dtype=np.float64)
    return {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            "folds": len(values), "values": values.tolist()}


def format_summary(document: dict) -> str:
    """One line per fold and the mean ± std over folds."""
    lines = [f"fold {f['fold']}: accuracy {f['report']['accuracy']:.1%}  macro F1 {f['report']['macro_f1']:.3f}  "
             f"ECE {f['report']['ece']:.3f}  ({f['report']['samples']} samples of {', '.join(f['test_subjects'])})"
             for f in document["folds"]]
    for key, stats in document["summary"].items():
        percent = not key.startswith(("ece", "macro"))
        scale, unit = (100, "%") if percent else (1, "")
        lines.append(f"{key:<24} {stats['mean'] * scale:.{1 if percent else 3}f}{unit} ± "
                     f"{stats['std'] * scale:.{1 if percent else 3}f}{unit}  over {stats['folds']} fold(s)")
    return "\n".join(lines)
