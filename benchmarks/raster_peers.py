"""Benchmark meshes (generated faces of about 5k, 20k and 80k triangles) and the peer renderers, each
rendering the same views as `affectvlm.geometry.cameras.view_cameras()`."""

from __future__ import annotations

import ctypes
import functools
import glob
import math
import os

import numpy as np
import trimesh

from affectvlm.data.procedural_face import GRID_COLUMNS, GRID_ROWS, ProceduralFaceModel, face_grid
from affectvlm.geometry import Mesh, normalise

DISTANCE, FOV_DEGREES = 2.8, 45.0  # view_cameras() defaults
YAWS = (0.0, 45.0, -45.0)  # frontal, left, right


@functools.cache
def face_mesh(triangles: str) -> Mesh:
    """A generated neutral face, normalised, with "5k", "20k" or "80k" triangles."""
    model = ProceduralFaceModel()
    rig = model.rig(model.random_identity(np.random.default_rng(0)))
    vertices, faces = rig.pose({}).astype(np.float32), model.faces
    if triangles == "80k":
        vertices, faces = trimesh.remesh.subdivide(vertices, faces)
    elif triangles == "5k":
        vertices, faces = _every_other_grid_line(vertices)
    vertices, faces = np.ascontiguousarray(vertices, dtype=np.float32), np.ascontiguousarray(faces, dtype=np.int32)
    return normalise(Mesh(vertices, faces))


def _every_other_grid_line(vertices: np.ndarray):
    """The face's vertex grid with every other row and column, triangulated like the full grid."""
    u, v, _ = face_grid()
    column = np.rint((u + 1) / 2 * (GRID_COLUMNS - 1)).astype(int)
    row = np.rint((v + 1) / 2 * (GRID_ROWS - 1)).astype(int)
    kept = (column % 2 == 0) & (row % 2 == 0)
    grid = -np.ones(((GRID_ROWS + 1) // 2, (GRID_COLUMNS + 1) // 2), dtype=np.int64)
    grid[row[kept] // 2, column[kept] // 2] = np.arange(kept.sum())
    low_left, low_right, up_left, up_right = grid[:-1, :-1], grid[:-1, 1:], grid[1:, :-1], grid[1:, 1:]
    triangles = np.concatenate([np.stack([low_left, low_right, up_left], -1).reshape(-1, 3),
                                np.stack([low_right, up_right, up_left], -1).reshape(-1, 3)])
    return vertices[kept], triangles[(triangles >= 0).all(axis=1)]


def camera_eyes() -> list[np.ndarray]:
    return [DISTANCE * np.array([math.sin(math.radians(yaw)), 0.0, math.cos(math.radians(yaw))]) for yaw in YAWS]


def pinhole_rays(eye: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Ray origins and unit directions through the pixel centres of a camera at `eye` looking at the origin."""
    backward = eye / np.linalg.norm(eye)
    right = np.cross([0.0, 1.0, 0.0], backward)
    right /= np.linalg.norm(right)
    up = np.cross(backward, right)
    ndc = ((np.arange(size) + 0.5) / size * 2 - 1) * math.tan(math.radians(FOV_DEGREES) / 2)
    x, y = np.meshgrid(ndc, -ndc)
    directions = x[..., None] * right + y[..., None] * up - backward
    directions = (directions / np.linalg.norm(directions, axis=-1, keepdims=True)).reshape(-1, 3)
    return np.broadcast_to(eye, directions.shape).copy(), directions


def import_open3d():
    """Open3D, or None. Its wheel links libusb, which this machine's system lacks; the libusb-package wheel
    supplies it when installed."""
    try:
        import libusb_package

        for library in glob.glob(os.path.join(os.path.dirname(libusb_package.__file__), "libusb-1.0*.so*")):
            ctypes.CDLL(library, mode=ctypes.RTLD_GLOBAL)
    except ImportError:
        pass
    try:
        import open3d
    except ImportError:
        return None
    return open3d


def open3d_depth_views(open3d, meshes: list[Mesh], size: int) -> list[np.ndarray]:
    """Open3D RaycastingScene (Embree): one scene per mesh, a depth image per view."""
    images = []
    for mesh in meshes:
        scene = open3d.t.geometry.RaycastingScene()
        scene.add_triangles(open3d.core.Tensor(mesh.vertices), open3d.core.Tensor(mesh.faces.astype(np.uint32)))
        for eye in camera_eyes():
            rays = open3d.t.geometry.RaycastingScene.create_rays_pinhole(
                fov_deg=FOV_DEGREES, center=[0, 0, 0], eye=eye.tolist(), up=[0, 1, 0], width_px=size,
                height_px=size)
            images.append(scene.cast_rays(rays)["t_hit"].numpy())
    return images


def trimesh_triangle_views(meshes: list[Mesh], size: int) -> list[np.ndarray]:
    """trimesh with embreex: the first triangle hit per pixel, per view."""
    images = []
    for mesh in meshes:
        intersector = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False).ray
        for eye in camera_eyes():
            origins, directions = pinhole_rays(eye, size)
            images.append(intersector.intersects_first(origins, directions).reshape(size, size))
    return images
