"""`load_mesh` and `save_mesh`: one entry point for every mesh format the package reads or writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import trimesh

from affectvlm.geometry.bnt import read_bnt
from affectvlm.geometry.mesh import DEFAULT_MAX_FACES, Mesh, MeshError, checked_mesh
from affectvlm.geometry.vrml import read_vrml, write_vrml

TRIMESH_FORMATS = (".obj", ".ply", ".off", ".stl", ".glb")
OWN_FORMATS = {".wrl": read_vrml, ".vrml": read_vrml, ".bnt": read_bnt}
READABLE_FORMATS = TRIMESH_FORMATS + tuple(OWN_FORMATS)
WRITABLE_FORMATS = (".obj", ".ply", ".wrl")


def load_mesh(path: str | Path, max_faces: int = DEFAULT_MAX_FACES) -> Mesh:
    """Read a triangle mesh; polygons are triangulated and scenes flattened into one mesh.

    Raises `MeshError` naming the file and the reason for anything that is not a usable mesh.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in READABLE_FORMATS:
        raise MeshError(path, f"unknown mesh format '{path.suffix}' (readable: {', '.join(READABLE_FORMATS)})")
    if not path.is_file():
        raise MeshError(path, "no such file")
    try:
        if suffix in OWN_FORMATS:
            return OWN_FORMATS[suffix](path, max_faces=max_faces)
        return _load_with_trimesh(path, max_faces)
    except OSError as error:
        raise MeshError(path, f"cannot read file ({error.strerror or error})") from None


def _load_with_trimesh(path: Path, max_faces: int) -> Mesh:
    if path.stat().st_size == 0:
        raise MeshError(path, "empty file")
    try:
        # maintain_order keeps OBJ vertices in file order, so meshes of one topology stay aligned.
        loaded = trimesh.load(path, force="mesh", process=False, maintain_order=True)
        if path.suffix.lower() == ".stl":
            loaded.merge_vertices()  # STL stores every triangle's corners separately
        vertices, faces = np.asarray(loaded.vertices), np.asarray(loaded.faces)
    except Exception as error:  # trimesh raises many types on malformed files; all mean "unreadable"
        raise MeshError(path, f"unreadable {path.suffix.lower()[1:].upper()} file "
                              f"({type(error).__name__}: {error})".replace("\n", " ")) from None
    metadata = {"format": path.suffix.lower()[1:]}
    uv = getattr(loaded.visual, "uv", None)
    if uv is not None and len(uv) == len(vertices):
        metadata["uv"] = np.asarray(uv, dtype=np.float32)
    return checked_mesh(path, vertices, faces, metadata, max_faces)


def save_mesh(path: str | Path, mesh: Mesh) -> None:
    """Write `mesh` as OBJ, PLY (binary) or VRML 2.0, chosen by the file suffix."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".wrl":
        write_vrml(path, mesh)
    elif suffix in (".obj", ".ply"):
        trimesh.Trimesh(mesh.vertices, mesh.faces, process=False).export(path)
    else:
        raise MeshError(path, f"cannot write format '{path.suffix}' (writable: {', '.join(WRITABLE_FORMATS)})")
