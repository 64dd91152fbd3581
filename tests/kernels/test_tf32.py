"""TF32 on CPU: the interpreter emulates a GPU's TF32 dots (tests/conftest.py), and _dot_2xtf32, the
half backward's tensor-core product, keeps ~float32 precision under that emulation."""
import os

import pytest
import torch
import triton
import triton.language as tl

from vtreid.kernels.pairwise_distance import _dot_2xtf32

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="the interpreter's emulation")


@triton.jit
def _dot_kernel(A, B, OUT, MODE: tl.constexpr, S: tl.constexpr):
    r = tl.arange(0, S)
    a = tl.load(A + r[:, None] * S + r[None, :])
    b = tl.load(B + r[:, None] * S + r[None, :]).to(tl.float32)
    acc = tl.zeros((S, S), dtype=tl.float32)
    if MODE == 0:
        acc = tl.dot(a, b, acc, input_precision="ieee")
    elif MODE == 1:
        acc = tl.dot(a, b, acc, input_precision="tf32")
    else:
        acc = _dot_2xtf32(a, b, acc)
    tl.store(OUT + r[:, None] * S + r[None, :], acc)


def product(a, b, mode):
    out = torch.empty(a.shape[0], b.shape[1])
    _dot_kernel[(1,)](a, b, out, MODE=mode, S=a.shape[0])
    return out


def relative_error(a, b, mode):
    exact = a.double() @ b.double()
    return ((product(a, b, mode).double() - exact).abs().max() / exact.abs().max()).item()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_two_tf32_products_keep_float32_precision_where_one_loses_it(dtype):
    a = torch.randn(32, 32) * torch.logspace(-3, 3, 32)[:, None]   # B's coefficients span many magnitudes
    b = torch.randn(32, 32).to(dtype)
    assert relative_error(a, b, 0) < 1e-6
    assert relative_error(a, b, 1) > 1e-4          # the emulation is on: one TF32 product keeps 10 bits
    assert relative_error(a, b, 2) < 4e-6          # hi + lo: ~2^-20 per product


def test_tf32_reads_ten_mantissa_bits_and_keeps_inf_and_nan():
    a = torch.zeros(16, 16)
    a[0, 0] = 1 + 2.0 ** -10 + 2.0 ** -12          # the 2^-12 bit is below TF32's last
    a[1, 0], a[2, 0] = float("inf"), float("nan")
    b = torch.zeros(16, 16, dtype=torch.float16)
    b[0, 0] = 1
    assert product(a, b, 1)[0, 0].item() == 1 + 2.0 ** -10
    assert product(a, b, 2)[0, 0].item() == 1 + 2.0 ** -10 + 2.0 ** -12
    for mode in (1, 2):
        out = product(a, b, mode)
        assert out[1, 0].item() == float("inf") and out[2, 0].isnan()
