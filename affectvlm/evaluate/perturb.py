"""Ways real scans differ from the built-in faces, as transformations of a mesh.

Robustness evaluation applies them to generated faces and measures how much recognition drops: other units,
another resolution and triangulation (`rescan`), holes at the eyes and mouth, open boundaries at the forehead
and neck, head pose and placement, scanner noise, and another vertex order or face winding. Each returns a new
`Mesh` and leaves its input alone.
"""

from __future__ import annotations

import numpy as np
import torch

from affectvlm.geometry.bnt import grid_triangles
from affectvlm.geometry.cameras import orbit_cameras
from affectvlm.geometry.mesh import Mesh, faces_away_from
from affectvlm.geometry.normalise import head_rotation, normalise
from affectvlm.ops.raster import render_views

# The front camera of `rescan`: orthographic, in the canonical frame (unit radius), looking along -z.
_SCAN_DISTANCE = 2.8
_SCAN_HALF_HEIGHT = 1.02
_COVERAGE_PROBE = 64  # pixels per side of the render that measures how much of the square the face covers


def rescale(mesh: Mesh, factor: float) -> Mesh:
    """Coordinates multiplied by `factor`: 0.1 turns millimetres into centimetres, 0.001 into metres."""
    return Mesh((mesh.vertices * np.float32(factor)).astype(np.float32), mesh.faces, dict(mesh.metadata))


def rigid_motion(mesh: Mesh, yaw_pitch_roll_degrees=(0.0, 0.0, 0.0), offset=(0.0, 0.0, 0.0)) -> Mesh:
    """The head turned about its bounding-box centre (see `head_rotation`), then moved by `offset`."""
    vertices = mesh.vertices.astype(np.float64)
    centre = (vertices.min(axis=0) + vertices.max(axis=0)) / 2
    moved = (vertices - centre) @ head_rotation(yaw_pitch_roll_degrees).T + centre + np.asarray(offset)
    return Mesh(moved.astype(np.float32), mesh.faces, dict(mesh.metadata))


def scanner_noise(mesh: Mesh, sigma: float, seed: int = 0) -> Mesh:
    """Gaussian noise of standard deviation `sigma` (mesh units) along z, the scanner's viewing direction, as
    structured-light scanners err mostly in depth."""
    vertices = mesh.vertices.copy()
    vertices[:, 2] += np.random.default_rng(seed).normal(0.0, sigma, len(vertices)).astype(np.float32)
    return Mesh(vertices, mesh.faces, dict(mesh.metadata))


def shuffle_order(mesh: Mesh, seed: int = 0) -> Mesh:
    """The same surface with its vertices and faces listed in a random order."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(mesh.num_vertices)
    new_index = np.empty_like(order)
    new_index[order] = np.arange(len(order))
    faces = new_index[mesh.faces][rng.permutation(mesh.num_faces)]
    return Mesh(mesh.vertices[order], faces.astype(np.int32), dict(mesh.metadata))


def reverse_winding(mesh: Mesh) -> Mesh:
    """Every face wound the other way round: the normals point inwards."""
    return Mesh(mesh.vertices, np.ascontiguousarray(mesh.faces[:, ::-1]), dict(mesh.metadata))


def cut_holes(mesh: Mesh, centres, radius: float) -> Mesh:
    """The faces whose centroid lies within `radius` of any of `centres` (K, 3) removed, as scanners lose the
    eyes and the inside of the mouth."""
    return _kept_faces(mesh, faces_away_from(mesh.vertices, mesh.faces, centres, radius))


def crop_height(mesh: Mesh, low: float, high: float) -> Mesh:
    """Only the faces whose centroid lies between fractions `low` and `high` of the bounding box's height
    (y), leaving open boundaries where a scan ends at the neck and the forehead."""
    bottom, top = mesh.vertices[:, 1].min(), mesh.vertices[:, 1].max()
    heights = (mesh.vertices[mesh.faces].mean(axis=1)[:, 1] - bottom) / max(top - bottom, 1e-12)
    return _kept_faces(mesh, (heights >= low) & (heights <= high))


def rescan(mesh: Mesh, faces: int) -> Mesh:
    """The surface seen from the front (+z) sampled again on a regular grid, as a range scanner does, and
    triangulated afresh with about `faces` triangles: a new triangulation, not a subdivision of the old one.
    Parts hidden from the front are lost, as in a scan. Units and placement are kept."""
    canonical = normalise(mesh, pose="none", close_holes=False)  # the scanner sees the head as it is, holes too
    coverage = _front_depth(canonical, _COVERAGE_PROBE)[1].mean()
    side = max(8, int(round(np.sqrt(faces / (2 * max(coverage, 1e-3))))))
    depth, covered = _front_depth(canonical, side)
    # Pixel centres in the canonical frame: columns go to +x, rows down to -y.
    centres = (np.arange(side) + 0.5) / side * 2 - 1
    x, y = np.meshgrid(centres * _SCAN_HALF_HEIGHT, -centres * _SCAN_HALF_HEIGHT)
    grid = np.stack([x, y, _SCAN_DISTANCE - depth], axis=-1)
    points, triangles = grid_triangles(grid, covered, max_edge_factor=4.0)
    # Back from the canonical frame to the mesh's own units and placement.
    transform = np.linalg.inv(canonical.metadata["normalise_transform"])
    vertices = points @ transform[:3, :3].T + transform[:3, 3]
    return _without_unused_vertices(vertices.astype(np.float32), triangles, dict(mesh.metadata))


def _front_depth(mesh: Mesh, side: int) -> tuple[np.ndarray, np.ndarray]:
    camera = orbit_cameras([(0.0, 0.0)], distance=_SCAN_DISTANCE, projection="orthographic",
                           half_height=_SCAN_HALF_HEIGHT)
    images = render_views(torch.from_numpy(mesh.vertices), torch.from_numpy(mesh.faces), camera, side,
                          ("depth", "mask"), normalise_depth=False)[0, 0].double().numpy()
    return images[0], images[1] > 0


def _kept_faces(mesh: Mesh, keep: np.ndarray) -> Mesh:
    if not keep.any():
        raise ValueError("the perturbation would remove every face of the mesh")
    return _without_unused_vertices(mesh.vertices, mesh.faces[keep], dict(mesh.metadata))


def _without_unused_vertices(vertices: np.ndarray, faces: np.ndarray, metadata: dict) -> Mesh:
    used = np.zeros(len(vertices), dtype=bool)
    used[faces.ravel()] = True
    new_index = np.cumsum(used) - 1
    return Mesh(np.ascontiguousarray(vertices[used]), new_index[faces].astype(np.int32), metadata)
