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


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """vtreid's cache (synthetic data, verified-listing stamps) in the session's temporary folder, never
    the user's ~/.cache/vtreid; tests that need their own set VTREID_CACHE themselves."""
    with pytest.MonkeyPatch.context() as env:
        if "VTREID_CACHE" not in os.environ:
            env.setenv("VTREID_CACHE", str(tmp_path_factory.getbasetemp() / "vtreid-cache"))
        yield


@pytest.fixture(autouse=True)
def _seed_per_test(request):
    """Fresh random inputs per test, reproducible from the test's id."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


def _emulate_tf32_dots_in_the_interpreter() -> None:
    """The interpreter multiplies float32 tl.dot operands exactly; a GPU runs input_precision="tf32" (and
    Triton's default) on tensor cores, which read 10 of float32's 23 mantissa bits. Truncate float32
    operands of such dots to those bits (the worst case: the hardware ignores the low 13 bits) so that the
    tests see the precision the kernels have on a GPU. Half operands are exact in TF32 and unchanged."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return
    import numpy as np
    from triton._C.libtriton import ir
    from triton.runtime.interpreter import InterpreterBuilder, TensorHandle

    exact_dot = InterpreterBuilder.create_dot
    tf32 = ir.INPUT_PRECISION.TF32

    def truncate(handle):
        if handle.data.dtype != np.float32:
            return handle
        bits = handle.data.view(np.uint32)
        special = (bits & np.uint32(0x7F800000)) == np.uint32(0x7F800000)   # inf and NaN stay as they are
        data = np.where(special, bits, bits & np.uint32(0xFFFFE000)).view(np.float32)
        return TensorHandle(data, handle.dtype)

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        if input_precision == tf32:
            a, b = truncate(a), truncate(b)
        return exact_dot(self, a, b, d, input_precision, max_num_imprecise_acc)

    InterpreterBuilder.create_dot = create_dot


_emulate_tf32_dots_in_the_interpreter()


def pytest_runtest_logreport(report):
    """With VTREID_FAILURE_LOG set, append each failure's traceback to that file as it happens: a run cut
    at its time limit (scripts/gpu_check.sh on a lent GPU) never prints its summary, and the first H100
    run lost the tracebacks of its three failures that way. Under pytest-xdist the controller writes."""
    path = os.environ.get("VTREID_FAILURE_LOG")
    if not path or not report.failed or os.environ.get("PYTEST_XDIST_WORKER"):
        return
    with open(path, "a", encoding="utf-8") as log:
        log.write(f"=== {report.nodeid} ({report.when})\n{report.longreprtext}\n\n")
