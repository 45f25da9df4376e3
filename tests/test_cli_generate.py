"""`affectvlm generate`, run as a user runs it."""

import subprocess

import numpy as np

from affectvlm.data import index_dataset
from affectvlm.geometry import load_mesh


def run(*args):
    return subprocess.run(["affectvlm", *args], capture_output=True, text=True, timeout=300)


def test_generate_writes_meshes_and_labels(tmp_path):
    result = run("generate", "--out", str(tmp_path / "obj"), "--subjects", "1", "--seed", "4")
    assert result.returncode == 0, result.stderr
    assert "wrote 25 meshes of 1 subject(s)" in result.stdout
    assert "generate: 100%" in result.stderr  # the progress bar
    header = (tmp_path / "obj" / "labels.csv").read_text().splitlines()[0]
    assert header == "file,subject,emotion,intensity,sex,age"
    samples = index_dataset(tmp_path / "obj")
    assert len(samples) == 25 and {s.subject for s in samples} == {"S001"}


def test_formats_hold_the_same_faces(tmp_path):
    for file_format in ("obj", "ply", "wrl"):
        result = run("generate", "--out", str(tmp_path / file_format), "--subjects", "1", "--seed", "9",
                     "--format", file_format)
        assert result.returncode == 0, result.stderr
    reference = load_mesh(tmp_path / "obj" / "S001" / "S001_fear_2.obj")
    for file_format in ("ply", "wrl"):
        other = load_mesh(tmp_path / file_format / "S001" / f"S001_fear_2.{file_format}")
        assert np.array_equal(other.faces, reference.faces)
        assert np.allclose(other.vertices, reference.vertices, atol=1e-3)


def test_usage_errors(tmp_path):
    out = str(tmp_path / "x")
    for arguments, message in [(["--subjects", "1"], "required: --out"),
                               (["--out", out, "--subjects", "0"], "must be at least 1"),
                               (["--out", out, "--subjects", "1", "--frames", "5"], "--frames needs --sequences"),
                               (["--out", out, "--subjects", "1", "--sequences", "--frames", "2"], "at least 3"),
                               (["--out", out, "--subjects", "1", "--blendshapes", out], "go together"),
                               (["--out", out, "--subjects", "1", "--format", "stl"], "invalid choice: 'stl'")]:
        result = run("generate", *arguments)
        assert result.returncode == 2 and message in result.stderr, (arguments, result.stderr)
        assert result.stderr.count("affectvlm generate: error") == 1
