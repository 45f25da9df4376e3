"""Pose normalisation: the rotation, scale and shift that lay a face onto a template face in the canonical frame.

Scans come turned a little (or a lot) and cropped differently at the neck and forehead, which moves and rescales
a bounding box; the model should see every face in one pose and size. `register` fits a similarity transform
from a face to the template by robust ICP: points sampled on the face are matched to the template's nearest
surface points, and the transform minimising their distances is solved for, linearised, until it stops moving.
Choices, each measured on generated faces turned by up to 20 degrees in every axis:
- mostly point-to-plane distances: a face is smooth across most of its width, and a point-to-point fit slides
  sideways and stops several degrees short of a yaw; a small point-to-point term (POINT_WEIGHT) holds the fit
  where the surface alone leaves it free to slide (up and down a long face, trading shift for scale);
- matches weighted down smoothly with their distance (Cauchy weights at twice the median distance) rather than
  the worst ones dropped: points the template lacks (hair, neck) count little, and, unlike a hard cut, the
  weights change smoothly as the fit moves, so the same face turned two ways ends in the same place (a hard
  cut of the worst fifth left 1 in 30 such pairs 3% of the face's size apart; these weights, none of 60);
- the points are drawn on the faces listed in an order the geometry fixes (`order_free_faces`): drawn in the
  file's order, another listing of the same surface moved the fit slightly, and a model trained on registered
  faces lost up to 10 points of 48 faces to it.

The template (`face_template.npz`, written by `python -m affectvlm.data.face_template`) holds points and normals
on the built-in generator's average neutral face, each point's nearest neighbours on it, and, for a cube of cells
around the canonical frame, the index of the template point nearest each cell's centre. Matching is a table
lookup followed by a few steps to a closer neighbour: no search tree, and exact enough that a face comes out in
the same place however it was turned (a cell alone is 1/20 of the face's width, which left faces up to 2% of
their size apart).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TEMPLATE_FILE = Path(__file__).with_name("face_template.npz")
SAMPLES = 1500  # points sampled on the face being registered
MAX_ITERATIONS = 40
CONVERGED = 1e-4  # largest step (radians, relative scale, canonical units) that counts as no step
MAX_DEGREES = 60.0  # a fit turning a face further than this has failed: the face is left unregistered
SCALES = (0.6, 1.6)  # likewise for a fit that shrinks or grows the face beyond these factors
NEIGHBOUR_STEPS = 2
POINT_WEIGHT = 0.1  # of point-to-point distances beside point-to-plane ones


@dataclass(frozen=True)
class FaceTemplate:
    points: np.ndarray  # (N, 3) float32 on the template surface, canonical frame
    normals: np.ndarray  # (N, 3) float32 unit, outward
    neighbours: np.ndarray  # (N, K) int16: each point's K nearest other points
    nearest: np.ndarray  # (C, C, C) int16: index of the point nearest each cell centre of the cube [-half, half]^3
    half: float

    def match(self, points: np.ndarray) -> np.ndarray:
        """Index of the template point nearest each of `points` (M, 3): the cell's point, then the closest of it
        and its neighbours, NEIGHBOUR_STEPS times."""
        cells = self.nearest.shape[0]
        ijk = np.clip(((points + self.half) * (cells / (2 * self.half))).astype(np.int64), 0, cells - 1)
        matches = self.nearest[ijk[:, 0], ijk[:, 1], ijk[:, 2]].astype(np.int64)
        for _ in range(NEIGHBOUR_STEPS):
            candidates = np.concatenate([matches[:, None], self.neighbours[matches]], axis=1)
            offsets = self.points[candidates] - points[:, None]
            closest = np.einsum("mkd,mkd->mk", offsets, offsets).argmin(axis=1)
            matches = candidates[np.arange(len(points)), closest]
        return matches


@functools.cache
def load_template(path: Path = TEMPLATE_FILE) -> FaceTemplate:
    with np.load(path) as stored:
        return FaceTemplate(stored["points"], stored["normals"], stored["neighbours"].astype(np.int64),
                            stored["nearest"], float(stored["half"]))


def nearest_neighbours(points: np.ndarray, count: int) -> np.ndarray:
    """For each point, the indices of the `count` nearest other points."""
    import torch

    targets = torch.from_numpy(np.asarray(points, dtype=np.float64))
    return torch.cdist(targets, targets).topk(count + 1, largest=False).indices[:, 1:].numpy().astype(np.int16)


def nearest_point_grid(points: np.ndarray, cells: int, half: float) -> np.ndarray:
    """For each cell of a cells^3 grid over [-half, half]^3, the index of the point nearest its centre."""
    import torch

    axis = (np.arange(cells) + 0.5) * (2 * half / cells) - half
    centres = torch.from_numpy(np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3))
    targets = torch.from_numpy(np.asarray(points, dtype=np.float64))
    nearest = torch.cat([torch.cdist(chunk, targets).argmin(1) for chunk in centres.split(4096)])
    return nearest.numpy().astype(np.int16).reshape(cells, cells, cells)


@dataclass(frozen=True)
class SurfaceSamples:
    """Points spread uniformly over a mesh's surface: each on triangle `triangles[i]` at barycentric `weights[i]`."""

    points: np.ndarray  # (M, 3)
    triangles: np.ndarray  # (M,)
    weights: np.ndarray  # (M, 3)

    def normals(self, vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
        """The unit vertex normals (area-weighted, following the winding) interpolated at the points."""
        corners = vertices[faces]
        crossed = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
        vertex_normals = np.stack([np.bincount(faces.ravel(), np.repeat(crossed[:, axis], 3), len(vertices))
                                   for axis in range(3)], axis=1)
        vertex_normals /= np.maximum(np.linalg.norm(vertex_normals, axis=1, keepdims=True), 1e-12)
        normals = (vertex_normals[faces[self.triangles]] * self.weights[:, :, None]).sum(axis=1)
        return normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)


def surface_samples(vertices: np.ndarray, faces: np.ndarray, count: int, seed: int = 0) -> SurfaceSamples:
    """`count` points spread uniformly over the surface: a fixed draw for a given mesh and seed."""
    corners = vertices[faces]
    area = np.linalg.norm(np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), axis=1)
    rng = np.random.default_rng(seed)
    triangles = rng.choice(len(faces), count, p=area / area.sum())
    root, second = np.sqrt(rng.random(count)), rng.random(count)
    weights = np.stack([1 - root, root * (1 - second), root * second], axis=1)
    return SurfaceSamples((corners[triangles] * weights[:, :, None]).sum(axis=1), triangles, weights)


@dataclass(frozen=True)
class Registration:
    """x -> scale * rotation @ x + translation lays the face onto the template; identity when not `registered`."""

    rotation: np.ndarray
    scale: float
    translation: np.ndarray
    registered: bool

    def matrix(self) -> np.ndarray:
        transform = np.eye(4)
        transform[:3, :3] = self.scale * self.rotation
        transform[:3, 3] = self.translation
        return transform


UNREGISTERED = Registration(np.eye(3), 1.0, np.zeros(3), False)


def register(vertices: np.ndarray, faces: np.ndarray, template: FaceTemplate | None = None) -> Registration:
    """The similarity transform laying a face (already centred and scaled to the canonical frame) onto the
    template; UNREGISTERED when the fit turns or rescales the face beyond what a face scan needs (then it is not
    a face, or too little of one)."""
    template = template or load_template()
    vertices = np.asarray(vertices, dtype=np.float64)
    points = surface_samples(vertices, order_free_faces(vertices, faces), SAMPLES).points
    rotation, scale, translation = np.eye(3), 1.0, np.zeros(3)
    for _ in range(MAX_ITERATIONS):
        moved = scale * points @ rotation.T + translation
        step = _fit_step(moved, template)
        turn, grow, shift = _rotation_of(step[:3]), 1 + step[3], step[4:]
        rotation, scale, translation = turn @ rotation, grow * scale, grow * turn @ translation + shift
        if np.abs(step).max() < CONVERGED:
            break
    degrees = np.degrees(np.arccos(np.clip((np.trace(rotation) - 1) / 2, -1, 1)))
    if not (degrees <= MAX_DEGREES and SCALES[0] <= scale <= SCALES[1]):
        return UNREGISTERED
    return Registration(rotation, float(scale), translation, True)


def order_free_faces(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """The faces listed in an order that the geometry alone fixes: vertices ranked by their distance from the
    vertices' mean, each face's corners sorted by that rank, then the faces sorted by their corners. A sample
    drawn on them is then the same however a file lists the vertices and faces or winds the faces, and, as the
    ranks do not change when the face is turned, moved or scaled, the same on a turned face too (up to ties)."""
    distance = np.linalg.norm(vertices - vertices.mean(axis=0), axis=1)
    vertex_rank = np.empty(len(vertices), dtype=np.int64)
    vertex_rank[np.argsort(distance, kind="stable")] = np.arange(len(vertices))
    corner_ranks = vertex_rank[faces]
    corners_in_order = np.argsort(corner_ranks, axis=1)
    faces_in_order = np.lexsort(np.take_along_axis(corner_ranks, corners_in_order, axis=1).T[::-1])
    return np.take_along_axis(faces, corners_in_order, axis=1)[faces_in_order]


def _fit_step(points: np.ndarray, template: FaceTemplate) -> np.ndarray:
    """The small rotation (axis * angle), relative scale change and shift (7 numbers) that best move
    `points` onto their template matches: weighted least squares of the point-to-plane distances and
    POINT_WEIGHT times the point-to-point ones, linearised."""
    matches = template.match(points)
    targets, normals = template.points[matches], template.normals[matches]
    squared = np.einsum("ij,ij->i", targets - points, targets - points)
    weight = np.sqrt(1 / (1 + squared / (4 * np.median(squared) + 1e-12)))  # Cauchy, scale twice the median distance
    plane = np.concatenate([np.cross(points, normals), np.einsum("ij,ij->i", normals, points)[:, None], normals],
                           axis=1)
    # d(point)/d(step) for each coordinate: rotation -[p]x, scale p, shift the identity.
    x, y, z = points.T
    zero, one = np.zeros_like(x), np.ones_like(x)
    point = np.stack([np.stack([zero, z, -y, x, one, zero, zero], 1), np.stack([-z, zero, x, y, zero, one, zero], 1),
                      np.stack([y, -x, zero, z, zero, zero, one], 1)], axis=1).reshape(-1, 7)
    jacobian = np.concatenate([plane * weight[:, None], POINT_WEIGHT * point * np.repeat(weight, 3)[:, None]])
    residual = np.concatenate([np.einsum("ij,ij->i", targets - points, normals) * weight,
                               POINT_WEIGHT * (targets - points).ravel() * np.repeat(weight, 3)])
    return np.linalg.solve(jacobian.T @ jacobian, jacobian.T @ residual)


def _rotation_of(axis_angle: np.ndarray) -> np.ndarray:
    angle = np.linalg.norm(axis_angle)
    if angle < 1e-12:
        return np.eye(3)
    x, y, z = axis_angle / angle
    cross = np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]])
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross
