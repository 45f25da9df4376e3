"""Classification metrics of expression recognition, from predicted probabilities and true labels.

Everything here is plain numpy on arrays: probabilities (N, C) whose rows sum to 1, labels (N,) in [0, C).
`classification_report` gathers them into one JSON-ready dictionary, the document `affectvlm evaluate` writes.
"""

from __future__ import annotations

import numpy as np

DEFAULT_CALIBRATION_BINS = 15


def confusion_matrix(labels, predictions, num_classes: int) -> np.ndarray:
    """(C, C) counts: row = true class, column = predicted class."""
    labels, predictions = _class_indices(labels, num_classes), _class_indices(predictions, num_classes)
    if labels.shape != predictions.shape:
        raise ValueError(f"{len(labels)} labels but {len(predictions)} predictions")
    return np.bincount(labels * num_classes + predictions, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes)


def per_class_scores(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class. A class never predicted (or never present) scores 0 there,
    as scikit-learn's zero_division=0 does."""
    confusion = np.asarray(confusion, dtype=np.float64)
    hits = np.diag(confusion)
    predicted, support = confusion.sum(axis=0), confusion.sum(axis=1)
    precision = np.divide(hits, predicted, out=np.zeros_like(hits), where=predicted > 0)
    recall = np.divide(hits, support, out=np.zeros_like(hits), where=support > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros_like(hits), where=both > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support.astype(np.int64)}


def macro_f1(confusion: np.ndarray) -> float:
    """The mean F1 over the classes that occur in the labels."""
    scores = per_class_scores(confusion)
    present = scores["support"] > 0
    return float(scores["f1"][present].mean()) if present.any() else 0.0


def calibration_bins(probabilities, labels, bins: int = DEFAULT_CALIBRATION_BINS) -> dict[str, np.ndarray]:
    """The reliability diagram's data: samples binned by confidence (the top probability) into `bins` equal
    widths of [0, 1]; per bin the count, mean confidence and accuracy (NaN for an empty bin)."""
    probabilities = _probabilities(probabilities)
    labels = _class_indices(labels, probabilities.shape[1])
    if bins < 1:
        raise ValueError(f"need at least one calibration bin, got {bins}")
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    # Bin b holds confidences in (b/bins, (b+1)/bins]; a confidence of exactly 0 cannot occur for C classes.
    which = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore"):
        mean_confidence = np.bincount(which, confidence, bins) / count
        accuracy = np.bincount(which, correct.astype(np.float64), bins) / count
    return {"edges": np.linspace(0.0, 1.0, bins + 1), "count": count, "confidence": mean_confidence,
            "accuracy": accuracy}


def expected_calibration_error(probabilities, labels, bins: int = DEFAULT_CALIBRATION_BINS) -> float:
    """Σ_b (n_b / N) |accuracy_b − confidence_b| over the non-empty bins (Guo et al., 2017)."""
    table = calibration_bins(probabilities, labels, bins)
    used = table["count"] > 0
    weights = table["count"][used] / table["count"].sum()
    return float((weights * np.abs(table["accuracy"][used] - table["confidence"][used])).sum())


def accuracy_by_group(groups, correct) -> dict:
    """Accuracy of the samples of each group value (e.g. intensity level), keyed by the value, in sorted order."""
    groups, correct = np.asarray(groups), np.asarray(correct, dtype=bool)
    return {value.item(): float(correct[groups == value].mean()) for value in np.unique(groups)}


def classification_report(probabilities, labels, class_names, intensity=None,
                          bins: int = DEFAULT_CALIBRATION_BINS) -> dict:
    """Every metric of one evaluation as a JSON-ready dictionary.

    `intensity` (N,) with -1 or None where unknown adds accuracy per intensity level.
    """
    probabilities = _probabilities(probabilities)
    class_names = list(class_names)
    if probabilities.shape[1] != len(class_names):
        raise ValueError(f"probabilities have {probabilities.shape[1]} columns for {len(class_names)} classes")
    labels = _class_indices(labels, len(class_names))
    predictions = probabilities.argmax(axis=1)
    confusion = confusion_matrix(labels, predictions, len(class_names))
    scores = per_class_scores(confusion)
    correct = predictions == labels
    table = calibration_bins(probabilities, labels, bins)
    report = {
        "samples": int(len(labels)),
        "accuracy": float(correct.mean()),
        "macro_f1": macro_f1(confusion),
        "classes": class_names,
        "per_class": {name: {key: scores[key][i].item() for key in ("precision", "recall", "f1", "support")}
                      for i, name in enumerate(class_names)},
        "confusion": confusion.tolist(),
        "ece": expected_calibration_error(probabilities, labels, bins),
        "calibration": {key: [None if np.isnan(x) else float(x) for x in values] if values.dtype.kind == "f"
                        else values.tolist() for key, values in table.items()},
    }
    if intensity is not None:
        intensity = np.asarray([-1 if level is None else level for level in intensity], dtype=np.int64)
        known = intensity >= 0
        report["accuracy_by_intensity"] = {str(level): accuracy for level, accuracy
                                           in accuracy_by_group(intensity[known], correct[known]).items()}
    return report


def _probabilities(probabilities) -> np.ndarray:
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or probabilities.shape[0] == 0 or probabilities.shape[1] < 2:
        raise ValueError(f"probabilities must have shape (N, C) with N >= 1 and C >= 2, got {probabilities.shape}")
    if not np.isfinite(probabilities).all() or (probabilities < 0).any():
        raise ValueError("probabilities must be finite and non-negative")
    if not np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-4):
        raise ValueError("each row of probabilities must sum to 1")
    return probabilities


def _class_indices(values, num_classes: int) -> np.ndarray:
    values = np.asarray(values)
    if values.ndim != 1 or not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"class labels must be a 1-D integer array, got {values.dtype} {values.shape}")
    if len(values) and (values.min() < 0 or values.max() >= num_classes):
        raise ValueError(f"class labels must lie in [0, {num_classes}), found {values.min()}..{values.max()}")
    return values.astype(np.int64)
