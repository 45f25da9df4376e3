"""The figures of an evaluation: confusion matrix, reliability diagram, per-frame probability curves (PNG)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from affectvlm.plotting import plt, save_figure


def confusion_figure(confusion, class_names, path: str | Path, title: str = "") -> Path:
    """Row-normalised confusion matrix (true class per row) with the counts written in each cell."""
    confusion = np.asarray(confusion, dtype=np.float64)
    rows = confusion.sum(axis=1, keepdims=True)
    shares = np.divide(confusion, rows, out=np.zeros_like(confusion), where=rows > 0)
    figure, axes = plt.subplots(figsize=(1.0 + 0.8 * len(class_names), 0.8 + 0.8 * len(class_names)))
    axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for (row, column), count in np.ndenumerate(confusion):
        axes.text(column, row, f"{int(count)}", ha="center", va="center",
                  color="white" if shares[row, column] > 0.5 else "black", fontsize=8)
    axes.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    axes.set_yticks(range(len(class_names)), class_names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title or "confusion matrix")
    figure.tight_layout()
    return save_figure(figure, path)


def reliability_figure(calibration: dict, path: str | Path, ece: float | None = None) -> Path:
    """Accuracy against mean confidence per confidence bin (`metrics.calibration_bins`), with the diagonal of
    perfect calibration."""
    edges = np.asarray(calibration["edges"], dtype=np.float64)
    accuracy = np.array([np.nan if a is None else a for a in calibration["accuracy"]], dtype=np.float64)
    figure, axes = plt.subplots(figsize=(4, 4))
    centres, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    axes.bar(centres, np.nan_to_num(accuracy), width=width, edgecolor="black", alpha=0.7, label="accuracy")
    axes.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.set_xlabel("confidence")
    axes.set_ylabel("accuracy")
    axes.set_title("reliability" + (f" (ECE {ece:.3f})" if ece is not None else ""))
    axes.legend(loc="upper left")
    figure.tight_layout()
    return save_figure(figure, path)


def frame_curves_figure(probabilities, class_names, path: str | Path, title: str = "") -> Path:
    """Each class's probability over the frames of one 4D sequence."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    figure, axes = plt.subplots(figsize=(6, 3))
    for column, name in enumerate(class_names):
        axes.plot(probabilities[:, column], label=name)
    axes.set_ylim(0, 1)
    axes.set_xlabel("frame")
    axes.set_ylabel("probability")
    axes.set_title(title or "per-frame probabilities")
    axes.legend(fontsize=7, ncol=2, loc="upper right")
    figure.tight_layout()
    return save_figure(figure, path)
