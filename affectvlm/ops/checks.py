"""Argument checks the op wrappers share, made before arrays reach the compiled kernels (which can read
the values of CPU arrays only, so index and label ranges of GPU tensors are checked here)."""

from __future__ import annotations

import torch


def require_tensor(value, name: str) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")


def value_range(values: torch.Tensor) -> tuple[int, int]:
    """The smallest and largest of non-empty integer `values`. CPU tensors go through numpy: torch's
    reductions over small CPU tensors cost milliseconds when the cores are shared."""
    if values.device.type == "cpu":
        array = values.detach().numpy()
        return int(array.min()), int(array.max())
    low, high = torch.aminmax(values)
    return int(low), int(high)
