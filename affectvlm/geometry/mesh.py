"""The `Mesh` every stage passes around, its one error type, and the checks every reader ends with."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# More triangles than any face scan we know of (BU-3DFE: ~70k); a guard against hostile or mistaken input.
DEFAULT_MAX_FACES = 2_000_000


class MeshError(ValueError):
    """A mesh file that cannot be read; the message names the file and what is wrong with it."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass
class Mesh:
    """A triangle mesh: vertices (V, 3) float32, faces (F, 3) int32 indexing them, and what the file said."""

    vertices: np.ndarray
    faces: np.ndarray
    metadata: dict = field(default_factory=dict)

    @property
    def num_vertices(self) -> int:
        return len(self.vertices)

    @property
    def num_faces(self) -> int:
        return len(self.faces)


def checked_mesh(path: str | Path, vertices, faces, metadata: dict | None = None,
                 max_faces: int = DEFAULT_MAX_FACES) -> Mesh:
    """Build a `Mesh` in the canonical dtypes, or raise `MeshError` saying why the arrays are not a mesh."""
    vertices = np.asarray(vertices)
    faces = np.asarray(faces)
    if not np.issubdtype(vertices.dtype, np.number):
        raise MeshError(path, f"vertex coordinates must be numbers, got {vertices.dtype}")
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise MeshError(path, f"vertices must have shape (V, 3), got {vertices.shape}")
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise MeshError(path, f"faces must have shape (F, 3), got {faces.shape}")
    if len(faces) == 0:
        raise MeshError(path, "no faces")
    if not np.issubdtype(faces.dtype, np.integer):
        raise MeshError(path, f"face indices must be integers, got {faces.dtype}")
    if len(faces) > max_faces:
        raise MeshError(path, f"{len(faces)} faces, more than the limit of {max_faces}")
    if not np.isfinite(vertices).all():
        raise MeshError(path, "NaN or infinite vertex coordinates")
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise MeshError(path, f"face index out of range [0, {len(vertices)}): "
                              f"found {int(faces.min())}..{int(faces.max())}")
    with np.errstate(over="ignore"):
        vertices32 = vertices.astype(np.float32)
    if not np.isfinite(vertices32).all():
        raise MeshError(path, "vertex coordinates too large for float32")
    return Mesh(np.ascontiguousarray(vertices32), np.ascontiguousarray(faces, dtype=np.int32), dict(metadata or {}))


def faces_away_from(vertices: np.ndarray, faces: np.ndarray, centres, radius: float) -> np.ndarray:
    """(F,) bool: the faces whose centroid lies further than `radius` from every one of `centres` (K, 3); the
    others are what a scanner loses in a hole around each centre."""
    centroids = vertices[faces].mean(axis=1)
    centres = np.asarray(centres, dtype=np.float64).reshape(-1, 3)
    distances = np.linalg.norm(centroids[:, None, :] - centres[None], axis=2)
    return (distances > radius).all(axis=1)
