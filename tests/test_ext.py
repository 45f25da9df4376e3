"""`cuda_status()`: an answer on every machine, never an exception."""

import re

import pytest

from affectvlm._ext import CudaStatus, cuda_status, extension


def test_cuda_status_is_consistent():
    status = cuda_status()
    assert isinstance(status, CudaStatus)
    if status.usable:
        assert status.kernels_built and status.gpu_count > 0 and status.reason is None
    else:
        assert status.reason and "\n" not in status.reason
    if status.kernels_built:
        assert re.fullmatch(r"\d+\.\d+", status.runtime_version)
    else:
        assert status.runtime_version is None and not status.usable


def test_cuda_status_matches_what_torch_sees():
    import torch

    if not torch.cuda.is_available():
        assert not cuda_status().usable


def test_runtime_info_from_the_module_itself():
    info = extension().cuda_runtime_info()
    assert set(info) == {"kernels_built", "runtime_version", "driver_version", "device_count", "reason"}
    assert (info["reason"] == "") == (info["device_count"] > 0)


@pytest.mark.cuda
def test_a_usable_gpu_is_counted():
    import torch

    assert cuda_status().gpu_count == torch.cuda.device_count()
