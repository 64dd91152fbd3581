"""sqrt_rn_selects, the euclidean epilogue's square root, is bitwise the correctly rounded float32 sqrt.

On a GPU it is ptxas's own expansion of sqrt.rn.f32 (MUFU.RSQ seed, one Newton step in two FMAs) with
the slow path as selects: the CUDA case checks every mantissa of both exponent parities ([1, 4), which
covers the whole normal range: scaling by 4 is exact) against float64's sqrt rounded to float32. The interpreter seeds with a
correctly rounded 1 / sqrt, so there it checks the selects, the 2^64 scaling of tiny inputs and the
special values on a sample."""
import pytest
import torch
import triton
import triton.language as tl

from support import DEVICES, require_backend
from vtreid.kernels.pairwise_distance import sqrt_rn_selects

BLOCK = 1024


@triton.jit
def _sqrt_kernel(X, OUT, n, BLOCK: tl.constexpr):
    r = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = r < n
    tl.store(OUT + r, sqrt_rn_selects(tl.load(X + r, mask=mask, other=1.0)), mask=mask)


def _from_bits(bits: torch.Tensor) -> torch.Tensor:
    return bits.to(torch.int32).view(torch.float32)


def inputs(exhaustive: bool) -> torch.Tensor:
    one, four = 0x3F800000, 0x40800000
    step = 1 if exhaustive else 211
    g = torch.Generator().manual_seed(0)
    parts = [
        _from_bits(torch.arange(one, four, step, dtype=torch.int64)),             # every mantissa, both parities
        _from_bits(torch.randint(1, 0x7F800000, (200_000,), generator=g)),        # every exponent
        _from_bits(torch.arange(1, 4096, dtype=torch.int64)),                      # denormals from 2^-149
        _from_bits(torch.arange(0x0D000000 - 2048, 0x0D000000 + 2048, dtype=torch.int64)),  # the 2^-101 edge
        _from_bits(torch.arange(0x7F7FF000, 0x7F800000, dtype=torch.int64)),       # up to the largest float
        torch.tensor([0.0, -0.0, float("inf"), float("-inf"), float("nan"), -1.0, -1e-40, 2.0 ** -126]),
    ]
    return torch.cat(parts)


@triton.jit
def _fma_kernel(A, B, C, OUT):
    tl.store(OUT, tl.fma(tl.load(A), tl.load(B), tl.load(C)))


@pytest.mark.parametrize("device", DEVICES)
def test_fma_is_fused(device):
    """The Newton step below needs tl.fma to round once, as the GPU's FFMA: (1 + 2^-12)^2 - (1 + 2^-11) is
    2^-24 fused, 0 when the product is rounded first (Triton 3.6's interpreter; tests/conftest.py fuses it)."""
    require_backend("triton", device)
    a = torch.tensor([1 + 2.0 ** -12], device=device)
    out = torch.empty_like(a)
    _fma_kernel[(1,)](a, a, torch.tensor([-(1 + 2.0 ** -11)], device=device), out)
    assert out.item() == 2.0 ** -24


@pytest.mark.parametrize("device", DEVICES)
def test_sqrt_rn_selects_is_the_correctly_rounded_sqrt(device):
    require_backend("triton", device)  # CPU tensors need the interpreter (not set where a GPU is)
    x = inputs(exhaustive=device == "cuda").to(device)
    out = torch.empty_like(x)
    _sqrt_kernel[(triton.cdiv(x.numel(), BLOCK),)](x, out, x.numel(), BLOCK=BLOCK)
    # float64's sqrt rounded to float32 is correctly rounded (53 >= 2 * 24 + 2); torch's float32 CPU sqrt
    # is not (SLEEF, 0.5001 ulp: 1760 of this sample differ by one ulp)
    got, want = out.cpu(), torch.sqrt(x.cpu().double()).float()
    nan = want.isnan()
    assert torch.equal(got.isnan(), nan), "NaN exactly for negatives and NaN"
    mismatch = (got.view(torch.int32) != want.view(torch.int32)) & ~nan
    assert not mismatch.any(), (f"{int(mismatch.sum())} of {x.numel()} differ, e.g. sqrt({x.cpu()[mismatch][:4].tolist()}) "
                                f"= {got[mismatch][:4].tolist()}, want {want[mismatch][:4].tolist()}")
