"""Test configuration. Runs before anything imports triton.

Without a GPU the Triton kernels run on CPU tensors under the Triton interpreter, so they are really
executed (not skipped) on CI. CUDA cases run wherever a GPU is present.
"""
import os
import zlib

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _seed_per_test(request):
    """Fresh random inputs per test, reproducible from the test's id."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
