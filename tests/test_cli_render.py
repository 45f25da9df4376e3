"""`affectvlm render`, run as a user runs it, on generated datasets."""

import json
import subprocess

import numpy as np
import pytest
import torch

from affectvlm.data import index_dataset, load_sample
from affectvlm.data.synthetic import generate_dataset
from affectvlm.data.views import DEFAULT_RECIPE, render_model_views
from affectvlm.geometry.cameras import view_cameras
from affectvlm.ops.raster import render_views


def run(*args):
    return subprocess.run(["affectvlm", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def static_faces(tmp_path_factory):
    folder = tmp_path_factory.mktemp("faces")
    generate_dataset(folder, subjects=1, seed=2, file_format="ply")
    return folder


def render(data, out, *extra):
    return run("render", str(data), "--out", str(out), "--size", "32", "--shard-size", "10", *extra)


def test_render_writes_shards_and_an_index_that_match_the_model_views(static_faces, tmp_path):
    result = render(static_faces, tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    assert "render: 100%" in result.stderr
    assert f"rendered 25 meshes x 3 views into 3 shard(s) in {tmp_path / 'cache'}\n" in result.stdout
    index = json.loads((tmp_path / "cache" / "index.json").read_text())
    assert index["settings"]["recipe"] == DEFAULT_RECIPE and index["settings"]["num_channels"] == 3
    assert [s["rows"] for s in index["shards"]] == [10, 10, 5]
    samples = {s.path.relative_to(static_faces).as_posix(): s for s in index_dataset(static_faces)}
    assert sorted(e["file"] for e in index["samples"]) == sorted(samples)
    for entry in index["samples"][8:13]:  # across a shard boundary
        shard = np.load(tmp_path / "cache" / index["shards"][entry["shard"]]["file"])
        assert shard.shape[1:] == (3, 3, 32, 32) and shard.dtype == np.float16
        sample = samples[entry["file"]]
        assert entry["emotion"] == sample.emotion and entry["subject"] == sample.subject
        mesh = load_sample(sample)
        expected = render_model_views(torch.from_numpy(mesh.vertices), torch.from_numpy(mesh.faces), view_cameras(),
                                      32)
        np.testing.assert_allclose(shard[entry["row"]], expected[0].numpy(), atol=1e-3)


def test_raw_channels_render_as_render_views_does(static_faces, tmp_path):
    result = render(static_faces, tmp_path / "cache", "--channels", "depth,normal,shading,mask")
    assert result.returncode == 0, result.stderr
    index = json.loads((tmp_path / "cache" / "index.json").read_text())
    assert index["settings"]["recipe"] is None
    assert index["settings"]["channel_layout"] == {"depth": [0, 1], "normal": [1, 4], "shading": [4, 5],
                                                   "mask": [5, 6]}
    entry = index["samples"][12]
    shard = np.load(tmp_path / "cache" / index["shards"][entry["shard"]]["file"])
    assert shard.shape[1:] == (3, 6, 32, 32)
    mesh = load_sample(next(s for s in index_dataset(static_faces) if s.path == static_faces / entry["file"]))
    expected = render_views(torch.from_numpy(mesh.vertices), torch.from_numpy(mesh.faces), view_cameras(), 32)
    np.testing.assert_allclose(shard[entry["row"]], expected[0].numpy(), atol=1e-3)


def test_rerun_skips_finished_shards_and_redoes_missing_or_truncated_ones(static_faces, tmp_path):
    out = tmp_path / "cache"
    assert render(static_faces, out).returncode == 0
    shards = sorted(out.glob("shard-*.npy"))
    first = [np.load(path) for path in shards]
    untouched = shards[0].stat().st_mtime_ns
    shards[1].unlink()
    shards[2].write_bytes(shards[2].read_bytes()[:-100])  # an interrupted copy, say

    result = render(static_faces, out)
    assert result.returncode == 0, result.stderr
    assert "into 3 shard(s)" in result.stdout and "(1 already complete, kept)" in result.stdout
    assert shards[0].stat().st_mtime_ns == untouched
    for path, before in zip(shards, first):
        np.testing.assert_array_equal(np.load(path), before)
    assert not list(out.glob(".*partial"))


def test_rerun_with_other_settings_is_refused(static_faces, tmp_path):
    assert render(static_faces, tmp_path / "cache").returncode == 0
    result = render(static_faces, tmp_path / "cache", "--views", "frontal")
    assert result.returncode == 1
    assert "holds a render of other data or settings" in result.stderr


def test_sequences_render_with_chosen_views_channels_and_dtype(tmp_path):
    generate_dataset(tmp_path / "seq", subjects=1, seed=1, file_format="ply", sequences=True, frames=3)
    result = run("render", str(tmp_path / "seq"), "--out", str(tmp_path / "cache"), "--size", "24",
                 "--views", "frontal,up", "--channels", "mask,depth", "--dtype", "float32", "--projection",
                 "orthographic")
    assert result.returncode == 0, result.stderr
    shard = np.load(tmp_path / "cache" / "shard-00000.npy")
    assert shard.shape == (18, 2, 2, 24, 24) and shard.dtype == np.float32
    assert shard[:, :, 0].any(axis=(2, 3)).all()  # every view sees its face
    assert (shard[:, :, 1][shard[:, :, 0] == 0] == 0).all()


def test_render_usage_errors(static_faces, tmp_path):
    for arguments, message in [(["--views", "frontal,behind"], "unknown view 'behind'"),
                               (["--channels", "depth,colour"], "unknown channel 'colour'"),
                               (["--size", "0"], "must be at least 1"),
                               (["--recipe", "rgb"], "unknown --recipe 'rgb'"),
                               (["--recipe", "normal", "--channels", "depth"], "--recipe and --channels exclude")]:
        result = run("render", str(static_faces), "--out", str(tmp_path / "x"), *arguments)
        assert result.returncode == 2 and message in result.stderr, (arguments, result.stderr)
    missing = run("render", str(tmp_path / "nothing"), "--out", str(tmp_path / "y"))
    assert missing.returncode == 1 and "not a folder" in missing.stderr


def test_device_cuda_without_a_usable_gpu_says_why(static_faces, tmp_path):
    from affectvlm._ext import cuda_status

    if cuda_status().usable:
        pytest.skip("this machine has a usable GPU")
    result = render(static_faces, tmp_path / "cache", "--device", "cuda")
    assert result.returncode == 2
    assert "affectvlm render: error: --device cuda: " in result.stderr  # then the reason, e.g. no driver
    assert not (tmp_path / "cache").exists()


@pytest.mark.cuda
def test_device_cuda_writes_the_shards_the_cpu_writes(static_faces, tmp_path):
    assert render(static_faces, tmp_path / "cpu", "--dtype", "float32").returncode == 0
    result = render(static_faces, tmp_path / "gpu", "--dtype", "float32", "--device", "cuda")
    assert result.returncode == 0, result.stderr
    for cpu_shard in sorted((tmp_path / "cpu").glob("shard-*.npy")):
        np.testing.assert_allclose(np.load(tmp_path / "gpu" / cpu_shard.name), np.load(cpu_shard), atol=1e-5)


def test_meshes_writes_the_mesh_cache_that_online_views_read(static_faces, tmp_path):
    from affectvlm.data.mesh_cache import MeshCache

    result = run("render", str(static_faces), "--out", str(tmp_path / "meshes"), "--meshes")
    assert result.returncode == 0, result.stderr
    assert f"cached 25 meshes of 1 topologies in {tmp_path / 'meshes'}\n" in result.stdout
    cache = MeshCache(tmp_path / "meshes")
    sample = index_dataset(static_faces)[4]
    assert cache.samples[4] == sample
    np.testing.assert_array_equal(cache.load(4)[0], load_sample(sample).vertices)
    refused = run("render", str(static_faces), "--out", str(tmp_path / "x"), "--meshes", "--recipe", "normal")
    assert refused.returncode == 2 and "--recipe and --channels do not apply" in refused.stderr
