"""A preview grid of one synthetic identity's seven expressions, shaded by the package's rasteriser.

Regenerate the README's picture with `python -m affectvlm.data.preview docs/synthetic_expressions.png`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from affectvlm.data.emotions import EMOTIONS  # noqa: E402
from affectvlm.data.procedural_face import ProceduralFaceModel  # noqa: E402
from affectvlm.data.synthetic import expression_weights  # noqa: E402
from affectvlm.geometry import Mesh, normalise  # noqa: E402
from affectvlm.geometry.cameras import orbit_cameras  # noqa: E402
from affectvlm.ops.raster import render_views  # noqa: E402

SKIN = np.array([0.93, 0.78, 0.68])


def render_preview(path: str | Path, seed: int = 3, level: int = 4, dpi: int = 80, size: int = 192,
                   yaw_degrees: float = 20.0) -> Path:
    """Save a 1 x 7 grid of one identity's expressions at `level` (1-4), seen `yaw_degrees` from the front."""
    model = ProceduralFaceModel()
    rig = model.rig(model.random_identity(np.random.default_rng(seed)))
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
