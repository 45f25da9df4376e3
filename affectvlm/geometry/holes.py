"""Closing the holes of a scan: eyes and an open mouth lose their points to the scanner, and a model that never saw
a hole reads the background showing through it as part of the expression.

A hole is a boundary loop other than the mesh's outer rim. The rim (the longest loop, where the scan ends at the
neck, forehead and ears) stays open; every other loop up to HOLE_FRACTION of the rim's length is closed by a
smooth patch: rings of vertices stepping from the loop to its centre, relaxed so that each is the mean of its
four ring neighbours (a discrete membrane spanning the loop), and wound like the faces around it. The patch
depends on the surface alone, not on the order its vertices and faces are listed in, up to where a loop is
entered.
"""

from __future__ import annotations

import numpy as np

HOLE_FRACTION = 0.5  # loops up to this fraction of the outer rim's length are holes; longer ones are left open
MAX_RINGS = 24  # rings of a patch, from the loop to its centre (about one per edge length of the hole's radius)
RELAX_SWEEPS_PER_RING = 4  # relaxation sweeps per ring squared: enough for the membrane to settle


def boundary_loops(faces: np.ndarray) -> list[np.ndarray]:
    """The closed loops of boundary edges (edges of one face only), each as vertex indices in the order of its
    faces' winding (loop[i] -> loop[i + 1] is an edge of a face). Boundaries that do not close into a loop (at
    faces wound against their neighbours) are left out."""
    half_edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]).astype(np.int64)
    keys = half_edges.min(axis=1) * (int(faces.max()) + 1) + half_edges.max(axis=1)  # one per undirected edge
    order = np.argsort(keys)
    differs = np.diff(keys[order]) != 0
    boundary = half_edges[order[np.r_[True, differs] & np.r_[differs, True]]]  # keys met once
    boundary = boundary[np.lexsort((boundary[:, 1], boundary[:, 0]))]  # not the faces' listing order
    outgoing: dict[int, list[int]] = {}
    for start, end in boundary.tolist():
        outgoing.setdefault(start, []).append(end)
    loops = []
    for first in list(outgoing):
        while outgoing.get(first):
            loop, vertex = [first], outgoing[first].pop()
            while vertex != first and outgoing.get(vertex):
                loop.append(vertex)
                vertex = outgoing[vertex].pop()
            if vertex == first and len(loop) >= 3:
                loops.append(np.array(loop, dtype=np.int64))
    return loops


def fill_holes(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """`vertices` and `faces` with every hole closed (see the module docstring), and the number of holes closed.
    The new vertices and faces follow the old ones, which are unchanged."""
    loops = boundary_loops(faces)
    if len(loops) < 2:
        return vertices, faces, 0
    lengths = [_perimeter(vertices, loop) for loop in loops]
    rim = int(np.argmax(lengths))
    holes = [loop for i, loop in enumerate(loops) if i != rim and lengths[i] <= HOLE_FRACTION * lengths[rim]]
    new_vertices, new_faces, count = [vertices], [faces], len(vertices)
    for loop in holes:
        patch_vertices, patch_faces = _patch(vertices[loop].astype(np.float64), loop, count)
        new_vertices.append(patch_vertices.astype(vertices.dtype))
        new_faces.append(patch_faces.astype(faces.dtype))
        count += len(patch_vertices)
    return np.concatenate(new_vertices), np.concatenate(new_faces), len(holes)


def _perimeter(vertices: np.ndarray, loop: np.ndarray) -> float:
    points = vertices[loop].astype(np.float64)
    return float(np.linalg.norm(points - np.roll(points, -1, axis=0), axis=1).sum())


def _patch(boundary: np.ndarray, loop: np.ndarray, first_index: int) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (numbered from `first_index`) and faces of the patch closing `loop`, whose points are `boundary`."""
    sides = len(loop)
    rings = int(np.clip(round(sides / (2 * np.pi)), 1, MAX_RINGS))
    grid = _relaxed_rings(boundary, rings)  # (rings + 1, sides, 3): the loop, the inner rings, the centre
    # Index of every grid point: ring 0 is the loop itself, the last ring is the one centre vertex.
    index = np.empty((rings + 1, sides), dtype=np.int64)
    index[0] = loop
    index[1:rings] = first_index + np.arange((rings - 1) * sides).reshape(rings - 1, sides)
    index[rings] = first_index + (rings - 1) * sides
    outer, inner = index[:-1], index[1:]
    outer_next, inner_next = np.roll(outer, -1, axis=1), np.roll(inner, -1, axis=1)
    # loop[i] -> loop[i + 1] is an edge of a face of the mesh, so the patch runs it the other way round.
    first_halves = np.stack([outer_next, outer, inner], axis=-1)
    second_halves = np.stack([outer_next, inner, inner_next], axis=-1)[:-1]  # the centre ring has no quads
    faces = np.concatenate([first_halves.reshape(-1, 3), second_halves.reshape(-1, 3)])
    new_vertices = np.concatenate([grid[1:rings].reshape(-1, 3), grid[rings, :1]])
    return new_vertices, faces


def _relaxed_rings(boundary: np.ndarray, rings: int) -> np.ndarray:
    centre = boundary.mean(axis=0)
    steps = np.linspace(0.0, 1.0, rings + 1)[:, None, None]
    grid = (1 - steps) * boundary[None] + steps * centre
    for _ in range(RELAX_SWEEPS_PER_RING * rings * rings):
        inner = grid[1:rings]
        grid[1:rings] = (grid[:-2] + grid[2:] + np.roll(inner, 1, axis=1) + np.roll(inner, -1, axis=1)) / 4
        grid[rings] = grid[rings - 1].mean(axis=0)
    return grid
