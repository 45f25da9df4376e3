"""Matplotlib set up once for the package's figures: a file-only backend and one way to save a figure."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are written to files; no display is needed or wanted
import matplotlib.pyplot as plt  # noqa: E402


def save_figure(figure, path: str | Path, dpi: int = 100) -> Path:
    """Write `figure` as `path` (its folder created) and release it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi)
    plt.close(figure)
    return path
