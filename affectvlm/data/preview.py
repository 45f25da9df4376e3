"""A preview grid of one synthetic identity's seven expressions, shaded with matplotlib (no GPU renderer).

Regenerate the README's picture with `python -m affectvlm.data.preview docs/synthetic_expressions.png`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402

from affectvlm.data.emotions import EMOTIONS  # noqa: E402
from affectvlm.data.procedural_face import ProceduralFaceModel  # noqa: E402
from affectvlm.data.synthetic import expression_weights  # noqa: E402

LIGHT = np.array([0.35, 0.25, 1.0]) / np.linalg.norm([0.35, 0.25, 1.0])


def shaded_polygons(vertices: np.ndarray, faces: np.ndarray, yaw_degrees: float = 20.0):
    """Triangles projected orthographically after turning the face by `yaw`, back to front, with Lambert
    shading; triangles facing away are dropped."""
    angle = np.radians(yaw_degrees)
    turn = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
    corners = (vertices @ turn.T)[faces]
    normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True) + 1e-12
    visible = normals[:, 2] > 0
    corners, normals = corners[visible], normals[visible]
    order = np.argsort(corners[:, :, 2].mean(axis=1))
    brightness = 0.15 + 0.85 * np.clip(normals[order] @ LIGHT, 0, 1)
    colours = np.clip(brightness[:, None] * np.array([0.93, 0.78, 0.68]), 0, 1)
    return corners[order][:, :, :2], colours


def render_preview(path: str | Path, seed: int = 3, level: int = 4, dpi: int = 80) -> Path:
    """Save a 1 x 7 grid of one identity's expressions at `level` (1-4) to `path` (PNG)."""
    model = ProceduralFaceModel()
    rig = model.rig(model.random_identity(np.random.default_rng(seed)))
    figure, axes = plt.subplots(1, len(EMOTIONS), figsize=(2.0 * len(EMOTIONS), 2.8))
    for axis, emotion in zip(axes, EMOTIONS):
        polygons, colours = shaded_polygons(rig.pose(expression_weights(model, emotion, level)), model.faces)
        axis.add_collection(PolyCollection(polygons, facecolors=colours, edgecolors="none", antialiaseds=False))
        axis.set_xlim(-95, 95)
        axis.set_ylim(-125, 105)
        axis.set_aspect("equal")
        axis.axis("off")
        axis.set_title(emotion if emotion == "neutral" else f"{emotion} {level}", fontsize=11)
    figure.subplots_adjust(left=0, right=1, bottom=0, top=0.9, wspace=0.02)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi)
    plt.close(figure)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path)
    parser.add_argument("--seed", type=int, default=3, help="which identity")
    parser.add_argument("--level", type=int, default=4, choices=range(1, 5), help="expression intensity")
    arguments = parser.parse_args(argv)
    print(render_preview(arguments.path, arguments.seed, arguments.level))


if __name__ == "__main__":
    main()
