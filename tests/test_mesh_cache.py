"""The binary mesh cache: the meshes load_sample gives, faces stored once per topology, damage named."""

import json
import shutil

import numpy as np
import pytest

from affectvlm.data import Sample, index_dataset, load_sample, write_labels
from affectvlm.data import mesh_cache as mesh_cache_module
from affectvlm.data.mesh_cache import MeshCache, MeshCacheError, build_mesh_cache
from affectvlm.geometry import Mesh
from affectvlm.geometry.io import save_mesh


@pytest.fixture(scope="module")
def sequence_cache(sequence_dataset, tmp_path_factory):
    return build_mesh_cache(sequence_dataset, tmp_path_factory.mktemp("mesh-cache") / "cache")


def test_every_sample_loads_as_load_sample_gives_it(sequence_dataset, sequence_cache):
    samples = index_dataset(sequence_dataset)
    assert sequence_cache.samples == samples  # paths and labels
    assert [s.attributes for s in sequence_cache.samples] == [s.attributes for s in samples]
    for i in (0, 7, len(samples) - 1):
        vertices, faces = sequence_cache.load(i)
        mesh = load_sample(samples[i])
        assert vertices.dtype == np.float32 and faces.dtype == np.int32
        np.testing.assert_array_equal(vertices, mesh.vertices)
        np.testing.assert_array_equal(faces, mesh.faces)


def test_frames_of_one_topology_store_their_faces_once(sequence_dataset, sequence_cache):
    assert sequence_cache.index["topologies"] == [{"shard": 0, "start": 0, "count": len(sequence_cache.load(0)[1])}]
    assert {sequence_cache.topology(i) for i in range(len(sequence_cache))} == {0}
    faces_file = np.load(sequence_cache.path / "faces-00000.npy")
    assert faces_file.shape == sequence_cache.load(0)[1].shape


@pytest.fixture
def mixed_topologies(static_dataset, tmp_path):
    """Five meshes: four of the generator's topology, one with a fifth of its faces and the vertices they use."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    samples = []
    for i, sample in enumerate(index_dataset(static_dataset)[:5]):
        path = folder / f"{i}.ply"
        shutil.copy(sample.path, path)
        if i == 2:
            mesh = load_sample(sample)
            used, faces = np.unique(mesh.faces[::5], return_inverse=True)
            save_mesh(path, Mesh(mesh.vertices[used], faces.reshape(-1, 3).astype(np.int32)))
        samples.append(Sample(path, sample.subject, sample.emotion, sample.intensity))
    write_labels(folder, samples)
    return folder


def test_meshes_of_several_topologies_across_several_shards(mixed_topologies, tmp_path, monkeypatch):
    monkeypatch.setattr(mesh_cache_module, "SHARD_BYTES", 100_000)  # a shard every mesh or two
    cache = build_mesh_cache(mixed_topologies, tmp_path / "cache")
    assert len(cache.index["vertex_shards"]) >= 3
    assert [cache.topology(i) for i in range(5)] == [0, 0, 1, 0, 0]
    reopened = MeshCache(tmp_path / "cache")
    for i, sample in enumerate(index_dataset(mixed_topologies)):
        vertices, faces = reopened.load(i)
        mesh = load_sample(sample)
        np.testing.assert_array_equal(vertices, mesh.vertices)
        np.testing.assert_array_equal(faces, mesh.faces)

    batch = [4, 0, 3, 0]  # across shards, a sample twice, out of order
    gathered = reopened.vertices(batch, out=np.full((4, *reopened.load(0)[0].shape), np.nan, dtype=np.float32))
    np.testing.assert_array_equal(gathered, np.stack([reopened.load(i)[0] for i in batch]))
    with pytest.raises(ValueError, match="2 different vertex counts"):
        reopened.vertices([0, 2])


def test_building_again_opens_the_same_cache_and_refuses_other_data(sequence_dataset, static_dataset, tmp_path):
    build_mesh_cache(sequence_dataset, tmp_path / "cache")
    written = (tmp_path / "cache" / "vertices-00000.npy").stat().st_mtime_ns
    again = build_mesh_cache(sequence_dataset, tmp_path / "cache")
    assert len(again) == 18 and (tmp_path / "cache" / "vertices-00000.npy").stat().st_mtime_ns == written
    with pytest.raises(MeshCacheError, match="holds a mesh cache of other data"):
        build_mesh_cache(static_dataset, tmp_path / "cache")


@pytest.fixture
def copied_cache(sequence_cache, tmp_path):
    return shutil.copytree(sequence_cache.path, tmp_path / "copy")


def one_line_error(call, *, names):
    with pytest.raises(MeshCacheError) as raised:
        call()
    message = str(raised.value)
    assert "\n" not in message and str(names) in message, message
    return message


def test_a_truncated_or_missing_shard_is_named_when_the_cache_opens(copied_cache):
    vertices = copied_cache / "vertices-00000.npy"
    vertices.write_bytes(vertices.read_bytes()[: vertices.stat().st_size // 2])
    assert "truncated" in one_line_error(lambda: MeshCache(copied_cache), names=vertices)
    (copied_cache / "faces-00000.npy").unlink()
    vertices.unlink()
    assert "missing" in one_line_error(lambda: MeshCache(copied_cache), names=vertices)


def test_a_shard_of_another_shape_than_the_index_says_is_named(copied_cache):
    faces = copied_cache / "faces-00000.npy"
    np.save(faces, np.load(faces)[:-3])
    assert "the index says" in one_line_error(lambda: MeshCache(copied_cache), names=faces)


def test_corrupt_values_are_named_when_the_mesh_loads(copied_cache):
    vertices_path, faces_path = copied_cache / "vertices-00000.npy", copied_cache / "faces-00000.npy"
    vertices = np.load(vertices_path)
    vertices[5] = np.nan
    np.save(vertices_path, vertices)
    cache = MeshCache(copied_cache)
    assert "sample 0 has NaN" in one_line_error(lambda: cache.load(0), names=vertices_path)
    assert "sample 0 has NaN" in one_line_error(lambda: cache.vertices([1, 0]), names=vertices_path)
    cache.load(1)  # the others still load

    faces = np.load(faces_path)
    faces[100, 1] = 1 << 30
    np.save(faces_path, faces)
    one_line_error(lambda: MeshCache(copied_cache).load(1), names=faces_path)


def test_a_damaged_index_is_named(copied_cache, tmp_path):
    index = copied_cache / "index.json"
    index.write_text(index.read_text()[:100])
    assert "unreadable" in one_line_error(lambda: MeshCache(copied_cache), names=index)
    index.write_text(json.dumps({"format": "affectvlm-mesh-cache-1", "samples": []}))
    assert "malformed" in one_line_error(lambda: MeshCache(copied_cache), names=index)
    one_line_error(lambda: MeshCache(tmp_path / "nowhere"), names=tmp_path / "nowhere" / "index.json")
