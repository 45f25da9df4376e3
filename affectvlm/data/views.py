"""The model's input views: which rendered channels form its three image channels, and cameras jittered per
sample and per view.

`render_model_views` is the one function that turns meshes into model inputs: the render cache
(`affectvlm render`) stores its output, and the online source (`affectvlm.data.pipeline.OnlineViews`) calls it
per batch. The shading channel is computed here in torch from the rendered normals rather than by the
rasteriser, because the rasteriser takes one light for all views while the online source jitters the light
per view; the cache goes through the same code, so zero jitter reproduces the cache exactly.

Image recipes (every channel in [0, 1], background 0):
- "shading": Lambertian shading repeated three times: a grey photo of a plaster face, the look closest to
  what a CLIP image tower was pretrained on;
- "shading_depth_normal": shading, depth (nearest 1, farthest 0 per view) and (normal_z + 1) / 2: three
  different cues to the shape, of which only the shading changes with the light;
- "normal": (normal_xyz + 1) / 2, the camera-space normal as a colour (the rasteriser's "normal_rgb" channel).
DEFAULT_RECIPE is "normal", chosen on the main job (benchmarks/RESULTS.md, ablations, "Image channels over
seeds"): held-out accuracy with seed 0 normal 76.3% (92.4% at intensities 3-4), shading_depth_normal 74.3%
(88.9%), shading 43.3% (49.3%); with seed 1 normal 74.7% (88.2%), shading_depth_normal 49.7% (62.5%). Before
these runs it was "shading_depth_normal", chosen for handing the model the most geometry in three channels.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from affectvlm.data.augment import AugmentPlan
from affectvlm.data.draws import uniform
from affectvlm.data.memory import empty
from affectvlm.geometry.cameras import Cameras, view_cameras
from affectvlm.ops.raster import DEFAULT_LIGHT, channel_layout, render_views

IMAGE_RECIPES = {
    "shading": "shading, shading, shading",
    "shading_depth_normal": "shading, depth, (normal_z + 1) / 2",
    "normal": "(normal_x + 1) / 2, (normal_y + 1) / 2, (normal_z + 1) / 2",
}
DEFAULT_RECIPE = "normal"
AMBIENT = 0.15  # the rasteriser's default ambient term

# What each recipe needs from the rasteriser (shading is computed from the normals, see the module docstring;
# the rasteriser draws the normal recipe itself).
_RENDERED_CHANNELS = {"shading": ("normal", "mask"), "shading_depth_normal": ("depth", "normal", "mask"),
                      "normal": ("normal_rgb",)}


def check_recipe(recipe: str) -> str:
    if recipe not in IMAGE_RECIPES:
        raise ValueError(f"unknown image recipe '{recipe}' (choose from {', '.join(IMAGE_RECIPES)})")
    return recipe


def default_light() -> torch.Tensor:
    """The rasteriser's default light direction, unit length, float32 (3,)."""
    light = torch.tensor(DEFAULT_LIGHT, dtype=torch.float64)
    return (light / light.norm()).float()


def render_model_views(vertices, faces, cameras: Cameras, size, recipe: str = DEFAULT_RECIPE,
                       light: torch.Tensor | None = None, rows=None) -> torch.Tensor:
    """The model's input images, float32 (B, K, 3, H, W) in [0, 1] on the vertices' device.

    vertices, faces, cameras, size, rows: as `affectvlm.ops.raster.render_views` (with rows, B is their
    number). light: None for the default direction in every view, or a camera-space direction per rendered
    mesh and view (B, K, 3)."""
    rendered = _RENDERED_CHANNELS[check_recipe(recipe)]
    images = render_views(vertices, faces, cameras, size, rendered, rows=rows)
    light = _per_view_light(light, images)  # checked whatever the recipe; only shading uses it
    if recipe == "normal":
        return images
    layout = channel_layout(rendered)
    normal, mask = images[:, :, layout["normal"]], images[:, :, layout["mask"]]
    # Written channel by channel into one output, in place: each pass over a batch is a pass over memory.
    out = empty((*images.shape[:2], 3, *images.shape[3:]), device=images.device)
    _shade(normal, mask[:, :, 0], light, out=out[:, :, 0])
    if recipe == "shading":
        out[:, :, 1:].copy_(out[:, :, :1].expand(-1, -1, 2, -1, -1))
        return out
    out[:, :, 1].copy_(images[:, :, layout["depth"].start])
    normal_z = out[:, :, 2]
    torch.addcmul(mask[:, :, 0], normal[:, :, 2], mask[:, :, 0], out=normal_z)
    normal_z.mul_(0.5)  # (normal_z + 1) / 2 on covered pixels
    return out


def _per_view_light(light: torch.Tensor | None, images: torch.Tensor) -> torch.Tensor:
    batch, views = images.shape[:2]
    if light is None:
        light = default_light().expand(batch, views, 3)
    if not isinstance(light, torch.Tensor) or light.shape != (batch, views, 3):
        shape = tuple(light.shape) if isinstance(light, torch.Tensor) else type(light).__name__
        raise ValueError(f"light must be a (B, K, 3) = ({batch}, {views}, 3) tensor, got {shape}")
    light = light.to(images.device, torch.float32)
    return light / light.norm(dim=-1, keepdim=True)


def _shade(normal: torch.Tensor, mask: torch.Tensor, light: torch.Tensor, out: torch.Tensor) -> None:
    """Lambertian shading into out (B, K, H, W), as the rasteriser computes it, for a light per view (B, K, 3)."""
    diffuse = (light * (1.0 - AMBIENT))[..., None, None]  # max(0, x) * a = max(0, x * a) for a > 0
    torch.mul(normal[:, :, 0], diffuse[:, :, 0], out=out)
    out.addcmul_(normal[:, :, 1], diffuse[:, :, 1]).addcmul_(normal[:, :, 2], diffuse[:, :, 2])
    out.clamp_(min=0.0).add_(AMBIENT).mul_(mask)


@dataclass(frozen=True)
class CameraJitter:
    """Ranges of the random camera changes around each view preset, drawn per sample and per view:
    yaw, pitch and roll in degrees (uniform in [-range, range]; yaw and pitch orbit the face, roll turns the
    camera about its axis), distance as a fraction of the camera's distance (uniform in [-range, range]),
    light in degrees (the light turns away from its default direction by up to this angle)."""

    yaw: float = 10.0
    pitch: float = 10.0
    roll: float = 5.0
    distance: float = 0.1
    light: float = 30.0

    def __post_init__(self):
        for name, value in asdict(self).items():
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"camera jitter: {name} must be a finite number >= 0, got {value!r}")
        if self.distance >= 1:
            raise ValueError(f"camera jitter: distance must be a fraction below 1, got {self.distance}")
        if self.light > 90 or self.roll > 180 or self.yaw > 180:
            raise ValueError("camera jitter: light at most 90 degrees, yaw and roll at most 180")

    @classmethod
    def none(cls) -> CameraJitter:
        return cls(yaw=0.0, pitch=0.0, roll=0.0, distance=0.0, light=0.0)

    def as_dict(self) -> dict:
        return asdict(self)


def jittered_cameras(views, jitter: CameraJitter, seed: int, epoch: int, sample_ids, *,
                     projection: str = "perspective") -> tuple[Cameras, torch.Tensor]:
    """Cameras (B, K, 4, 4) around the named `views` presets and a light direction per view (B, K, 3), drawn
    from `jitter`'s ranges as a pure function of (seed, epoch, sample id, view). With `CameraJitter.none()`
    they are exactly the presets (`view_cameras`) and the default light."""
    presets = view_cameras(views, projection=projection)
    sample_ids = np.asarray(sample_ids, dtype=np.int64).reshape(-1)
    num_views = presets.num_views
    _check_pitch(presets, jitter)
    signed = torch.from_numpy(2.0 * uniform("camera", seed, epoch, sample_ids, num_views, 4) - 1.0)
    yaw, pitch, roll = (torch.deg2rad(signed[..., i] * r) for i, r in enumerate((jitter.yaw, jitter.pitch, jitter.roll)))
    preset = presets.world_to_view.double()  # (1, K, 4, 4)
    # Orbit pitch turns about the camera's x axis through the target, which the preset sees at `target`.
    target = preset[..., :3, 3]
    orbit_pitch = _translation(target) @ _rotation(pitch, axis=0) @ _translation(-target)
    backing = _translation(torch.stack([torch.zeros_like(yaw), torch.zeros_like(yaw),
                                        -signed[..., 3] * jitter.distance * target.norm(dim=-1)], dim=-1))
    world_to_view = _rotation(roll, axis=2) @ backing @ orbit_pitch @ preset @ _rotation(-yaw, axis=1)
    projection_matrices = presets.projection.expand(len(sample_ids), -1, -1, -1).contiguous()
    light = _jittered_light(jitter, seed, epoch, sample_ids, num_views)
    return Cameras(world_to_view.float().contiguous(), projection_matrices), light


def augmented_cameras(cameras: Cameras, light: torch.Tensor, plan: AugmentPlan) -> tuple[Cameras, torch.Tensor]:
    """Cameras (B*K, 1, 4, 4) and lights (B*K, 1, 3) that draw each output view of `plan` directly, for meshes
    taken from the plan's source rows (row r of the result renders the mesh of row `plan.source[b, k, 0]`).

    `cameras` (B, K, 4, 4) and `light` (B, K, 3) are the batch's own. Each output view uses the camera and light
    of its source row and view; a flipped sample's camera is mirrored in camera space (x -> -x), so its views are
    the views of the mirrored face, normals and light included, rather than mirrored pixels; the plan's rotation
    and crop become a 2D affine map of clip space in front of the projection. No pixel is resampled."""
    rows, views = (torch.from_numpy(plan.source[..., i]) for i in range(2))
    batch = rows.shape[0]
    world_to_view = cameras.world_to_view.double().expand(batch, -1, -1, -1)[rows, views]
    projection = cameras.projection.double().expand(batch, -1, -1, -1)[rows, views]
    light = light.double()[rows, views]
    affine = torch.from_numpy(plan.affine).double()  # output -> input, grid coordinates (y down)
    flipped = torch.from_numpy(plan.flipped)[:, None].expand_as(rows)
    mirror = torch.where(flipped, -1.0, 1.0).double()
    world_to_view[..., 0, :] *= mirror[..., None]
    light[..., 0] *= mirror
    affine[..., 0, :] *= mirror[..., None]  # the mirrored render already shows the plan's mirror
    return (Cameras(world_to_view.reshape(-1, 1, 4, 4).float(),
                    (_clip_affine(affine) @ projection).reshape(-1, 1, 4, 4).float()),
            light.reshape(-1, 1, 3).float())


def render_augmented_views(vertices, faces, cameras: Cameras, light: torch.Tensor, plan: AugmentPlan, size,
                           recipe: str = DEFAULT_RECIPE) -> torch.Tensor:
    """The output views of `plan` drawn by the renderer (`augmented_cameras`), float32 (B, K, 3, H, W) in [0, 1]:
    what an augmenter applying the whole plan to the plain views would show, with only `plan.colour_only()` left
    to apply. vertices, faces: one mesh per sample, (B, V, 3) with shared faces or lists; cameras (B, K, 4, 4)
    and light (B, K, 3) as `jittered_cameras` gives them."""
    drawn_cameras, drawn_light = augmented_cameras(cameras, light, plan)
    rows = torch.from_numpy(plan.source[..., 0].reshape(-1))  # each output view draws its source's mesh
    views = render_model_views(vertices, faces, drawn_cameras, size, recipe, drawn_light, rows)
    return views.view(*plan.shape, *views.shape[2:])


def _clip_affine(affine: torch.Tensor) -> torch.Tensor:
    """(..., 4, 4) maps of clip space that move each image point where the output -> input map `affine`
    (..., 2, 3) in grid coordinates (x right, y down; NDC has y up) says the output shows it."""
    y_down = torch.tensor([1.0, -1.0], dtype=torch.float64)
    inverse = torch.linalg.inv(affine[..., :2])
    linear = y_down[:, None] * inverse * y_down[None, :]
    offset = -y_down * (inverse @ affine[..., 2:]).squeeze(-1)
    matrix = torch.eye(4, dtype=torch.float64).expand(*affine.shape[:-2], 4, 4).clone()
    matrix[..., :2, :2] = linear
    matrix[..., :2, 3] = offset
    return matrix


def _check_pitch(presets: Cameras, jitter: CameraJitter) -> None:
    # A camera pitched to a pole has no defined "up": keep every jittered camera below 89 degrees.
    backward = presets.world_to_view[0, :, 2, :3].double()
    steepest = math.degrees(math.asin(min(1.0, backward[:, 1].abs().max().item())))
    if steepest + jitter.pitch >= 89:
        raise ValueError(f"camera jitter: pitch {jitter.pitch} would turn a {steepest:.0f} degree view past the pole")


def _rotation(angles: torch.Tensor, axis: int) -> torch.Tensor:
    """Homogeneous rotations (..., 4, 4) by `angles` (radians, right-handed) about the x, y or z axis."""
    cos, sin = torch.cos(angles), torch.sin(angles)
    matrix = torch.zeros(*angles.shape, 4, 4, dtype=torch.float64)
    matrix[..., axis, axis] = 1.0
    matrix[..., 3, 3] = 1.0
    first, second = [a for a in range(3) if a != axis][:: -1 if axis == 1 else 1]
    matrix[..., first, first] = cos
    matrix[..., second, second] = cos
    matrix[..., first, second] = -sin
    matrix[..., second, first] = sin
    return matrix


def _translation(offsets: torch.Tensor) -> torch.Tensor:
    matrix = torch.eye(4, dtype=torch.float64).expand(*offsets.shape[:-1], 4, 4).clone()
    matrix[..., :3, 3] = offsets
    return matrix


def _jittered_light(jitter: CameraJitter, seed: int, epoch: int, sample_ids: np.ndarray, num_views: int) -> torch.Tensor:
    """The default light turned by an angle up to `jitter.light` towards a random side, float32 (B, K, 3)."""
    draws = torch.from_numpy(uniform("light", seed, epoch, sample_ids, num_views, 2))
    angle, side = torch.deg2rad(draws[..., 0] * jitter.light), 2 * math.pi * draws[..., 1]
    light = torch.tensor(DEFAULT_LIGHT, dtype=torch.float64)
    light = light / light.norm()
    across = torch.linalg.cross(light, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
    across = across / across.norm()
    other = torch.linalg.cross(light, across)
    sideways = torch.cos(side)[..., None] * across + torch.sin(side)[..., None] * other
    return (torch.cos(angle)[..., None] * light + torch.sin(angle)[..., None] * sideways).float()
