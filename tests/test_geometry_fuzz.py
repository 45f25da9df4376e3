"""Property: whatever bytes a mesh file holds, loading it gives a valid Mesh or a MeshError, nothing else."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from affectvlm.geometry import Mesh, MeshError, load_mesh
from test_geometry_io import BU_STYLE_VRML, bnt_bytes, plane_grid

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def load_or_mesh_error(path):
    """Load; a MeshError is an acceptable answer. Any other exception fails the test by propagating."""
    try:
        mesh = load_mesh(path, max_faces=100_000)
    except MeshError as error:
        assert str(error).startswith(str(path)) and "\n" not in str(error)
        return None
    assert isinstance(mesh, Mesh)
    assert mesh.vertices.dtype == np.float32 and mesh.vertices.shape[1] == 3
    assert mesh.faces.dtype == np.int32 and len(mesh.faces) > 0
    assert 0 <= mesh.faces.min() and mesh.faces.max() < len(mesh.vertices)
    assert np.isfinite(mesh.vertices).all()
    return mesh


@pytest.mark.parametrize("suffix", ["wrl", "bnt", "obj", "ply", "off", "stl", "glb"])
@FUZZ
@given(data=st.binary(max_size=2048))
def test_arbitrary_bytes(tmp_path, suffix, data):
    path = tmp_path / f"fuzz.{suffix}"
    path.write_bytes(data)
    load_or_mesh_error(path)


@FUZZ
@given(position=st.integers(0, 10_000), replacement=st.binary(min_size=1, max_size=8))
def test_vrml_with_corrupted_bytes(tmp_path, position, replacement):
    data = BU_STYLE_VRML.encode()
    position %= len(data)
    path = tmp_path / "corrupt.wrl"
    path.write_bytes(data[:position] + replacement + data[position + len(replacement):])
    load_or_mesh_error(path)


@FUZZ
@given(position=st.integers(0, 10_000), replacement=st.binary(min_size=1, max_size=8))
def test_bnt_with_corrupted_bytes(tmp_path, position, replacement):
    data = bnt_bytes(plane_grid(3, 4), zmin=-1e9)
    position %= len(data)
    path = tmp_path / "corrupt.bnt"
    path.write_bytes(data[:position] + replacement + data[position + len(replacement):])
    load_or_mesh_error(path)
