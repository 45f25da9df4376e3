"""Bosphorus `.bnt` range scans, turned into triangle meshes.

Layout (little-endian): uint16 nrows, uint16 ncols, float64 zmin, uint16 n, n bytes of the name of the
scan's image file, uint32 m (= nrows * ncols * 5), then m float64 forming an N x 5 matrix stored column by
column (all x, then all y, z, u, v; N = nrows * ncols). Point i lies on grid row i // ncols, column
i % ncols. Points whose z equals zmin are background.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from affectvlm.geometry.mesh import DEFAULT_MAX_FACES, Mesh, MeshError, checked_mesh

_GRID_HEADER = struct.Struct("<HHdH")  # nrows, ncols, zmin, image name length
_COUNT = struct.Struct("<I")
_COLUMNS = 5

# A triangle is dropped when one of its edges is longer than this many times the median grid spacing:
# such triangles bridge depth jumps (the nose's side, hair, the scan border), not skin.
DEFAULT_MAX_EDGE_FACTOR = 4.0


def read_bnt(path: str | Path, max_faces: int = DEFAULT_MAX_FACES,
             max_edge_factor: float = DEFAULT_MAX_EDGE_FACTOR) -> Mesh:
    data = Path(path).read_bytes()
    nrows, ncols, zmin, name_length = _unpack(path, _GRID_HEADER, data, 0, "header")
    offset = _GRID_HEADER.size
    if offset + name_length > len(data):
        raise MeshError(path, "truncated file: image file name runs past the end")
    image_name = data[offset:offset + name_length].decode("latin-1")
    offset += name_length
    (count,) = _unpack(path, _COUNT, data, offset, "point count")
    offset += _COUNT.size
    points = nrows * ncols
    if count != points * _COLUMNS:
        raise MeshError(path, f"header says {count} values, but a {nrows}x{ncols} grid needs {points * _COLUMNS}")
    if points == 0:
        raise MeshError(path, "empty grid (no faces)")
    if 2 * (nrows - 1) * (ncols - 1) > max_faces:
        raise MeshError(path, f"a {nrows}x{ncols} grid may give more faces than the limit of {max_faces}")
    if offset + 8 * count > len(data):
        raise MeshError(path, f"truncated file: {count} values announced, {(len(data) - offset) // 8} present")
    columns = np.frombuffer(data, dtype="<f8", count=count, offset=offset).reshape(_COLUMNS, points)

    grid = columns[:3].T.reshape(nrows, ncols, 3)
    if not np.isfinite(grid).all():
        raise MeshError(path, "NaN or infinite coordinates")
    foreground = grid[..., 2] != zmin
    with np.errstate(over="ignore", invalid="ignore"):  # huge coordinates: checked_mesh rejects them below
        vertices, faces = grid_triangles(grid, foreground, max_edge_factor)
        uv = columns[3:].T[foreground.ravel()].astype(np.float32)
    if not np.isfinite(uv).all():
        raise MeshError(path, "NaN, infinite or too large texture coordinates")
    metadata = {"format": "bnt", "image": image_name, "grid_shape": (nrows, ncols), "zmin": zmin, "uv": uv}
    return checked_mesh(path, vertices, faces, metadata, max_faces)


def _unpack(path, layout: struct.Struct, data: bytes, offset: int, what: str) -> tuple:
    if offset + layout.size > len(data):
        raise MeshError(path, f"truncated file: {what} runs past the end ({len(data)} bytes)")
    return layout.unpack_from(data, offset)


def grid_triangles(grid: np.ndarray, foreground: np.ndarray, max_edge_factor: float):
    """Two triangles per grid cell whose corners are all foreground, minus those with overlong edges;
    returns the foreground points as vertices and the triangles indexing them."""
    nrows, ncols = foreground.shape
    index = np.arange(nrows * ncols).reshape(nrows, ncols)
    top_left, top_right = index[:-1, :-1].ravel(), index[:-1, 1:].ravel()
    bottom_left, bottom_right = index[1:, :-1].ravel(), index[1:, 1:].ravel()
    triangles = np.concatenate([np.stack([top_left, bottom_left, top_right], axis=1),
                                np.stack([top_right, bottom_left, bottom_right], axis=1)])
    points = grid.reshape(-1, 3)
    triangles = triangles[foreground.ravel()[triangles].all(axis=1)]
    if len(triangles):
        edges = np.linalg.norm(points[triangles] - points[np.roll(triangles, 1, axis=1)], axis=2)
        longest = edges.max(axis=1)
        triangles = triangles[longest <= max_edge_factor * np.median(edges)]
    new_index = np.cumsum(foreground.ravel()) - 1
    return points[foreground.ravel()], new_index[triangles].reshape(-1, 3)
