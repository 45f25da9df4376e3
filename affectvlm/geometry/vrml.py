"""VRML 2.0 IndexedFaceSet meshes, the format of BU-3DFE and BU-4DFE (trimesh reads no VRML).

The reader takes what those datasets write: one or more `IndexedFaceSet` nodes, each with
`coord Coordinate { point [x y z, ...] }`, `coordIndex [i j k ... -1, ...]` (polygons of three or more
vertices, fan-triangulated), and optionally `texCoord TextureCoordinate { point [u v, ...] }` with a
`texCoordIndex` of the same polygon layout, and an `ImageTexture` url. Everything else is skipped.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from affectvlm.geometry.mesh import DEFAULT_MAX_FACES, Mesh, MeshError, checked_mesh

_HEADER = re.compile(rb"\A(?:\xef\xbb\xbf)?#VRML V2\.0")
_COMMENT = re.compile(r"#[^\n]*")
# Each field: the keyword it starts with, and the pattern matched there (finding the keyword with str.find
# first is many times faster than a regex scan through megabytes of numbers).
_OPTIONAL_DEF = r"(?:DEF\s+\S+\s+)?"
_FACE_SET = ("IndexedFaceSet", re.compile(r"IndexedFaceSet\s*\{"))
_COORDINATES = ("coord", re.compile(r"coord\s+" + _OPTIONAL_DEF + r"Coordinate\s*\{\s*point\s*\[([^\]]*)\]"))
_COORD_INDEX = ("coordIndex", re.compile(r"coordIndex\s*\[([^\]]*)\]"))
_TEX_COORDINATES = ("texCoord", re.compile(r"texCoord\s+" + _OPTIONAL_DEF
                                           + r"TextureCoordinate\s*\{\s*point\s*\[([^\]]*)\]"))
_TEX_COORD_INDEX = ("texCoordIndex", re.compile(r"texCoordIndex\s*\[([^\]]*)\]"))
_TEXTURE_URL = ("url", re.compile(r"url\s*\[?\s*\"([^\"]*)\""))


def read_vrml(path: str | Path, max_faces: int = DEFAULT_MAX_FACES) -> Mesh:
    data = Path(path).read_bytes()
    if not _HEADER.match(data):
        raise MeshError(path, "not a VRML 2.0 file (no '#VRML V2.0' header)")
    text = _COMMENT.sub("", data.decode("utf-8", errors="replace"))
    bodies = _face_set_bodies(path, text)
    if not bodies:
        raise MeshError(path, "no IndexedFaceSet node")

    vertex_blocks, face_blocks, uv_blocks, uv_face_blocks = [], [], [], []
    vertex_offset = uv_offset = 0
    for body in bodies:
        vertices, faces, uv, uv_faces = _read_face_set(path, body, max_faces)
        vertex_blocks.append(vertices)
        face_blocks.append(faces + vertex_offset)
        vertex_offset += len(vertices)
        if uv is not None:
            uv_blocks.append(uv)
            uv_face_blocks.append(uv_faces + uv_offset)
            uv_offset += len(uv)
    metadata = {"format": "wrl"}
    if uv_blocks and len(uv_blocks) == len(bodies):
        metadata["uv"] = np.concatenate(uv_blocks).astype(np.float32)
        metadata["uv_faces"] = np.concatenate(uv_face_blocks).astype(np.int32)
    texture = _find(text, _TEXTURE_URL)
    if texture:
        metadata["texture"] = texture.group(1)
    return checked_mesh(path, np.concatenate(vertex_blocks), np.concatenate(face_blocks), metadata, max_faces)


def _find(text: str, field: tuple[str, re.Pattern], start: int = 0) -> re.Match | None:
    """The first match of a field's pattern where its keyword begins a word, at or after `start`."""
    keyword, pattern = field
    position = text.find(keyword, start)
    while position != -1:
        before = text[position - 1] if position else " "
        if not (before.isalnum() or before == "_"):
            match = pattern.match(text, position)
            if match:
                return match
        position = text.find(keyword, position + 1)
    return None


def _face_set_bodies(path, text: str) -> list[str]:
    """The text between each `IndexedFaceSet {` and its matching `}`."""
    bodies = []
    match = _find(text, _FACE_SET)
    while match:
        depth, position = 1, match.end()
        while depth:
            next_open, next_close = text.find("{", position), text.find("}", position)
            if next_close == -1:
                raise MeshError(path, "IndexedFaceSet node is not closed (truncated file?)")
            if next_open != -1 and next_open < next_close:
                depth, position = depth + 1, next_open + 1
            else:
                depth, position = depth - 1, next_close + 1
        bodies.append(text[match.end():position - 1])
        match = _find(text, _FACE_SET, position)
    return bodies


def _read_face_set(path, body: str, max_faces: int):
    coordinates = _find(body, _COORDINATES)
    if coordinates is None:
        raise MeshError(path, "IndexedFaceSet has no 'coord Coordinate { point [...] }'")
    coord_index = _find(body, _COORD_INDEX)
    if coord_index is None:
        raise MeshError(path, "IndexedFaceSet has no 'coordIndex [...]'")
    vertices = _rows(path, coordinates.group(1), 3, "Coordinate point")
    faces = _triangulate(path, _numbers(path, coord_index.group(1), np.int64, "coordIndex"), max_faces, "coordIndex")
    if len(faces) and (faces.max() >= len(vertices)):
        raise MeshError(path, f"coordIndex refers to vertex {int(faces.max())} but only {len(vertices)} points exist")

    tex_coordinates = _find(body, _TEX_COORDINATES)
    if tex_coordinates is None:
        return vertices, faces, None, None
    uv = _rows(path, tex_coordinates.group(1), 2, "TextureCoordinate point")
    if not np.isfinite(uv).all():
        raise MeshError(path, "NaN or infinite texture coordinates")
    tex_index = _find(body, _TEX_COORD_INDEX)
    if tex_index is None:
        if len(uv) != len(vertices):
            raise MeshError(path, f"{len(uv)} texture coordinates for {len(vertices)} vertices and no texCoordIndex")
        return vertices, faces, uv, faces
    uv_faces = _triangulate(path, _numbers(path, tex_index.group(1), np.int64, "texCoordIndex"), max_faces, "texCoordIndex")
    if uv_faces.shape != faces.shape:
        raise MeshError(path, "texCoordIndex does not have the polygons of coordIndex")
    if len(uv_faces) and uv_faces.max() >= len(uv):
        raise MeshError(path, f"texCoordIndex refers to texture coordinate {int(uv_faces.max())} "
                              f"but only {len(uv)} exist")
    return vertices, faces, uv, uv_faces


def _rows(path, text: str, width: int, what: str) -> np.ndarray:
    numbers = _numbers(path, text, np.float64, what)
    if len(numbers) % width:
        raise MeshError(path, f"{what} holds {len(numbers)} numbers, not a multiple of {width}")
    return numbers.reshape(-1, width)


def _numbers(path, text: str, dtype, what: str) -> np.ndarray:
    tokens = text.replace(",", " ").split()
    try:
        return np.array(tokens, dtype=dtype)
    except (ValueError, OverflowError):
        raise MeshError(path, f"{what} holds something that is not a number") from None


def _triangulate(path, indices: np.ndarray, max_faces: int, what: str) -> np.ndarray:
    """Fan-triangulate polygons written as index runs ended by -1 (the last -1 may be missing)."""
    if len(indices) == 0 or indices[-1] != -1:
        indices = np.append(indices, -1)
    if (indices < -1).any():
        raise MeshError(path, f"{what} holds a negative index other than the -1 polygon end")
    ends = np.flatnonzero(indices == -1)
    starts = np.concatenate([[0], ends[:-1] + 1])
    sizes = ends - starts
    sizes_nonempty = sizes[sizes > 0]  # "-1 -1" is an empty polygon, which VRML readers skip
    starts = starts[sizes > 0]
    if (sizes_nonempty < 3).any():
        raise MeshError(path, f"{what} holds a polygon of fewer than 3 vertices")
    triangles_per_polygon = sizes_nonempty - 2
    total = int(triangles_per_polygon.sum())
    if total > max_faces:
        raise MeshError(path, f"{total} faces, more than the limit of {max_faces}")
    polygon_start = np.repeat(starts, triangles_per_polygon)
    first_triangle = np.repeat(np.cumsum(triangles_per_polygon) - triangles_per_polygon, triangles_per_polygon)
    corner = np.arange(total) - first_triangle + 1
    return np.stack([indices[polygon_start], indices[polygon_start + corner], indices[polygon_start + corner + 1]],
                    axis=1)


def write_vrml(path: str | Path, mesh: Mesh) -> None:
    """Write `mesh` as a VRML 2.0 IndexedFaceSet in the layout BU-3DFE uses."""
    points = "\n".join(f"{x:.6g} {y:.6g} {z:.6g}," for x, y, z in mesh.vertices.tolist())
    polygons = "\n".join(f"{a}, {b}, {c}, -1," for a, b, c in mesh.faces.tolist())
    Path(path).write_text(
        "#VRML V2.0 utf8\n"
        "Shape {\n"
        "  geometry IndexedFaceSet {\n"
        "    coord Coordinate {\n"
        f"      point [\n{points}\n      ]\n"
        "    }\n"
        f"    coordIndex [\n{polygons}\n    ]\n"
        "  }\n"
        "}\n"
    )
