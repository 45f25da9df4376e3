"""For every pytest run of the checkout (tests/ and benchmarks/): items marked `cuda` are skipped, with the
reason, where no GPU is usable."""

import pytest

from affectvlm._ext import cuda_status


def pytest_collection_modifyitems(config, items):
    status = cuda_status()
    if status.usable:
        return
    skip = pytest.mark.skip(reason=f"CUDA test skipped: {status.reason}")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
