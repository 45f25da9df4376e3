"""Cost of crossing the tensor boundary, against the DLPack importers of numpy and torch in the same run.

Every kernel call views each argument once, so this per-argument overhead bounds how small a batch can be
before the boundary, not the kernel, sets the speed.
"""

import numpy as np
import pytest
import torch

from affectvlm._ext import extension

C = extension()


@pytest.fixture(params=["numpy", "torch"])
def array(request):
    values = np.random.default_rng(0).standard_normal((512, 3)).astype(np.float32)
    return values if request.param == "numpy" else torch.from_numpy(values)


@pytest.mark.benchmark(group="dlpack-view")
def test_affectvlm_view_with_checks(benchmark, array):
    benchmark(C.describe, array, "vertices", dtype="float32", ndim=2, contiguous=True, device="cpu")


@pytest.mark.benchmark(group="dlpack-view")
def test_peer_numpy_from_dlpack(benchmark, array):
    benchmark(np.from_dlpack, array)


@pytest.mark.benchmark(group="dlpack-view")
def test_peer_torch_from_dlpack(benchmark, array):
    benchmark(torch.from_dlpack, array)
