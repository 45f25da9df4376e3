"""Large CPU buffers that are cheap to fill for the first time.

A fresh tensor of a few hundred megabytes is faulted in one 4 KiB page at a time as it is first written; on
the machines measured (benchmarks/RESULTS.md) that costs five times the writing itself. Asking the kernel for
transparent huge pages before the first write (as the rasteriser does for its outputs) makes the faults 512
times fewer. Advice only: where it is refused or the system is not Linux, nothing changes.
"""

from __future__ import annotations

import ctypes
import sys

import torch

_HUGE_PAGE = 2 << 20
_MADV_HUGEPAGE = 14
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


def empty(shape, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """torch.empty(shape), with huge pages asked for when it is a large CPU tensor."""
    tensor = torch.empty(shape, dtype=dtype, device=device)
    if tensor.device.type == "cpu" and _LIBC is not None:
        start = tensor.data_ptr()
        begin = (start + _HUGE_PAGE - 1) & ~(_HUGE_PAGE - 1)
        end = (start + tensor.numel() * tensor.element_size()) & ~(_HUGE_PAGE - 1)
        if end > begin:
            _LIBC.madvise(ctypes.c_void_p(begin), ctypes.c_size_t(end - begin), _MADV_HUGEPAGE)
    return tensor


def take_rows(values: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """values[rows], copied into a buffer from `empty`."""
    return torch.index_select(values, 0, rows, out=empty((len(rows), *values.shape[1:]), values.dtype, values.device))
