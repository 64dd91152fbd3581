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


def _fuse_fma_in_the_interpreter() -> None:
    """A GPU's tl.fma rounds once (FFMA). Triton 3.6's interpreter (the GPU image's Triton) computes
    x * y + z in float32, rounding the product first, so a kernel's Newton step (sqrt_rn_selects) is not the
    GPU's there; 3.9's interpreter fuses. Where it does not, float32 fmas are made fused: the product is exact
    in float64, the sum is rounded to odd there (TwoSum gives its error) and then to float32, which rounds
    correctly since 53 >= 24 + 2 bits."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return
    import numpy as np
    import triton.language as tl
    from triton.runtime.interpreter import InterpreterBuilder, TensorHandle

    def fp32(v):
        return TensorHandle(np.array([v], dtype=np.float32), tl.float32)

    given = InterpreterBuilder.create_fma
    probe = given(None, fp32(1 + 2.0 ** -12), fp32(1 + 2.0 ** -12), fp32(-(1 + 2.0 ** -11)))
    if probe.data[0] == 2.0 ** -24:  # fused already
        return

    def create_fma(self, x, y, z):
        if z.data.dtype != np.float32:
            return given(self, x, y, z)
        a, b, c = (np.asarray(t.data, dtype=np.float64) for t in (x, y, z))
        product = a * b  # exact: 48 bits
        total = product + c
        back = total - product
        error = (product - (total - back)) + (c - back)
        bits = total.view(np.int64)
        inexact = np.isfinite(total) & (error != 0) & ((bits & 1) == 0)
        bits = np.where(inexact, bits + np.where((error > 0) == (total > 0), 1, -1), bits)
        return TensorHandle(bits.view(np.float64).astype(np.float32), z.dtype.scalar)

    InterpreterBuilder.create_fma = create_fma


_fuse_fma_in_the_interpreter()


def pytest_runtest_logreport(report):
    """With VTREID_FAILURE_LOG set, append each failure's traceback to that file as it happens: a run cut
    at its time limit (scripts/gpu_check.sh on a lent GPU) never prints its summary, and the first H100
    run lost the tracebacks of its three failures that way. Under pytest-xdist the controller writes."""
    path = os.environ.get("VTREID_FAILURE_LOG")
    if not path or not report.failed or os.environ.get("PYTEST_XDIST_WORKER"):
        return
    with open(path, "a", encoding="utf-8") as log:
        log.write(f"=== {report.nodeid} ({report.when})\n{report.longreprtext}\n\n")
