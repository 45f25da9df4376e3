"""Cameras for the rasteriser: look-at view matrices, perspective and orthographic projections, view presets.

Conventions (OpenGL's): a view matrix maps world to camera space, where the camera looks along -z with +y up;
a projection maps camera space to clip space, NDC x and y in [-1, 1] span the image (NDC y up, image rows
down) and NDC z runs from -1 at the near plane to +1 at the far plane. Faces in the canonical frame
(`affectvlm.geometry.normalise`) look along +z and fit in the unit sphere, so the presets orbit the origin at
`distance` 2.8 by default. The subject's left side is +x, so the "left" view turns the camera towards +x.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# Each preset is (yaw, pitch) in units of the `yaw` and `pitch` angles of `view_cameras`.
VIEW_PRESETS = {
    "frontal": (0, 0),
    "left": (1, 0),
    "right": (-1, 0),
    "up": (0, 1),
    "down": (0, -1),
}
DEFAULT_VIEWS = ("frontal", "left", "right")
PROJECTIONS = ("perspective", "orthographic")


@dataclass(frozen=True)
class Cameras:
    """K cameras shared by every mesh of a batch (N = 1) or K cameras per mesh (N = B).

    world_to_view and projection are float32 (N, K, 4, 4); world_to_view must be rigid (rotation and
    translation), because normals are turned into camera space with its rotation.
    """

    world_to_view: torch.Tensor
    projection: torch.Tensor

    def __post_init__(self):
        for name in ("world_to_view", "projection"):
            matrices = getattr(self, name)
            if not isinstance(matrices, torch.Tensor) or matrices.ndim != 4 or matrices.shape[-2:] != (4, 4):
                shape = tuple(matrices.shape) if isinstance(matrices, torch.Tensor) else type(matrices).__name__
                raise ValueError(f"cameras: {name} must be a (N, K, 4, 4) tensor, got {shape}")
            if not matrices.is_floating_point():
                raise TypeError(f"cameras: {name} must be floating point, got {matrices.dtype}")
        if self.world_to_view.shape != self.projection.shape:
            raise ValueError(f"cameras: world_to_view {tuple(self.world_to_view.shape)} and projection "
                             f"{tuple(self.projection.shape)} must have the same shape")
        if self.world_to_view.shape[1] == 0:
            raise ValueError("cameras: zero views")
        if self.world_to_view.device != self.projection.device:
            raise ValueError("cameras: world_to_view and projection are on different devices")

    @property
    def num_views(self) -> int:
        return self.world_to_view.shape[1]

    @property
    def world_to_clip(self) -> torch.Tensor:
        return self.projection.double() @ self.world_to_view.double()

    def to(self, device) -> Cameras:
        return Cameras(self.world_to_view.to(device), self.projection.to(device))


def look_at(eye, target=(0.0, 0.0, 0.0), up=(0.0, 1.0, 0.0)) -> torch.Tensor:
    """The (4, 4) world-to-view matrix of a camera at `eye` looking at `target`, `up` roughly up."""
    eye, target, up = (torch.as_tensor(v, dtype=torch.float64) for v in (eye, target, up))
    backward = eye - target
    if backward.norm() == 0:
        raise ValueError("look_at: eye and target coincide")
    backward = backward / backward.norm()
    right = torch.linalg.cross(up, backward)
    if right.norm() < 1e-9:
        raise ValueError("look_at: up is parallel to the viewing direction")
    right = right / right.norm()
    true_up = torch.linalg.cross(backward, right)
    matrix = torch.eye(4, dtype=torch.float64)
    matrix[:3, :3] = torch.stack([right, true_up, backward])
    matrix[:3, 3] = -matrix[:3, :3] @ eye
    return matrix


def perspective(fov_degrees: float = 45.0, near: float = 0.5, far: float = 10.0, aspect: float = 1.0) -> torch.Tensor:
    """OpenGL perspective projection with vertical field of view `fov_degrees`; aspect is width / height."""
    if not 0 < fov_degrees < 180 or not 0 < near < far or aspect <= 0:
        raise ValueError(f"perspective: need 0 < fov < 180, 0 < near < far and aspect > 0, got fov={fov_degrees}, "
                         f"near={near}, far={far}, aspect={aspect}")
    focal = 1.0 / math.tan(math.radians(fov_degrees) / 2)
    matrix = torch.zeros(4, 4, dtype=torch.float64)
    matrix[0, 0] = focal / aspect
    matrix[1, 1] = focal
    matrix[2, 2] = (far + near) / (near - far)
    matrix[2, 3] = 2 * far * near / (near - far)
    matrix[3, 2] = -1.0
    return matrix


def orthographic(half_height: float = 1.1, near: float = 0.5, far: float = 10.0, aspect: float = 1.0) -> torch.Tensor:
    """OpenGL orthographic projection showing [-half_height * aspect, ...] x [-half_height, half_height]."""
    if half_height <= 0 or not near < far or aspect <= 0:
        raise ValueError(f"orthographic: need half_height > 0, near < far and aspect > 0, got "
                         f"half_height={half_height}, near={near}, far={far}, aspect={aspect}")
    matrix = torch.eye(4, dtype=torch.float64)
    matrix[0, 0] = 1.0 / (half_height * aspect)
    matrix[1, 1] = 1.0 / half_height
    matrix[2, 2] = -2.0 / (far - near)
    matrix[2, 3] = -(far + near) / (far - near)
    return matrix


def orbit_cameras(yaw_pitch_degrees, distance: float = 2.8, target=(0.0, 0.0, 0.0), projection: str = "perspective",
                  fov_degrees: float = 45.0, half_height: float = 1.1, near: float = 0.5, far: float = 10.0,
                  aspect: float = 1.0) -> Cameras:
    """One camera per (yaw, pitch) on a sphere of radius `distance` around `target`, looking at it.
    Yaw turns towards +x (the face's left), pitch towards +y; (0, 0) is in front of the face on +z."""
    if projection not in PROJECTIONS:
        raise ValueError(f"unknown projection '{projection}' (choose from {', '.join(PROJECTIONS)})")
    angles = list(yaw_pitch_degrees)
    if not angles:
        raise ValueError("cameras: zero views")
    target = torch.as_tensor(target, dtype=torch.float64)
    views = []
    for yaw, pitch in angles:
        yaw, pitch = math.radians(yaw), math.radians(pitch)
        direction = torch.tensor([math.sin(yaw) * math.cos(pitch), math.sin(pitch), math.cos(yaw) * math.cos(pitch)],
                                 dtype=torch.float64)
        views.append(look_at(target + distance * direction, target))
    lens = (perspective(fov_degrees, near, far, aspect) if projection == "perspective"
            else orthographic(half_height, near, far, aspect))
    world_to_view = torch.stack(views)[None].float()
    return Cameras(world_to_view, lens.expand_as(world_to_view).float().contiguous())


def view_cameras(views=DEFAULT_VIEWS, yaw: float = 45.0, pitch: float = 30.0, **orbit) -> Cameras:
    """Cameras for named views (a list, or text like "frontal,left,right"): see VIEW_PRESETS. Side views turn
    `yaw` degrees, up and down views `pitch` degrees; `orbit` goes to `orbit_cameras`."""
    names = [name.strip() for name in views.split(",")] if isinstance(views, str) else list(views)
    unknown = [name for name in names if name not in VIEW_PRESETS]
    if unknown:
        raise ValueError(f"unknown view '{unknown[0]}' (choose from {', '.join(VIEW_PRESETS)})")
    return orbit_cameras([(VIEW_PRESETS[n][0] * yaw, VIEW_PRESETS[n][1] * pitch) for n in names], **orbit)
