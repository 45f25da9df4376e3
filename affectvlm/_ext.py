"""The compiled core, `affectvlm._C`, and whether its CUDA kernels can run here.

`cuda_status()` never raises: a machine without a GPU, a driver or even a built extension is an answer.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

from pathlib import Path

try:
    from affectvlm import _C
except ImportError as error:
    _C = None
    _PACKAGE_DIR = Path(__file__).parent
    if (_PACKAGE_DIR.parent / "CMakeLists.txt").exists():
        # Python found the source checkout (the current directory) before the installed package.
        IMPORT_ERROR: str | None = (
            f"affectvlm was imported from its source tree {_PACKAGE_DIR}, which holds no compiled extension; "
            "run from another directory, or install with `pip install --no-build-isolation -e .`"
        )
    else:
        IMPORT_ERROR = f"the compiled extension affectvlm._C could not be imported ({error})"
else:
    IMPORT_ERROR = None


@dataclass(frozen=True)
class CudaStatus:
    kernels_built: bool
    runtime_version: str | None  # the CUDA runtime linked into _C, e.g. "13.0"
    driver_version: str | None  # the installed driver's CUDA version; None without a driver
    gpu_count: int
    reason: str | None  # why no GPU is usable; None when one is

    @property
    def usable(self) -> bool:
        return self.reason is None

    def as_dict(self) -> dict:
        return {**asdict(self), "usable": self.usable}


def _version_text(version: int) -> str | None:
    return f"{version // 1000}.{version % 1000 // 10}" if version else None


def _torch_cuda_problem() -> str | None:
    """Kernels write into tensors that torch allocates, so torch must see the GPU too."""
    try:
        import torch
    except ImportError as error:
        return f"torch cannot be imported ({error})"
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        return f"torch ({build}) sees no usable GPU"
    return None


@functools.lru_cache(maxsize=1)
def cuda_status() -> CudaStatus:
    if _C is None:
        return CudaStatus(False, None, None, 0, IMPORT_ERROR)
    info = _C.cuda_runtime_info()
    reason = info["reason"] or _torch_cuda_problem()
    return CudaStatus(
        kernels_built=info["kernels_built"],
        runtime_version=_version_text(info["runtime_version"]),
        driver_version=_version_text(info["driver_version"]),
        gpu_count=info["device_count"],
        reason=reason,
    )


def extension():
    """The compiled module, or an ImportError that says why it is missing."""
    if _C is None:
        raise ImportError(IMPORT_ERROR)
    return _C
