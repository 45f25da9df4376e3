"""Meshes and cameras the rasteriser tests share: random scenes and analytic shapes, built fresh per test."""

from __future__ import annotations

import numpy as np
import torch
import trimesh

from affectvlm.geometry.cameras import Cameras, look_at, orbit_cameras, orthographic, perspective


def random_mesh(rng: np.random.Generator, num_vertices: int, num_faces: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A random triangle soup inside the unit ball: overlapping, intersecting and degenerate triangles."""
    vertices = rng.standard_normal((num_vertices, 3)) * 0.5
    faces = rng.integers(0, num_vertices, (num_faces, 3))
    return torch.from_numpy(vertices).float(), torch.from_numpy(faces).int()


def random_cameras(rng: np.random.Generator, num_views: int, sets: int = 1) -> Cameras:
    """`sets` x `num_views` cameras at random directions and distances, perspective or orthographic."""
    views, lenses = [], []
    for _ in range(sets * num_views):
        direction = rng.standard_normal(3)
        eye = direction / np.linalg.norm(direction) * rng.uniform(2.0, 3.5)
        up = rng.standard_normal(3)
        views.append(look_at(eye, rng.uniform(-0.2, 0.2, 3), up))
        lenses.append(perspective(rng.uniform(30, 60), near=rng.uniform(0.3, 1.5), far=rng.uniform(2.5, 5))
                      if rng.random() < 0.6 else orthographic(rng.uniform(0.6, 1.3), near=0.5, far=5.0))
    shape = (sets, num_views, 4, 4)
    return Cameras(torch.stack(views).float().reshape(shape), torch.stack(lenses).float().reshape(shape))


def frontal_orthographic(half_height: float = 1.0, distance: float = 3.0) -> Cameras:
    return orbit_cameras([(0.0, 0.0)], distance=distance, projection="orthographic", half_height=half_height)


def icosphere(subdivisions: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    sphere = trimesh.creation.icosphere(subdivisions=subdivisions, radius=1.0)
    return torch.from_numpy(np.asarray(sphere.vertices)).float(), torch.from_numpy(np.asarray(sphere.faces)).int()


def flat_cube() -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """The cube [-0.5, 0.5]^3 with separate vertices per side (so vertex normals are the side normals), sides
    wound counter-clockwise seen from outside; returns vertices, faces and each face's outward normal."""
    vertices, faces, normals = [], [], []
    for axis in range(3):
        for sign in (-1.0, 1.0):
            normal = np.zeros(3)
            normal[axis] = sign
            u, v = np.roll(np.eye(3), -1, axis=0)[axis], np.roll(np.eye(3), -2, axis=0)[axis]
            if sign < 0:
                u, v = v, u
            centre = normal * 0.5
            start = len(vertices)
            vertices += [centre + (a * u + b * v) * 0.5 for a, b in ((-1, -1), (1, -1), (1, 1), (-1, 1))]
            faces += [[start, start + 1, start + 2], [start, start + 2, start + 3]]
            normals += [normal, normal]
    return (torch.tensor(np.array(vertices)).float(), torch.tensor(faces).int(), np.array(normals))


def grid_square(cells: int, half_size: float, jitter: float, rng: np.random.Generator, flip_some: bool = False):
    """A square [-half_size, half_size]^2 at z = 0 tessellated into cells x cells x 2 triangles; interior
    vertices jittered by up to `jitter` of a cell; with flip_some, diagonals of random cells flipped."""
    steps = np.linspace(-half_size, half_size, cells + 1)
    x, y = np.meshgrid(steps, steps, indexing="xy")
    cell = 2 * half_size / cells
    offsets = rng.uniform(-jitter, jitter, x.shape + (2,)) * cell
    offsets[[0, -1]] = 0
    offsets[:, [0, -1]] = 0
    vertices = np.stack([x + offsets[..., 0], y + offsets[..., 1], np.zeros_like(x)], axis=-1).reshape(-1, 3)
    faces = []
    for row in range(cells):
        for col in range(cells):
            a, b = row * (cells + 1) + col, row * (cells + 1) + col + 1
            c, d = a + cells + 1, b + cells + 1
            if flip_some and rng.random() < 0.5:
                faces += [[a, b, c], [b, d, c]]
            else:
                faces += [[a, b, d], [a, d, c]]
    return torch.tensor(vertices).float(), torch.tensor(faces).int()
