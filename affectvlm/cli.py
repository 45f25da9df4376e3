"""The `affectvlm` command line: one subcommand per stage of the pipeline."""

from __future__ import annotations

import argparse
import json
import platform
import sys
from importlib import import_module, metadata

import affectvlm
from affectvlm._ext import cuda_status

# Subcommands that later releases fill in; until then they say so instead of failing obscurely.
PLANNED = {
    "generate": "write the built-in synthetic 3D/4D face dataset",
    "render": "render a mesh dataset into multiview image shards",
    "train": "train AffectVLM (single process; use torchrun for several GPUs)",
    "evaluate": "evaluate a checkpoint with subject-independent folds",
    "predict": "predict the expression of mesh files",
    "app": "start the Streamlit demo",
}


def _package_status(distribution: str, module: str) -> dict:
    """Installed version of a dependency and whether it imports."""
    try:
        version = metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return {"installed": False, "version": None, "error": None}
    try:
        import_module(module)
    except Exception as error:  # any import failure is worth reporting, not raising
        return {"installed": True, "version": version, "error": f"{type(error).__name__}: {error}"}
    return {"installed": True, "version": version, "error": None}


def collect_info() -> dict:
    torch_info = _package_status("torch", "torch")
    if torch_info["error"] is None and torch_info["installed"]:
        import torch

        torch_info["cuda_build"] = torch.version.cuda
        torch_info["cuda_available"] = torch.cuda.is_available()
    return {
        "affectvlm": affectvlm.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch_info,
        "open_clip": _package_status("open_clip_torch", "open_clip"),
        "dali": _package_status("nvidia-dali-cuda130", "nvidia.dali"),
        "cuda": cuda_status().as_dict(),
    }


def _print_info(info: dict) -> None:
    def package_line(status: dict) -> str:
        if not status["installed"]:
            return "not installed"
        return status["version"] + (f" (import fails: {status['error']})" if status["error"] else "")

    cuda = info["cuda"]
    print(f"affectvlm  {info['affectvlm']}  (Python {info['python']}, {info['platform']})")
    print(f"torch      {package_line(info['torch'])}")
    print(f"open_clip  {package_line(info['open_clip'])}")
    print(f"DALI       {package_line(info['dali'])}")
    built = f"built for CUDA {cuda['runtime_version']}" if cuda["kernels_built"] else "not built"
    usable = f"{cuda['gpu_count']} usable GPU(s)" if cuda["usable"] else f"no usable GPU: {cuda['reason']}"
    print(f"CUDA       kernels {built}; {usable}")


def run_info(args: argparse.Namespace) -> int:
    info = collect_info()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        _print_info(info)
    return 0


def run_planned(args: argparse.Namespace) -> int:
    print(f"affectvlm {args.command}: not available yet in affectvlm {affectvlm.__version__}", file=sys.stderr)
    return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="affectvlm", description=__doc__)
    parser.add_argument("--version", action="version", version=f"affectvlm {affectvlm.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = commands.add_parser("info", help="versions of the package and its dependencies, and CUDA status")
    info.add_argument("--json", action="store_true", help="print machine-readable JSON")
    info.set_defaults(handler=run_info)

    for name, help_text in PLANNED.items():
        planned = commands.add_parser(name, help=f"{help_text} (not available yet)")
        planned.set_defaults(handler=run_planned)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and args.command not in PLANNED:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args.handler(args)
