"""The README's picture of the rasteriser: a generated face in the three default views, three channels each.

Regenerate with `python -m affectvlm.ops.preview docs/render_views.png`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from affectvlm.data.procedural_face import ProceduralFaceModel  # noqa: E402
from affectvlm.data.synthetic import expression_weights  # noqa: E402
from affectvlm.geometry import Mesh, normalise  # noqa: E402
from affectvlm.geometry.cameras import DEFAULT_VIEWS, view_cameras  # noqa: E402
from affectvlm.ops.raster import render_views  # noqa: E402


def render_preview(path: str | Path, seed: int = 3, emotion: str = "happiness", size: int = 224,
                   dpi: int = 60) -> Path:
    """Save a grid (rows: shading, normal, depth; columns: the default views) of one generated face."""
    model = ProceduralFaceModel()
    rig = model.rig(model.random_identity(np.random.default_rng(seed)))
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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi)
    plt.close(figure)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("path", help="PNG file to write")
    render_preview(parser.parse_args(argv).path)


if __name__ == "__main__":
    main()
