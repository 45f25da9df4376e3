"""The README's pictures, drawn with the package's own face generator and rasteriser.

    python -m affectvlm.preview expressions docs/synthetic_expressions.png
    python -m affectvlm.preview views docs/render_views.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from affectvlm.data.emotions import EMOTIONS
from affectvlm.data.procedural_face import ProceduralFaceModel
from affectvlm.data.synthetic import expression_weights
from affectvlm.geometry import Mesh, normalise
from affectvlm.geometry.cameras import DEFAULT_VIEWS, orbit_cameras, view_cameras
from affectvlm.ops.raster import render_views
from affectvlm.plotting import plt, save_figure

SKIN = np.array([0.93, 0.78, 0.68])


def expression_grid(path: str | Path, seed: int = 3, level: int = 4, dpi: int = 80, size: int = 192,
                    yaw_degrees: float = 20.0) -> Path:
    """A 1 x 7 grid of one identity's expressions at `level` (1-4), seen `yaw_degrees` from the front."""
    model, rig = _identity(seed)
    poses = [rig.pose(expression_weights(model, emotion, level)).astype(np.float32) for emotion in EMOTIONS]
    # One scale for all seven, so that expressions are compared at the same size.
    neutral = normalise(Mesh(poses[EMOTIONS.index("neutral")], model.faces))
    centre, scale = neutral.metadata["normalise_centre"], neutral.metadata["normalise_scale"]
    vertices = torch.from_numpy(((np.stack(poses) - centre) * scale).astype(np.float32))
    shading, mask = render_views(vertices, torch.from_numpy(model.faces), orbit_cameras([(yaw_degrees, 0.0)]),
                                 size, ("shading", "mask"))[:, 0].unbind(1)
    images = (0.15 + 0.85 * shading[..., None].numpy()) * SKIN * mask[..., None].numpy()
    images += 1.0 - mask[..., None].numpy()  # white background

    figure, axes = plt.subplots(1, len(EMOTIONS), figsize=(2.0 * len(EMOTIONS), 2.8))
    for axis, emotion, image in zip(axes, EMOTIONS, images):
        axis.imshow(np.clip(image, 0, 1))
        axis.axis("off")
        axis.set_title(emotion if emotion == "neutral" else f"{emotion} {level}", fontsize=11)
    figure.subplots_adjust(left=0, right=1, bottom=0, top=0.9, wspace=0.02)
    return save_figure(figure, path, dpi)


def view_grid(path: str | Path, seed: int = 3, emotion: str = "happiness", size: int = 224, dpi: int = 60) -> Path:
    """A grid of one generated face: rows shading, normal and depth; columns the default views."""
    model, rig = _identity(seed)
    mesh = normalise(Mesh(rig.pose(expression_weights(model, emotion, 4)).astype(np.float32), model.faces))
    images = render_views(torch.from_numpy(mesh.vertices), torch.from_numpy(mesh.faces), view_cameras(), size,
                          ("shading", "normal", "depth"))[0].numpy()
    rows = {"shading": images[:, 0], "normal": images[:, 1:4].transpose(0, 2, 3, 1) * 0.5 + 0.5,
            "depth": images[:, 4]}
    figure, axes = plt.subplots(len(rows), len(DEFAULT_VIEWS), figsize=(2.3 * len(DEFAULT_VIEWS), 2.3 * len(rows)))
    for row, (channel, views) in enumerate(rows.items()):
        for column, view in enumerate(DEFAULT_VIEWS):
            axes[row, column].imshow(np.clip(views[column], 0, 1), cmap="gray", vmin=0, vmax=1)
            axes[row, column].set_title(f"{view} · {channel}", fontsize=10)
            axes[row, column].axis("off")
    figure.subplots_adjust(left=0, right=1, bottom=0, top=0.95, wspace=0.02, hspace=0.12)
    return save_figure(figure, path, dpi)


def _identity(seed: int):
    model = ProceduralFaceModel()
    return model, model.rig(model.random_identity(np.random.default_rng(seed)))


PICTURES = {"expressions": expression_grid, "views": view_grid}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("picture", choices=PICTURES)
    parser.add_argument("path", type=Path, help="PNG file to write")
    arguments = parser.parse_args(argv)
    print(PICTURES[arguments.picture](arguments.path))


if __name__ == "__main__":
    main()
