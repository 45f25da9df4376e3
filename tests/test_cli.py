"""The installed `affectvlm` console script, run as a user runs it."""

import json
import os
import subprocess
import sys
from pathlib import Path

from affectvlm._ext import cuda_status


def run(*args):
    return subprocess.run(["affectvlm", *args], capture_output=True, text=True, timeout=300)


def test_info_json_reports_packages_and_cuda():
    result = run("info", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert {"affectvlm", "python", "torch", "open_clip", "dali", "cuda"} <= set(info)
    assert info["torch"]["installed"] and info["torch"]["error"] is None
    assert info["open_clip"]["installed"]
    assert info["cuda"] == cuda_status().as_dict()


def test_info_text_names_the_cuda_state():
    result = run("info")
    assert result.returncode == 0, result.stderr
    assert "CUDA       kernels" in result.stdout


def test_info_says_which_cpu_code_runs_and_the_environment_can_force_the_baseline():
    default = json.loads(run("info", "--json").stdout)["cpu_code"]
    flags = open("/proc/cpuinfo").read() if sys.platform == "linux" else ""
    has_v3 = all(f" {flag}" in flags for flag in ("avx2", "fma", "bmi2", "movbe"))
    assert default == ("x86-64-v3" if has_v3 else "baseline")
    forced = subprocess.run(["affectvlm", "info"], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "AFFECTVLM_CPU": "baseline"})
    assert "CPU        kernels run baseline (SSE2) code" in forced.stdout


def test_missing_or_unknown_subcommand_is_a_usage_error():
    assert run().returncode == 2
    unknown = run("fly")
    assert unknown.returncode == 2 and "invalid choice: 'fly'" in unknown.stderr


def test_python_dash_m_entry_point(tmp_path):
    result = subprocess.run([sys.executable, "-m", "affectvlm", "--version"], capture_output=True, text=True,
                            cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("affectvlm ")


def test_commands_run_from_the_checkout_use_the_compiled_kernels():
    """`python -m affectvlm` in the checkout's root imports the checkout's package and the installed kernels."""
    root = Path(__file__).resolve().parent.parent
    script = "import affectvlm, affectvlm._ext as e; e.extension(); print(affectvlm.__file__)"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=root)
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).parent == root / "affectvlm"
    info = subprocess.run([sys.executable, "-m", "affectvlm", "info", "--json"], capture_output=True, text=True,
                          cwd=root)
    assert json.loads(info.stdout)["cpu_code"] in ("x86-64-v3", "baseline"), info.stderr
