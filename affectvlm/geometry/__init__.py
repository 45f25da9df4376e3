"""Mesh input and output, validation and normalisation."""

from affectvlm.geometry.io import READABLE_FORMATS, WRITABLE_FORMATS, load_mesh, save_mesh
from affectvlm.geometry.mesh import DEFAULT_MAX_FACES, Mesh, MeshError
from affectvlm.geometry.normalise import normalise

__all__ = ["DEFAULT_MAX_FACES", "READABLE_FORMATS", "WRITABLE_FORMATS", "Mesh", "MeshError", "load_mesh",
           "normalise", "save_mesh"]
