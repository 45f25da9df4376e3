"""Bad input to the pipeline: one line naming the file, raised where the batch is asked for, no thread left."""

import json
import shutil
import threading

import numpy as np
import pytest

from affectvlm.data.cache import CacheError, RenderSettings, render_dataset
from affectvlm.data.mesh_cache import MeshCacheError
from affectvlm.data.pipeline import CachedViews, OnlineViews, ViewPipeline, open_views


def one_line(error, names):
    message = str(error.value)
    assert "\n" not in message and str(names) in message, message
    return message


@pytest.fixture
def copied_views(view_cache, tmp_path):
    return shutil.copytree(view_cache, tmp_path / "views")


def test_a_missing_or_truncated_shard_is_named(copied_views):
    shard = copied_views / "shard-00001.npy"
    shard.write_bytes(shard.read_bytes()[:-1000])
    with pytest.raises(CacheError) as error:
        CachedViews(copied_views)
    assert "truncated" in one_line(error, shard)
    shard.unlink()
    with pytest.raises(CacheError) as error:
        CachedViews(copied_views)
    assert "missing" in one_line(error, shard)


def test_a_shard_that_disagrees_with_the_index_is_named(copied_views):
    shard = copied_views / "shard-00000.npy"
    np.save(shard, np.load(shard).astype(np.float32))
    with pytest.raises(CacheError) as error:
        CachedViews(copied_views)
    assert "the index says float16" in one_line(error, shard)


def test_a_cache_made_with_other_settings_is_refused(view_cache, static_dataset, tmp_path):
    index = view_cache / "index.json"
    for expectation, message in [({"size": 64}, "rendered with size 32, not the 64"),
                                 ({"recipe": "shading"}, "rendered with recipe normal, not the shading"),
                                 ({"views": "frontal,up"}, "rendered with views"),
                                 ({"pose": "template"}, "rendered with pose none, not the template")]:
        with pytest.raises(CacheError) as error:
            CachedViews(view_cache, **expectation)
        assert message in one_line(error, index)
    CachedViews(view_cache, size=32, views="frontal,left,right")  # what it holds is accepted
    raw = tmp_path / "raw"
    render_dataset(static_dataset, raw, RenderSettings(size=16, channels=("depth", "mask")), shard_size=64)
    with pytest.raises(CacheError) as error:
        open_views(raw)
    assert "holds raw channels" in one_line(error, raw / "index.json")


def test_a_mesh_cache_of_another_pose_normalisation_is_refused(mesh_cache, static_dataset):
    from affectvlm.data.mesh_cache import build_mesh_cache

    with pytest.raises(CacheError) as error:
        OnlineViews(mesh_cache, pose="template")
    one_line(error, mesh_cache)
    OnlineViews(mesh_cache, pose="none")  # what it holds is accepted
    with pytest.raises(MeshCacheError) as error:
        build_mesh_cache(static_dataset, mesh_cache, pose="template")
    assert "normalised with pose 'none', not 'template'" in one_line(error, mesh_cache)
    with pytest.raises(MeshCacheError) as error:
        build_mesh_cache(static_dataset, mesh_cache, pose="upright")
    assert "unknown pose normalisation 'upright'" in str(error.value)
    with pytest.raises(CacheError, match="unknown pose normalisation 'upright'"):
        RenderSettings(pose="upright")


def test_a_folder_that_is_no_cache_is_named(tmp_path):
    with pytest.raises(CacheError) as error:
        open_views(tmp_path)
    one_line(error, tmp_path / "index.json")
    (tmp_path / "index.json").write_text("{not json")
    with pytest.raises(CacheError) as error:
        open_views(tmp_path)
    one_line(error, tmp_path / "index.json")


def test_a_corrupt_mesh_cache_entry_stops_the_epoch_with_its_file_and_leaves_no_thread(mesh_cache, tmp_path):
    copy = shutil.copytree(mesh_cache, tmp_path / "meshes")
    vertices_path = copy / "vertices-00000.npy"
    vertices = np.load(vertices_path)
    index = json.loads((copy / "index.json").read_text())
    corrupt = 13
    vertices[index["samples"][corrupt]["start"] + 2] = np.nan
    np.save(vertices_path, vertices)
    threads = threading.active_count()
    pipeline = ViewPipeline(OnlineViews(copy, size=16, device="cpu"), 10, training=False, backend="torch",
                            device="cpu")
    batches = pipeline.epoch(0)
    next(batches)  # samples 0-9 are sound
    with pytest.raises(MeshCacheError) as error:
        next(batches)
    assert f"sample {corrupt} has NaN" in one_line(error, vertices_path)
    with pytest.raises(StopIteration):
        next(batches)
    assert threading.active_count() == threads


def test_abandoning_an_epoch_leaves_no_thread(view_cache):
    threads = threading.active_count()
    batches = ViewPipeline(CachedViews(view_cache), 4, backend="torch", device="cpu").epoch(0)
    next(batches)
    batches.close()
    assert threading.active_count() == threads
