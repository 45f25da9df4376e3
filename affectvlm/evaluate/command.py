"""`affectvlm evaluate`: one JSON document (OUT/evaluation.json), a folder of figures (OUT/figures) and a table
printed for people, for each way of evaluating:

- a checkpoint on labelled data:           affectvlm evaluate CKPT DATA [--split test|train|all]
- subject-independent cross-validation:    affectvlm evaluate [DATA] --protocol kfold|bu3dfe [--folds K] [train options]
- an open_clip model zero-shot:            affectvlm evaluate --zero-shot MODEL [--pretrained TAG_OR_FILE] DATA
- robustness to real scans:                affectvlm evaluate CKPT --robustness
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import affectvlm

DOCUMENT = "evaluation.json"
FIGURES = "figures"
CALIBRATION_NOTE = "ECE of the probabilities as the model gives them (its stored temperature); none is fitted here"


def mode_of(args: argparse.Namespace) -> str:
    if args.zero_shot:
        return "zero-shot"
    if args.protocol:
        return "protocol"
    return "robustness" if args.robustness else "checkpoint"


def positional_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the positional arguments for the chosen mode, or None."""
    given = [path for path in (args.data, args.data2) if path is not None]
    mode = mode_of(args)
    if sum(bool(x) for x in (args.zero_shot, args.protocol, args.robustness)) > 1:
        return "--zero-shot, --protocol and --robustness exclude each other"
    expected = {"checkpoint": (2, "CKPT DATA"), "zero-shot": (1, "DATA"), "robustness": (1, "CKPT")}
    if mode == "protocol":
        if len(given) > 1:
            return "--protocol takes one DATA folder (or none: the built-in synthetic data), not a checkpoint"
        if args.protocol == "bu3dfe" and not given:
            return "--protocol bu3dfe needs the BU-3DFE folder as DATA"
        return None
    count, names = expected[mode]
    if len(given) != count:
        return f"{'with ' + ('--' + mode) if mode != 'checkpoint' else 'a checkpoint evaluation'} takes {names}"
    return None


def run(args: argparse.Namespace) -> int:
    from affectvlm.data.cache import CacheError
    from affectvlm.data.datasets import DatasetError
    from affectvlm.evaluate.protocols import ProtocolError
    from affectvlm.geometry.mesh import MeshError
    from affectvlm.model.factory import ModelConfigError
    from affectvlm.train.checkpoint import CheckpointError

    out = Path(args.out)
    work = {"checkpoint": _checkpoint, "zero-shot": _zero_shot, "protocol": _protocol,
            "robustness": _robustness}[mode_of(args)]
    # With --json, stdout carries the document alone; what training and evaluation say on the way goes to stderr.
    talk = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
    try:
        with talk:
            document, table = work(args, out)
    except (CheckpointError, DatasetError, CacheError, MeshError, ModelConfigError, ProtocolError, ValueError,
            OSError) as error:
        print(f"affectvlm evaluate: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    document = {"affectvlm": affectvlm.__version__, **document}
    out.mkdir(parents=True, exist_ok=True)
    (out / DOCUMENT).write_text(json.dumps(document, indent=1))
    if args.json:
        print(json.dumps(document, indent=1))
    else:
        print(table)
        print(f"wrote {out / DOCUMENT}" + (f" and figures in {out / FIGURES}" if "figures" in document else ""))
    return 0


def _device(args) -> str:
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device


def _checkpoint(args, out: Path):
    from affectvlm.evaluate.evaluation import predict_samples
    from affectvlm.predict import load_predictor
    from affectvlm.train.checkpoint import load_checkpoint

    checkpoint, data = args.data, args.data2
    info = load_checkpoint(checkpoint).info
    subjects = {"test": info["data"]["test_subjects"], "train": info["data"]["train_subjects"], "all": None}
    predictions = predict_samples(load_predictor(checkpoint, _device(args)), data, subjects[args.split])
    document = {"mode": "checkpoint", "checkpoint": str(checkpoint), "data": str(data), "split": args.split}
    return _with_report(document, predictions, args, out, f"{checkpoint} on {data} ({args.split} subjects)")


def _zero_shot(args, out: Path):
    from affectvlm.data.cache import INDEX_FILE
    from affectvlm.data.datasets import index_dataset
    from affectvlm.data.emotions import EMOTIONS
    from affectvlm.evaluate.evaluation import predict_samples, zero_shot_predictor

    data = Path(args.data)
    samples = _samples_of(data) if (data / INDEX_FILE).is_file() else index_dataset(data)
    classes = tuple(name for name in EMOTIONS if any(sample.emotion == name for sample in samples))
    predictor = zero_shot_predictor(args.zero_shot, args.pretrained, classes, args.views.split(","), args.recipe,
                                    device=_device(args), pose=args.pose)
    predictions = predict_samples(predictor, data)
    document = {"mode": "zero-shot", "model": args.zero_shot, "pretrained": args.pretrained, "data": str(data),
                "views": list(predictor.views), "image_size": predictor.image_size, "recipe": predictor.recipe,
                "pose": predictor.pose}
    return _with_report(document, predictions, args, out, f"zero-shot {args.zero_shot} on {data}")


def _samples_of(cache: Path) -> list:
    from affectvlm.data.pipeline import open_views

    return open_views(cache).samples


def _with_report(document: dict, predictions, args, out: Path, title: str):
    from affectvlm.evaluate.evaluation import (format_report, per_sample_records, per_sequence_records, report_of,
                                               write_figures)

    report = report_of(predictions, args.bins)
    document.update(report=report, calibration_note=CALIBRATION_NOTE,
                    figures=write_figures(predictions, report, out / FIGURES),
                    predictions=per_sample_records(predictions))
    if predictions.is_4d:
        document["sequence_predictions"] = per_sequence_records(predictions)
    return document, format_report(report, title)


def _protocol(args, out: Path):
    from dataclasses import replace

    from affectvlm.evaluate.evaluation import format_report, per_sample_records, write_figures
    from affectvlm.evaluate.protocols import fold_configs, format_summary, run_protocol
    from affectvlm.train.config import TrainConfig

    base = replace(TrainConfig.from_args(args), fold=0, folds=args.folds or 5)
    configs = fold_configs(base, args.protocol, args.folds, out, args.fold)
    result = run_protocol(configs, _device(args), args.bins)
    pooled = result.pop("_predictions")
    document = {"mode": "protocol", "protocol": args.protocol, "folds_total": configs[0].folds,
                "training": {key: value for key, value in base.as_dict().items() if key not in ("fold", "out")},
                **result, "calibration_note": CALIBRATION_NOTE,
                "figures": write_figures(pooled, result["pooled"], out / FIGURES),
                "predictions": per_sample_records(pooled)}
    table = "\n".join([format_report(result["pooled"], f"{args.protocol}: every fold's held-out subjects pooled"),
                       format_summary(result)])
    return document, table


def _robustness(args, out: Path):
    from affectvlm.evaluate.robustness import ROBUSTNESS_SEED, format_robustness, generated_faces, robustness_report
    from affectvlm.predict import load_predictor

    predictor = load_predictor(args.data, _device(args))
    faces = generated_faces(args.robustness_subjects, args.robustness_seed or ROBUSTNESS_SEED)
    names = args.perturbations.split(",") if args.perturbations else None
    report = robustness_report(predictor, faces, names, seed=args.seed)
    return {"mode": "robustness", "checkpoint": str(args.data), **report}, format_robustness(report)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The evaluation options, then the training options of `affectvlm train` (used by --protocol)."""
    from affectvlm.evaluate.protocols import PROTOCOLS
    from affectvlm.evaluate.robustness import SUITE
    from affectvlm.train.config import add_arguments as add_training_arguments

    evaluation = parser.add_argument_group("evaluation")
    evaluation.add_argument("--split", choices=["test", "train", "all"], default="test",
                            help="with a checkpoint: the subjects it held out (default), trained on, or all of DATA")
    evaluation.add_argument("--protocol", choices=PROTOCOLS,
                            help="train one model per subject fold (kfold: --folds K, default 5; bu3dfe: the "
                                 "BU-3DFE protocol, 60 subjects, intensities 3-4, 10 folds) and report mean ± std")
    evaluation.add_argument("--zero-shot", metavar="MODEL",
                            help="evaluate this open_clip model (name or config) with prompts only, no training; "
                                 "weights from --pretrained")
    evaluation.add_argument("--robustness", action="store_true",
                            help="with a checkpoint: accuracy on generated faces under each perturbation of real scans")
    evaluation.add_argument("--robustness-subjects", type=int, default=4,
                            help="generated subjects for --robustness (default 4; 6 emotions x intensities 3-4 each)")
    evaluation.add_argument("--robustness-seed", type=int, help="generator seed of those subjects")
    evaluation.add_argument("--perturbations", help=f"comma-separated subset of: {', '.join(SUITE)}")
    evaluation.add_argument("--bins", type=int, default=15, help="calibration bins of ECE (default 15)")
    evaluation.add_argument("--json", action="store_true", help="print the JSON document instead of the table")
    add_training_arguments(parser)
    parser.add_argument("data2", nargs="?", metavar="DATA", help="with a checkpoint as the first argument: the data")
    parser.set_defaults(out="runs/evaluate", folds=None, fold=None)
