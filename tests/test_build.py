"""The build options of CMakeLists.txt, exercised with CMake itself on this source tree."""

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pybind11
import pytest

pytestmark = pytest.mark.build

SOURCE = Path(__file__).resolve().parents[1]


def configure(build_dir, env_overrides, *defines):
    inherited = {k: v for k, v in os.environ.items() if k not in ("AFFECTVLM_CUDA", "CUDAARCHS", "CUDACXX")}
    env = {**inherited, **env_overrides}
    command = ["cmake", "-S", str(SOURCE), "-B", str(build_dir), "-G", "Ninja",
               f"-DPython_EXECUTABLE={sys.executable}", f"-Dpybind11_DIR={pybind11.get_cmake_dir()}", *defines]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def test_cuda_on_without_a_cuda_compiler_fails_loudly(tmp_path):
    result = configure(tmp_path, {"AFFECTVLM_CUDA": "ON", "CUDACXX": str(tmp_path / "no-such-nvcc"),
                                  "PATH": "/usr/bin:/bin"})
    assert result.returncode != 0
    assert "AFFECTVLM_CUDA=ON but no CUDA compiler was found" in result.stdout + result.stderr


def test_cuda_auto_without_a_cuda_compiler_builds_cpu_only(tmp_path):
    result = configure(tmp_path, {"AFFECTVLM_CUDA": "AUTO", "CUDACXX": str(tmp_path / "no-such-nvcc"),
                                  "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no CUDA compiler found, building the CPU kernels only" in result.stdout


def test_an_unknown_cuda_option_is_rejected(tmp_path):
    result = configure(tmp_path, {}, "-DAFFECTVLM_CUDA=maybe")
    assert result.returncode != 0
    assert "AFFECTVLM_CUDA must be AUTO, ON or OFF, not 'MAYBE'" in result.stderr


def test_cuda_off_builds_a_cpu_only_module_that_imports(tmp_path):
    build = tmp_path / "build"
    configured = configure(build, {"AFFECTVLM_CUDA": "OFF"})
    assert configured.returncode == 0, configured.stdout + configured.stderr
    assert "building CUDA kernels" not in configured.stdout
    built = subprocess.run(["cmake", "--build", str(build)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout + built.stderr

    result = import_built_module(build, """
import numpy
info = C.cuda_runtime_info()
assert info["kernels_built"] is False and info["device_count"] == 0, info
assert "built without CUDA kernels" in info["reason"], info
assert C.describe(numpy.zeros((2, 3), numpy.float32))["shape"] == (2, 3)
print("cpu-only module ok")
""")
    assert result.returncode == 0, result.stderr
    assert "cpu-only module ok" in result.stdout


def import_built_module(build_dir, checks):
    """Runs `checks` in a fresh interpreter, with the module built in build_dir imported as C."""
    (module,) = build_dir.glob("affectvlm_kernels*.so")
    script = f"""
import importlib.util
spec = importlib.util.spec_from_file_location("affectvlm_kernels", {str(module)!r})
C = importlib.util.module_from_spec(spec); spec.loader.exec_module(C)
""" + checks
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)


needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc on PATH")


@needs_nvcc
def test_cuda_architectures_default_to_80_and_90(tmp_path):
    result = configure(tmp_path, {"AFFECTVLM_CUDA": "ON"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "building CUDA kernels for architectures 80;90" in result.stdout


@needs_nvcc
def test_cuda_architectures_follow_the_user(tmp_path):
    result = configure(tmp_path, {"AFFECTVLM_CUDA": "ON", "CUDAARCHS": "90"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "building CUDA kernels for architectures 90\n" in result.stdout


@needs_nvcc
def test_a_cuda_build_for_gpus_older_than_sm_80_compiles(tmp_path):
    # The contrastive loss's CUDA kernels need sm_80 and only trap in older architectures' code; the rasteriser's
    # run on any. About 16 s on 2 cores.
    build = tmp_path / "build"
    configured = configure(build, {"AFFECTVLM_CUDA": "ON", "CUDAARCHS": "75"})
    assert configured.returncode == 0, configured.stdout + configured.stderr
    assert "building CUDA kernels for architectures 75\n" in configured.stdout
    built = subprocess.run(["cmake", "--build", str(build)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout + built.stderr

    result = import_built_module(build, """
assert C.cuda_runtime_info()["kernels_built"] is True
print("sm_75 module ok")
""")
    assert result.returncode == 0, result.stderr
    assert "sm_75 module ok" in result.stdout
