"""The README's pictures, drawn with the package's own face generator and rasteriser.

    python -m affectvlm.preview expressions docs/synthetic_expressions.png
    python -m affectvlm.preview views docs/render_views.png
    python -m affectvlm.preview augmentation docs/augmentation.png
    python -m affectvlm.preview holes docs/holes.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from affectvlm.data.augment import AugmentSettings, TorchAugmenter, plan_augmentation
from affectvlm.data.emotions import EMOTIONS
from affectvlm.data.face_template import EYE_HOLE_MM
from affectvlm.data.pipeline import OPENAI_MEAN, OPENAI_STD
from affectvlm.data.procedural_face import Anatomy, ProceduralFaceModel
from affectvlm.data.synthetic import expression_weights
from affectvlm.data.views import CameraJitter, jittered_cameras, render_augmented_views, render_model_views
from affectvlm.evaluate.perturb import cut_holes
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
    transform = normalise(Mesh(poses[EMOTIONS.index("neutral")], model.faces)).metadata["normalise_transform"]
    vertices = torch.from_numpy((np.stack(poses) @ transform[:3, :3].T + transform[:3, 3]).astype(np.float32))
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


def augmentation_grid(path: str | Path, seed: int = 3, emotion: str = "happiness", size: int = 160,
                      dpi: int = 60) -> Path:
    """One generated face's model views (default recipe as RGB): at the view presets as the render cache holds
    them, rendered online from jittered cameras and light, and after the mixed view augmentation (flip forced
    on, view mixing at 0.5, other strengths at their defaults). A second face of the same expression is in the
    batch as the donor of mixed views."""
    model = ProceduralFaceModel()
    meshes = [normalise(Mesh(model.rig(model.random_identity(np.random.default_rng(seed + i)))
                             .pose(expression_weights(model, emotion, 4)).astype(np.float32), model.faces))
              for i in range(2)]
    vertices, faces = torch.from_numpy(np.stack([m.vertices for m in meshes])), torch.from_numpy(model.faces)
    presets = render_model_views(vertices, faces, view_cameras(), size)
    cameras, light = jittered_cameras(DEFAULT_VIEWS, CameraJitter(), seed, 0, [0, 1])
    online = render_model_views(vertices, faces, cameras, size, light=light)
    label = EMOTIONS.index(emotion)
    plan = plan_augmentation(AugmentSettings(flip=1.0, mix=0.5), seed, 0, [0, 1], [label, label], [4, 4],
                             [True, True], DEFAULT_VIEWS)
    # As the online source draws it: the renderer takes the plan's sources, flips and geometry, the augmenter the rest.
    drawn = render_augmented_views(vertices, faces, cameras, light, plan, size)
    mean, std = torch.tensor(OPENAI_MEAN).view(3, 1, 1), torch.tensor(OPENAI_STD).view(3, 1, 1)
    augmented = TorchAugmenter(OPENAI_MEAN, OPENAI_STD)(drawn, plan.colour_only()) * std + mean
    rows = {"cache (presets)": presets[0], "online (jittered)": online[0], "augmented": augmented[0]}
    figure, axes = plt.subplots(len(rows), len(DEFAULT_VIEWS), figsize=(2.6 * len(DEFAULT_VIEWS), 2.6 * len(rows)))
    for row, (stage, views) in enumerate(rows.items()):
        for column, view in enumerate(DEFAULT_VIEWS):
            title = f"{view} · {stage}"
            if stage == "augmented":
                source_row, source_view = plan.source[0, column]
                origin = "other face's " if source_row != 0 else ""
                title = f"{view} ← {origin}{DEFAULT_VIEWS[source_view]}, mirrored"
            axes[row, column].imshow(np.clip(views[column].permute(1, 2, 0).numpy(), 0, 1))
            axes[row, column].set_title(title, fontsize=9)
            axes[row, column].axis("off")
    figure.subplots_adjust(left=0, right=1, bottom=0, top=0.95, wspace=0.02, hspace=0.15)
    return save_figure(figure, path, dpi)


def holes_grid(path: str | Path, seed: int = 3, emotion: str = "surprise", size: int = 160, dpi: int = 60) -> Path:
    """The frontal model view (default recipe as RGB) of a generated face: whole, with holes cut at the eyes and
    the mouth as scanners lose them, and with those holes closed as `normalise` closes them."""
    model = ProceduralFaceModel()
    identity = model.random_identity(np.random.default_rng(seed))
    whole = Mesh(model.rig(identity).pose(expression_weights(model, emotion, 4)).astype(np.float32), model.faces)
    features = model.feature_vertices(Anatomy(identity))
    holed = cut_holes(whole, [whole.vertices[features[name]] for name in ("right_eye", "left_eye", "mouth")],
                      EYE_HOLE_MM)
    panels = {"whole face": normalise(whole), "holes at the eyes and mouth": normalise(holed, close_holes=False),
              "holes closed (normalise)": normalise(holed)}
    figure, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.8))
    for axis, (title, mesh) in zip(axes, panels.items()):
        views = render_model_views(torch.from_numpy(mesh.vertices)[None], torch.from_numpy(mesh.faces),
                                   orbit_cameras([(0.0, 0.0)]), size)
        axis.imshow(np.clip(views[0, 0].permute(1, 2, 0).numpy(), 0, 1))
        axis.set_title(title, fontsize=9)
        axis.axis("off")
    figure.subplots_adjust(left=0, right=1, bottom=0, top=0.9, wspace=0.02)
    return save_figure(figure, path, dpi)


def _identity(seed: int):
    model = ProceduralFaceModel()
    return model, model.rig(model.random_identity(np.random.default_rng(seed)))


PICTURES = {"expressions": expression_grid, "views": view_grid, "augmentation": augmentation_grid,
            "holes": holes_grid}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("picture", choices=PICTURES)
    parser.add_argument("path", type=Path, help="PNG file to write")
    arguments = parser.parse_args(argv)
    print(PICTURES[arguments.picture](arguments.path))


if __name__ == "__main__":
    main()
