"""Reading a BU-3DFE-sized mesh (36k vertices, 71k triangles): our VRML and .bnt readers against trimesh
loading the same surface as OBJ and PLY, in the same run. Plus the synthetic generator's cost per mesh."""

import struct

import numpy as np
import pytest
import trimesh

from affectvlm.data.procedural_face import ProceduralFaceModel
from affectvlm.data.synthetic import expression_weights, posed_face
from affectvlm.geometry import Mesh, load_mesh, save_mesh

GRID = 190  # 190 x 190 points: about the size of a BU-3DFE F3D scan


@pytest.fixture(scope="module")
def surface_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mesh_io")
    rows, cols = np.mgrid[0:GRID, 0:GRID].astype(np.float64)
    points = np.stack([cols, -rows, 20 * np.sin(rows / 30) * np.cos(cols / 25)], axis=-1).reshape(-1, 3)
    index = np.arange(GRID * GRID).reshape(GRID, GRID)
    a, b, c, d = index[:-1, :-1].ravel(), index[:-1, 1:].ravel(), index[1:, :-1].ravel(), index[1:, 1:].ravel()
    faces = np.concatenate([np.stack([a, c, b], 1), np.stack([b, c, d], 1)])
    mesh = Mesh(points.astype(np.float32), faces.astype(np.int32))
    save_mesh(folder / "scan.wrl", mesh)
    save_mesh(folder / "scan.obj", mesh)
    save_mesh(folder / "scan.ply", mesh)
    trimesh.Trimesh(points, faces, process=False).export(folder / "scan_ascii.ply", encoding="ascii")
    matrix = np.concatenate([points, np.zeros((len(points), 2))], axis=1)
    (folder / "scan.bnt").write_bytes(struct.pack("<HHdH", GRID, GRID, -1e9, 8) + b"scan.png"
                                      + struct.pack("<I", matrix.size) + matrix.T.astype("<f8").tobytes())
    return folder


@pytest.mark.benchmark(group="mesh-load")
@pytest.mark.parametrize("name", ["scan.wrl", "scan.bnt", "scan.obj", "scan.ply", "scan_ascii.ply"])
def test_load_mesh(benchmark, surface_files, name):
    mesh = benchmark(load_mesh, surface_files / name)
    assert mesh.num_faces == 2 * (GRID - 1) ** 2


@pytest.mark.benchmark(group="mesh-load")
@pytest.mark.parametrize("name", ["scan.obj", "scan.ply"])
def test_peer_trimesh_load(benchmark, surface_files, name):
    loaded = benchmark(trimesh.load, surface_files / name, force="mesh", process=False)
    assert len(loaded.faces) == 2 * (GRID - 1) ** 2


@pytest.mark.benchmark(group="synthetic")
def test_synthetic_identity_rig(benchmark):
    model = ProceduralFaceModel()
    identity = model.random_identity(np.random.default_rng(0))
    benchmark(model.rig, identity)


@pytest.mark.benchmark(group="synthetic")
def test_synthetic_posed_face(benchmark):
    model = ProceduralFaceModel()
    rig = model.rig(model.random_identity(np.random.default_rng(0)))
    weights = expression_weights(model, "fear", 3)
    benchmark(posed_face, rig, weights, np.array([3.0, -2.0, 1.0]), np.random.default_rng(1))


@pytest.mark.benchmark(group="synthetic")
@pytest.mark.parametrize("suffix", ["obj", "ply", "wrl"])
def test_synthetic_mesh_write(benchmark, tmp_path, suffix):
    model = ProceduralFaceModel()
    rig = model.rig(model.random_identity(np.random.default_rng(0)))
    mesh = Mesh(rig.neutral.astype(np.float32), model.faces)
    benchmark(save_mesh, tmp_path / f"face.{suffix}", mesh)
