import pytest


# Tiny generated datasets shared by the data pipeline's tests (tests/test_pipeline_*.py, test_views.py, ...).
@pytest.fixture(scope="session")
def static_dataset(tmp_path_factory):
    from affectvlm.data.synthetic import generate_dataset

    folder = tmp_path_factory.mktemp("static-faces")
    generate_dataset(folder, subjects=2, seed=5, file_format="ply")
    return folder


@pytest.fixture(scope="session")
def sequence_dataset(tmp_path_factory):
    from affectvlm.data.synthetic import generate_dataset

    folder = tmp_path_factory.mktemp("face-sequences")
    generate_dataset(folder, subjects=1, seed=6, file_format="ply", sequences=True, frames=3)
    return folder


@pytest.fixture(scope="session")
def view_cache(static_dataset, tmp_path_factory):
    """The render cache of `static_dataset`: the default recipe, 3 views of 32^2, shards of 16 samples, faces only
    centred and scaled (pose none), as the tests that compare views with it draw them."""
    from affectvlm.data.cache import RenderSettings, render_dataset

    folder = tmp_path_factory.mktemp("view-cache") / "cache"
    render_dataset(static_dataset, folder, RenderSettings(size=32, pose="none"), shard_size=16)
    return folder


@pytest.fixture(scope="session")
def mesh_cache(static_dataset, tmp_path_factory):
    """The mesh cache of `static_dataset`, faces only centred and scaled (pose none)."""
    from affectvlm.data.mesh_cache import build_mesh_cache

    return build_mesh_cache(static_dataset, tmp_path_factory.mktemp("mesh-cache") / "cache", pose="none").path


# A checkpoint for the app's and the explanation's tests: a tiny model trained for two steps on `static_dataset`
# by the real trainer (seconds), with faces registered to the template face (--pose template), so that the app's
# path through pose normalisation is the one tested. Its predictions mean little; the tests check the plumbing.
TINY_APP_MODEL = {"embed_dim": 32,
                  "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
                  "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}}


@pytest.fixture(scope="session")
def app_checkpoint(static_dataset, tmp_path_factory):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    folder = tmp_path_factory.mktemp("app-checkpoint")
    (folder / "tiny.json").write_text(json.dumps(TINY_APP_MODEL))
    command = [sys.executable, "-m", "affectvlm.train", str(static_dataset), "--model", str(folder / "tiny.json"),
               "--out", str(folder / "run"), "--max-steps", "2", "--epochs", "1", "--batch-size", "8", "--folds", "2",
               "--device", "cpu", "--no-progress", "--pose", "template"]
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(command, capture_output=True, text=True, cwd=root, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)})
    assert result.returncode == 0, result.stdout + result.stderr
    return folder / "run" / "best.safetensors"
