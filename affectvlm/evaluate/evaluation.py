"""Evaluating a predictor on labelled data: per-sample probabilities, the metrics report and the figures.

The predictor is `affectvlm.predict.Predictor` (a trained checkpoint, or an open_clip model used zero-shot), so
evaluation sees exactly what `affectvlm predict` sees. Two kinds of data:
- a dataset folder (any layout `index_dataset` reads): each mesh rendered as `affectvlm predict` renders it;
- a render cache or mesh cache (what `affectvlm train` reads): its views, normalised as in training's own
  held-out evaluation (no augmentation, no camera jitter).

4D data is scored twice: per frame, and per sequence. A sequence's prediction comes from the model's own frame
fusion (`AffectVLM.fuse_frames` over the frame embeddings, then the prompt-ensemble classifier), the same as
`affectvlm predict` on a sequence folder, not from averaging per-frame probabilities.

Calibration is reported as the model gives it: the ECE of its probabilities at the temperature stored in the
model (1 unless set); no temperature is fitted here.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from affectvlm.evaluate.figures import confusion_figure, frame_curves_figure, reliability_figure
from affectvlm.evaluate.metrics import DEFAULT_CALIBRATION_BINS, classification_report
from affectvlm.geometry.normalise import DEFAULT_POSE

BATCH = 16  # samples per model call


@dataclass
class Predictions:
    """Class probabilities of labelled samples, with what each sample is. `labels` index `classes`."""

    classes: tuple[str, ...]
    probabilities: np.ndarray  # (N, C)
    labels: np.ndarray  # (N,)
    intensity: np.ndarray  # (N,), -1 where unknown
    subjects: list[str]
    files: list[str]
    sequences: list[str | None]
    frames: list[int | None]
    sequence_probabilities: dict[str, np.ndarray] = field(default_factory=dict)  # sequence -> (C,) from fusion
    left_out: dict[str, int] = field(default_factory=dict)  # emotion -> samples of classes the model lacks

    @property
    def is_4d(self) -> bool:
        return any(sequence is not None for sequence in self.sequences)

    def sequence_labels(self) -> dict[str, int]:
        return {sequence: int(label) for sequence, label in zip(self.sequences, self.labels) if sequence is not None}

    @staticmethod
    def concatenate(parts: list[Predictions]) -> Predictions:
        first = parts[0]
        return Predictions(first.classes, np.concatenate([p.probabilities for p in parts]),
                           np.concatenate([p.labels for p in parts]), np.concatenate([p.intensity for p in parts]),
                           [s for p in parts for s in p.subjects], [f for p in parts for f in p.files],
                           [s for p in parts for s in p.sequences], [f for p in parts for f in p.frames],
                           {k: v for p in parts for k, v in p.sequence_probabilities.items()},
                           dict(sum((Counter(p.left_out) for p in parts), Counter())))


def evaluation_samples(samples: list, classes, subjects=None) -> tuple[list[int], dict[str, int]]:
    """Indices of the labelled samples of `subjects` (all when None) whose emotion is one of `classes`, and
    per other emotion how many were left out."""
    wanted = None if subjects is None else set(subjects)
    chosen, left_out = [], Counter()
    for index, sample in enumerate(samples):
        if sample.emotion is None or (wanted is not None and sample.subject not in wanted):
            continue
        if sample.emotion in classes:
            chosen.append(index)
        else:
            left_out[sample.emotion] += 1
    if not chosen:
        raise ValueError("no labelled samples of the model's classes" +
                         ("" if wanted is None else f" among subjects {', '.join(sorted(wanted))}"))
    return chosen, dict(left_out)


@torch.no_grad()
def predict_samples(predictor, data: str | Path, subjects=None) -> Predictions:
    """Probabilities of every labelled sample in `data` (a dataset folder, a render cache or a mesh cache) of
    `subjects` (all when None)."""
    from affectvlm.data.cache import INDEX_FILE

    data = Path(data)
    if (data / INDEX_FILE).is_file():
        samples, embeddings_of = _cached_views(predictor, data)
    else:
        from affectvlm.data.datasets import index_dataset
        from affectvlm.predict import embed_meshes

        samples = index_dataset(data)

        def embeddings_of(ids):
            return embed_meshes(predictor, [samples[i].path for i in ids])

    ids, left_out = evaluation_samples(samples, predictor.classes, subjects)
    embeddings = torch.cat([embeddings_of(ids[i:i + BATCH]) for i in range(0, len(ids), BATCH)])
    chosen = [samples[i] for i in ids]
    return predictions_of(predictor, chosen, embeddings, left_out)


def predictions_of(predictor, samples: list, embeddings: torch.Tensor, left_out: dict | None = None) -> Predictions:
    """Predictions from the fused view embeddings (N, D) of labelled samples; 4D sequences also fused."""
    model, bank = predictor.model, predictor.bank
    probabilities = model.logits(embeddings, bank).softmax(dim=-1).cpu().double().numpy()
    sequences = {}
    for name in sorted({s.sequence for s in samples if s.sequence is not None}):
        rows = sorted((i for i, s in enumerate(samples) if s.sequence == name), key=lambda i: samples[i].frame or 0)
        fused = model.fuse_frames(embeddings[rows][None], torch.ones(1, len(rows), dtype=torch.bool,
                                                                     device=embeddings.device))
        sequences[name] = model.logits(fused, bank).softmax(dim=-1)[0].cpu().double().numpy()
    return Predictions(tuple(predictor.classes), probabilities,
                       np.array([predictor.classes.index(s.emotion) for s in samples], dtype=np.int64),
                       np.array([-1 if s.intensity is None else s.intensity for s in samples], dtype=np.int64),
                       [s.subject for s in samples], [str(s.path) for s in samples], [s.sequence for s in samples],
                       [s.frame for s in samples], sequences, dict(left_out or {}))


def _cached_views(predictor, cache: Path):
    """The samples of a render or mesh cache, and a function from sample ids to fused view embeddings, with the
    views rendered (or read) at the predictor's settings and normalised as in training's evaluation."""
    from affectvlm.data.augment import AugmentSettings
    from affectvlm.data.pipeline import ViewPipeline, open_views

    source = open_views(cache, views=predictor.views, size=predictor.image_size, recipe=predictor.recipe,
                        pose=predictor.pose)
    mean = predictor.augmenter.mean.flatten().tolist()
    std = predictor.augmenter.std.flatten().tolist()

    def embeddings_of(ids):
        pipeline = ViewPipeline(source, len(ids), augment=AugmentSettings.off(), training=False, backend="torch",
                                device=predictor.device, mean=mean, std=std, subset=ids)
        (batch,) = pipeline.epoch(0)
        model = predictor.model
        return model.fuse_views(model.encode_views(batch.images)).float()

    return source.samples, embeddings_of


def zero_shot_predictor(model_name: str, pretrained: str | None, classes, views, recipe: str | None = None,
                        projection: str = "perspective", device: str | torch.device = "cpu", pose: str = DEFAULT_POSE):
    """A predictor of an open_clip model as it is (tag or local weights file), classifying by the default
    prompt bank's class prompts; no training."""
    from affectvlm.data.views import DEFAULT_RECIPE
    from affectvlm.model.affect_model import build_model
    from affectvlm.model.prompts import PromptBank
    from affectvlm.predict import assemble_predictor

    model = build_model(model_name, pretrained, classes=tuple(classes))
    return assemble_predictor(model, PromptBank.default(), classes, views, model.image_size, recipe or DEFAULT_RECIPE,
                              projection, pose, model.normalisation, device)


def report_of(predictions: Predictions, bins: int = DEFAULT_CALIBRATION_BINS) -> dict:
    """The classification report of every sample (every frame for 4D data), and for 4D data one of the
    sequences (`sequences`), each sequence labelled with its frames' emotion."""
    report = classification_report(predictions.probabilities, predictions.labels, predictions.classes,
                                   predictions.intensity, bins)
    report["subjects"] = sorted(set(predictions.subjects))
    if predictions.left_out:
        report["left_out"] = dict(predictions.left_out)
    if predictions.is_4d:
        names = sorted(predictions.sequence_probabilities)
        labels = predictions.sequence_labels()
        report["sequences"] = {
            "fusion": "the model's frame fusion of the frame embeddings, then the prompt-ensemble classifier",
            **classification_report(np.stack([predictions.sequence_probabilities[n] for n in names]),
                                    np.array([labels[n] for n in names]), predictions.classes, bins=bins)}
    return report


def per_sample_records(predictions: Predictions) -> list[dict]:
    """One JSON record per sample: what it is, the predicted class and every class probability."""
    records = []
    for i, file in enumerate(predictions.files):
        record = {"file": file, "subject": predictions.subjects[i],
                  "emotion": predictions.classes[predictions.labels[i]],
                  "predicted": predictions.classes[int(predictions.probabilities[i].argmax())],
                  "probabilities": [round(float(p), 6) for p in predictions.probabilities[i]]}
        if predictions.intensity[i] >= 0:
            record["intensity"] = int(predictions.intensity[i])
        if predictions.sequences[i] is not None:
            record.update(sequence=predictions.sequences[i], frame=predictions.frames[i])
        records.append(record)
    return records


def per_sequence_records(predictions: Predictions) -> list[dict]:
    """One JSON record per 4D sequence: its emotion, the predicted class and every class probability (from the
    model's frame fusion)."""
    labels = predictions.sequence_labels()
    return [{"sequence": name, "emotion": predictions.classes[labels[name]],
             "predicted": predictions.classes[int(probabilities.argmax())],
             "probabilities": [round(float(p), 6) for p in probabilities]}
            for name, probabilities in sorted(predictions.sequence_probabilities.items())]


def write_figures(predictions: Predictions, report: dict, folder: str | Path, prefix: str = "") -> dict:
    """The confusion matrix and reliability diagram (of frames and, for 4D data, of sequences), and the per-frame
    probability curves of the first sequence of each emotion. Returns figure name -> file name in `folder`."""
    folder = Path(folder)
    figures = {"confusion": confusion_figure(report["confusion"], predictions.classes,
                                             folder / f"{prefix}confusion.png",
                                             "confusion (frames)" if predictions.is_4d else ""),
               "reliability": reliability_figure(report["calibration"], folder / f"{prefix}reliability.png",
                                                 report["ece"])}
    if predictions.is_4d:
        sequences = report["sequences"]
        figures["sequence_confusion"] = confusion_figure(sequences["confusion"], predictions.classes,
                                                         folder / f"{prefix}sequence-confusion.png",
                                                         "confusion (sequences)")
        figures["sequence_reliability"] = reliability_figure(sequences["calibration"],
                                                             folder / f"{prefix}sequence-reliability.png",
                                                             sequences["ece"])
        figures["frame_curves"] = [
            frame_curves_figure(probabilities, predictions.classes, folder / f"{prefix}frames-{index:02d}.png", title)
            for index, (probabilities, title) in enumerate(_first_sequence_of_each_class(predictions))]
    return {name: [p.name for p in paths] if isinstance(paths, list) else paths.name
            for name, paths in figures.items()}


def _first_sequence_of_each_class(predictions: Predictions):
    labels = predictions.sequence_labels()
    for label in sorted(set(labels.values())):
        name = min(n for n, value in labels.items() if value == label)
        rows = sorted((i for i, s in enumerate(predictions.sequences) if s == name),
                      key=lambda i: predictions.frames[i])
        yield predictions.probabilities[rows], f"{name} ({predictions.classes[label]})"


def format_report(report: dict, title: str = "") -> str:
    """The report as a table for people: headline numbers, per-class scores, accuracy per intensity, and the
    confusion matrix; for 4D data the sequence-level numbers too."""
    classes = report["classes"]
    width = max(len(name) for name in classes) + 2
    lines = [title] if title else []
    lines.append(f"accuracy {report['accuracy']:.1%}   macro F1 {report['macro_f1']:.3f}   ECE {report['ece']:.3f}   "
                 f"({report['samples']} samples, {len(report.get('subjects', []))} subjects)")
    lines.append(f"{'':<{width}}precision  recall     F1  support")
    for name in classes:
        scores = report["per_class"][name]
        lines.append(f"{name:<{width}}{scores['precision']:9.3f}{scores['recall']:8.3f}{scores['f1']:7.3f}"
                     f"{scores['support']:9d}")
    if report.get("accuracy_by_intensity"):
        lines.append("accuracy by intensity: " + "   ".join(f"{level}: {accuracy:.1%}" for level, accuracy
                                                            in report["accuracy_by_intensity"].items()))
    lines.append("confusion (rows true, columns predicted):")
    lines.append(" " * width + "".join(f"{name[:7]:>8}" for name in classes))
    lines += [f"{name:<{width}}" + "".join(f"{count:8d}" for count in row)
              for name, row in zip(classes, report["confusion"])]
    if report.get("left_out"):
        lines.append("left out (classes the model lacks): " +
                     ", ".join(f"{name} {count}" for name, count in report["left_out"].items()))
    if "sequences" in report:
        sequences = report["sequences"]
        lines.append(f"sequences: accuracy {sequences['accuracy']:.1%}   macro F1 {sequences['macro_f1']:.3f}   "
                     f"ECE {sequences['ece']:.3f}   ({sequences['samples']} sequences; by frame fusion)")
    return "\n".join(lines)
