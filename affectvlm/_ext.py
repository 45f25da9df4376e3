"""The compiled core and whether its CUDA kernels can run here.

The kernels are the top-level module `affectvlm_kernels`, installed beside the `affectvlm` package rather than
inside it, so that Python commands run from the source checkout (which import the checkout's `affectvlm`
folder) still find them. Elsewhere the module is called `_C`. `cuda_status()` never raises: a machine without
a GPU, a driver or even a built extension is an answer.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

try:
    import affectvlm_kernels as _C
except ImportError as error:
    _C = None
    IMPORT_ERROR: str | None = (f"the compiled extension affectvlm_kernels could not be imported ({error}); "
                                "install the package with `pip install .`")
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
