"""Every CUDA launcher of csrc/cuda, executed on the CPU by the emulation layer (csrc/emu), against
`reference` on the awkward inputs of DESIGN.md: N = 1, 2, 3, 47, 130; D = 1, 7, 129; labels with no
positive or negative; a class missing a modality; duplicate rows; zero vectors; modality values other
than 0 / 1; grid limits and D = 0.

Run under AddressSanitizer (an out-of-bounds read or write aborts the run, as compute-sanitizer would
fail it): tests/cuda_emu/test_cuda_emu.py and .ci/run start

    LD_PRELOAD="$(g++ -print-file-name=libasan.so) $(g++ -print-file-name=libstdc++.so)" ASAN_OPTIONS=detect_leaks=0 \
        python -m pytest tests/cuda_emu/emu_cases.py

Not collected by a plain `pytest tests` (the file name has no test_ prefix): the library must be loaded
into a process whose first library is the ASan runtime.
"""
from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build  # noqa: E402

from tests.support import (TOLERANCES, assert_half_gradient_within_rounding, assert_matches,  # noqa: E402
                           awkward_labels, close_pairs, side_gradient_float64)
from vtreid.ops import reference  # noqa: E402
from vtreid.ops.hetero_center import class_slots  # noqa: E402

ASAN = os.environ.get("VTREID_EMU_ASAN", "1") == "1"
# VTREID_EMU_LIB: a library built elsewhere (e.g. from mutated kernels, to check that these tests catch bugs).
LIB = ctypes.CDLL(os.environ.get("VTREID_EMU_LIB") or str(build.build(asan=ASAN)))
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}
METRIC_CODES = {"euclidean": 0, "sqeuclidean": 1, "cosine": 2}
RULES = {"any": 0, "cross": 1, "same": 2}
I64 = ctypes.c_int64
SIZES = [(1, 1, 1), (2, 3, 7), (3, 2, 129), (47, 130, 7), (130, 47, 129)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def _p(t):
    return ctypes.c_void_p(t.data_ptr()) if t is not None else ctypes.c_void_p(0)


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _features(n, d, dtype, gen):
    x = torch.randn(n, d, generator=gen)
    if n >= 3:
        x[1] = x[0]    # a duplicate: distance exactly 0
        x[-1] = 0.0    # a zero vector
    return x.to(dtype).contiguous()


def _check(rc, what):
    assert rc == 0, f"{what}: launcher returned CUDA error {rc}"


# --- pairwise_distance ------------------------------------------------------------------------------

@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n,m,d", SIZES)
def test_pairwise_distance(n, m, d, dtype, metric):
    gen = torch.Generator().manual_seed(n * 1000 + m * 10 + d)
    _check_pairwise(_features(n, d, dtype, gen), _features(m, d, dtype, gen), metric, gen)


# The half / bfloat16 forward has three kernels (csrc/cuda/pairwise_distance.cu): tensor cores with a 64 x 64
# tile (fewer 128 x 128 tiles than SMs), with a 128 x 128 tile, and SIMT without tensor cores. The emulated device
# (SM count, compute capability) picks each. Sizes: not multiples of 16 (zero padding), D a multiple of 8
# (16-byte loads) or not, several 32-feature stages (the double buffer), more than 8 row tiles (the raster
# groups' tail), several column tiles.
TC_SIZES = [(1, 1, 1), (7, 15, 17), (15, 7, 16), (17, 129, 15), (129, 17, 129), (130, 65, 40), (577, 65, 7),
            (3, 300, 64)]
TC_KERNELS = {"tc64": (132, 9), "tc128": (1, 8), "simt": (132, 6)}
DEVICE = {"sms": 132}  # the SM count the pairwise launchers are given (the emulated device's)


def _set_device(sms, cc_major):
    LIB.emu_set_device(sms, cc_major)
    DEVICE["sms"] = sms


@pytest.fixture
def emulated_device(request):
    _set_device(*TC_KERNELS[request.param])
    yield request.param
    _set_device(132, 9)


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("emulated_device", list(TC_KERNELS), indirect=True)
@pytest.mark.parametrize("n,m,d", TC_SIZES)
def test_pairwise_distance_half_kernels(n, m, d, emulated_device, dtype, metric):
    gen = torch.Generator().manual_seed(n * 1000 + m * 10 + d)
    x, y = _features(n, d, dtype, gen), _features(m, d, dtype, gen)
    if n >= 6:
        x[2] = x[3]          # a tie: two rows of x equally far from every row of y
        x[4] = 2 * x[0]      # parallel to x[0] (cosine distance 0 up to rounding)
    if m >= 2:
        y[0] = x[0]          # the same row in x and y: distance exactly 0
    # The backward: TF32 tensor cores on the sm_90 device, SIMT on the sm_60 one; the sm_80 one would run the
    # tensor-core kernel again with 64-row tiles (the bitwise test checks that tiles do not change results).
    _check_pairwise(x.contiguous(), y.contiguous(), metric, gen, backward=emulated_device != "tc128")


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
@pytest.mark.parametrize("emulated_device", list(TC_KERNELS), indirect=True)
def test_pairwise_distance_half_nan_inf_propagate(emulated_device, metric):
    gen = torch.Generator().manual_seed(5)
    x, y = _features(20, 33, torch.float16, gen), _features(9, 33, torch.float16, gen)
    x[3, 5] = float("nan")
    x[6, 32] = float("inf")
    y[2, 0] = float("-inf")
    dist = _pairwise_fwd(x, y, metric)[0]
    want = reference.distance_matrix(x, y, metric).to(torch.float16)
    assert torch.equal(dist.isnan(), want.isnan()) and torch.equal(dist.isinf(), want.isinf())
    assert dist[3].isnan().all() and not dist[:, 2].isfinite().any() and not dist[6].isfinite().any()
    assert_matches(dist, want, torch.float16, "dist")


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("emulated_device", list(TC_KERNELS), indirect=True)
def test_pairwise_backward_half_close_pairs(emulated_device, dtype, metric):
    """Each row of x has a near twin in y (distance ~0.1 against norms ~8): the coefficients B_ij = g / d
    are large and grad_x = a x - B y cancels them. B must enter the product at float32 precision, as in the
    row sums a: the TF32 kernels split it into two TF32 parts; one TF32 product (10 bits of B) leaves an
    error of ~2^-11 |B| |y|, here 14-41 times the bound (checked by dropping the low part); SIMT passes."""
    gen = torch.Generator().manual_seed(17)
    x, y = close_pairs(dtype, gen)
    n, m = x.shape[0], y.shape[0]
    acc = torch.float32
    dist = reference.distance_matrix(x.double(), y.double(), metric).to(acc)   # what the forward would pass
    grad = torch.randn(n, m, generator=gen, dtype=acc)
    xsq, ysq = (x.double() ** 2).sum(1).to(acc), (y.double() ** 2).sum(1).to(acc)
    gx = torch.empty_like(x)
    _pairwise_bwd_side(grad, dist, x, y, xsq, ysq, gx, n, m, (m, 1), metric)
    assert_half_gradient_within_rounding(gx, *side_gradient_float64(grad, dist, x, y, metric))
    assert (dist[:n].diagonal() < 0.25).all()


LIB.emu_pairwise_distance_fwd_workspace_bytes.restype = ctypes.c_int64


def _garbage_workspace(nbytes):
    """A launcher's scratch of nbytes (None for 0), filled with bytes 0xFF, NaN in float32 and float64: the
    kernels must not read what they did not write."""
    return torch.full((nbytes,), 0xFF, dtype=torch.uint8) if nbytes else None


def _pairwise_fwd(x, y, metric, sms=None):
    acc = _acc(x.dtype)
    n, m, d = x.shape[0], y.shape[0], x.shape[1]
    sms = DEVICE["sms"] if sms is None else sms
    code = DTYPE_CODES[x.dtype]
    dist = torch.empty(n, m, dtype=x.dtype)
    xsq, ysq = torch.zeros(n, dtype=acc), torch.zeros(m, dtype=acc)
    nbytes = LIB.emu_pairwise_distance_fwd_workspace_bytes(code, I64(n), I64(m), I64(d), ctypes.c_int(sms))
    workspace = _garbage_workspace(nbytes)
    _check(LIB.emu_pairwise_distance_fwd(code, _p(x), _p(y), _p(dist), _p(xsq), _p(ysq), _p(workspace), I64(n), I64(m),
                                         I64(d), METRIC_CODES[metric], ctypes.c_int(sms)),
           "pairwise_distance_fwd")
    return dist, xsq, ysq


def _pairwise_bwd_side(grad, d_acc, a, b, asq, bsq, out, rows, k, strides, metric, sms=None):
    sms = DEVICE["sms"] if sms is None else sms
    _check(LIB.emu_pairwise_distance_bwd_side(DTYPE_CODES[a.dtype], _p(grad), _p(d_acc), _p(a), _p(b), _p(asq),
                                              _p(bsq), _p(out), I64(rows), I64(k), I64(a.shape[1]), I64(strides[0]),
                                              I64(strides[1]), I64(strides[0]), I64(strides[1]),
                                              METRIC_CODES[metric], ctypes.c_int(sms)), "pairwise_distance_bwd_side")


def _check_pairwise(x, y, metric, gen, backward=True, sms=None):
    """Forward (distances and norms) and both backward sides of the emulated kernels against reference."""
    dtype, (n, d), m = x.dtype, x.shape, y.shape[0]
    acc = _acc(dtype)
    dist, xsq, ysq = _pairwise_fwd(x, y, metric, sms)
    xr, yr = x.to(acc).requires_grad_(), y.to(acc).requires_grad_()
    want = reference.distance_matrix(xr, yr, metric)
    assert_matches(dist, want.to(dtype), dtype, "dist")
    assert_matches(xsq, (x.to(acc) ** 2).sum(1), dtype, "xsq")
    assert_matches(ysq, (y.to(acc) ** 2).sum(1), dtype, "ysq")
    if not backward:
        return

    grad = torch.randn(n, m, generator=gen, dtype=acc)
    want.backward(grad)
    d_acc = dist.to(acc)  # the backward reads the forward's distances, as the glue passes them
    gx, gy = torch.empty_like(x), torch.empty_like(y)
    for out, a, b, asq, bsq, rows, k, strides in ((gx, x, y, xsq, ysq, n, m, (m, 1)), (gy, y, x, ysq, xsq, m, n, (1, m))):
        _pairwise_bwd_side(grad, d_acc, a, b, asq, bsq, out, rows, k, strides, metric, sms)
    # The size of the terms each gradient row adds up (its rounding error scales with it): sum_j |g_ij| times
    # |x| + |y| (euclidean: / d, which reads the rounded d), cosine: times 3 / (n_i min_j n_j), n = max(|row|, eps).
    big = x.to(acc).abs().max() + y.to(acc).abs().max() + 1
    sx, sy = grad.abs().sum(1, keepdim=True) * big, grad.abs().sum(0)[:, None] * big
    if metric == "cosine":
        nx, ny = xsq.sqrt().clamp_min(1e-12), ysq.sqrt().clamp_min(1e-12)
        sx = grad.abs().sum(1, keepdim=True) * 3 / (nx[:, None] * ny.min())
        sy = grad.abs().sum(0)[:, None] * 3 / (ny[:, None] * nx.min())
    assert_matches(gx, xr.grad.to(dtype), dtype, "grad x", scale=sx)
    assert_matches(gy, yr.grad.to(dtype), dtype, "grad y", scale=sy)


# --- pairwise_distance: filling the SMs at small N x M (split-K forward, short backward tiles) -----------

PAIR_TRAIN = (256, 256, 2048)  # the training shape N = M, D


def _pair_fwd_grid(dtype, n, m, d, sms, cc_major=9):
    out = (ctypes.c_int64 * 7)()
    LIB.emu_pairwise_distance_fwd_grid(DTYPE_CODES[dtype], I64(n), I64(m), I64(d), ctypes.c_int(sms),
                                       ctypes.c_int(cc_major), out)
    return dict(zip(("kernel", "tile", "tiles", "splits", "blocks", "threads", "launches"), out))


def _pair_bwd_grid(n, d, sms, dtype=torch.float32, cc_major=9):
    out = (ctypes.c_int64 * 4)()
    LIB.emu_pairwise_distance_bwd_grid(DTYPE_CODES[dtype], I64(n), I64(d), ctypes.c_int(sms), ctypes.c_int(cc_major),
                                       out)
    return dict(zip(("tile_rows", "blocks", "threads", "tensor_cores"), out))


@pytest.mark.parametrize("cc_major", [9, 8, 7, 6])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_pairwise_grid_fills_the_sms_at_the_training_shape(dtype, cc_major):
    """At N = M = 256, D = 2048 both launches give a 132-SM GPU at least one block per SM (one full wave)."""
    n, m, d = PAIR_TRAIN
    fwd = _pair_fwd_grid(dtype, n, m, d, WAVE_SMS, cc_major)
    assert fwd["blocks"] >= WAVE_SMS and fwd["blocks"] == fwd["tiles"] * fwd["splits"]
    assert fwd["splits"] > 1 and fwd["launches"] == 2
    tc = dtype in (torch.float16, torch.bfloat16) and cc_major >= (8 if dtype == torch.bfloat16 else 7)
    assert fwd["kernel"] == (1 if tc else 0)
    nbytes = LIB.emu_pairwise_distance_fwd_workspace_bytes(DTYPE_CODES[dtype], I64(n), I64(m), I64(d),
                                                           ctypes.c_int(WAVE_SMS))
    assert nbytes == fwd["splits"] * (n * m + n + m) * (8 if dtype == torch.float64 else 4)
    for rows in (n, m):  # the x side and the y side
        bwd = _pair_bwd_grid(rows, d, WAVE_SMS, dtype, cc_major)
        assert bwd["blocks"] >= WAVE_SMS
        assert bwd["tensor_cores"] == (dtype in (torch.float16, torch.bfloat16) and cc_major >= 8)  # TF32: sm_80


def test_pairwise_grid_large_sizes_unchanged():
    """Problems with a full wave of tiles keep one launch of 64 x 64 (or 128 x 128 tensor-core) tiles."""
    assert _pair_fwd_grid(torch.float32, 1024, 1024, 2048, WAVE_SMS) == dict(
        kernel=0, tile=64, tiles=256, splits=1, blocks=256, threads=256, launches=1)
    assert _pair_fwd_grid(torch.float16, 2048, 2048, 2048, WAVE_SMS) == dict(
        kernel=2, tile=128, tiles=256, splits=1, blocks=256, threads=256, launches=1)
    assert _pair_fwd_grid(torch.float32, 256, 256, 7, WAVE_SMS)["splits"] == 1  # one feature granule
    assert _pair_fwd_grid(torch.float32, 256, 256, 129, WAVE_SMS)["splits"] == 3  # at most one split per granule
    assert LIB.emu_pairwise_distance_fwd_workspace_bytes(0, I64(1024), I64(1024), I64(2048), WAVE_SMS) == 0
    assert _pair_bwd_grid(1024, 2048, WAVE_SMS) == dict(tile_rows=64, blocks=512, threads=256, tensor_cores=0)
    assert _pair_bwd_grid(256, 512, WAVE_SMS) == dict(tile_rows=16, blocks=128, threads=256, tensor_cores=0)


# (n, m, d, sms): sizes with several splits, uneven splits and splits shorter than a tensor-core stage pair;
# sms = 132 (the training shape), and more SMs than tiles x granules (one split per granule).
SPLIT_SIZES = [(1, 1, 129, 132), (7, 17, 129, 132), (17, 7, 200, 132), (129, 1, 17, 132), (1, 256, 2048, 132),
               (256, 256, 2048, 132), (129, 129, 256, 1000), (7, 7, 130, 5)]
# Every size x dtype x metric, except that the training shape runs euclidean in float32 and float16 only:
# about a minute each under ASan (float16 longer: its backward runs the emulated TF32 tensor cores), and the
# other metrics, bfloat16 (the same templates as float16) and float64 take the same paths at the smaller sizes.
SPLIT_CASES = [(*size, dtype, metric) for size in SPLIT_SIZES for dtype in DTYPES
               for metric in ("euclidean", "sqeuclidean", "cosine")
               if size[:3] != PAIR_TRAIN or (metric == "euclidean" and dtype in (torch.float32, torch.float16))]


@pytest.mark.parametrize("n,m,d,sms,dtype,metric", SPLIT_CASES, ids=str)
def test_pairwise_split_k(n, m, d, sms, dtype, metric):
    """The split-K forward (and the short-tile backward) against reference, ties, zero rows, parallel rows."""
    gen = torch.Generator().manual_seed(n * 1000 + m * 10 + d)
    x, y = _features(n, d, dtype, gen), _features(m, d, dtype, gen)
    if n >= 6:
        x[2] = x[3]
        x[4] = 2 * x[0]
    if m >= 2:
        y[0] = x[0]
    _check_pairwise(x.contiguous(), y.contiguous(), metric, gen, sms=sms)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_pairwise_split_k_nan_inf_propagate(dtype):
    gen = torch.Generator().manual_seed(7)
    x, y = _features(20, 300, dtype, gen), _features(9, 300, dtype, gen)
    x[3, 5] = float("nan")      # in the first split
    x[6, 290] = float("inf")    # in the last one
    y[2, 100] = float("-inf")
    assert _pair_fwd_grid(dtype, 20, 9, 300, WAVE_SMS)["splits"] == 5
    for metric in METRIC_CODES:
        dist = _pairwise_fwd(x, y, metric, WAVE_SMS)[0]
        want = reference.distance_matrix(x.to(_acc(dtype)), y.to(_acc(dtype)), metric).to(dtype)
        assert torch.equal(dist.isnan(), want.isnan()) and torch.equal(dist.isinf(), want.isinf())
        assert dist[3].isnan().all() and not dist[:, 2].isfinite().any() and not dist[6].isfinite().any()
        assert_matches(dist, want, dtype, "dist")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_pairwise_split_k_bitwise_reproducible(dtype):
    """Two runs of the split forward and the short-tile backward give the same bits (no atomics); the backward
    does not depend on the SM count at all."""
    gen = torch.Generator().manual_seed(11)
    n, m, d = 40, 70, 1000
    x, y = _features(n, d, dtype, gen), _features(m, d, dtype, gen)
    assert _pair_fwd_grid(dtype, n, m, d, WAVE_SMS)["splits"] > 1
    runs = [_pairwise_fwd(x, y, "euclidean", WAVE_SMS) for _ in range(2)]
    for a, b in zip(*runs):
        assert torch.equal(a.view(torch.uint8), b.view(torch.uint8))
    dist, xsq, ysq = runs[0]
    acc = _acc(dtype)
    grad = torch.randn(n, m, generator=gen, dtype=acc)
    grads = []
    for sms in (WAVE_SMS, WAVE_SMS, 1):  # tiles of 16 rows twice, then of 64 rows
        gx = torch.empty_like(x)
        _pairwise_bwd_side(grad, dist.to(acc), x, y, xsq, ysq, gx, n, m, (m, 1), "euclidean", sms)
        grads.append(gx.view(torch.uint8))
    assert _pair_bwd_grid(n, d, WAVE_SMS)["tile_rows"] == 16 and _pair_bwd_grid(n, d, 1)["tile_rows"] == 64
    assert torch.equal(grads[0], grads[1]) and torch.equal(grads[0], grads[2])


# --- the emulation itself: nvcuda::wmma (csrc/emu/include/mma.h) -----------------------------------------

WMMA_LD = 24  # elements per row of every matrix of the self-test kernel (csrc/emu/wmma_selftest.h)


def _tile(buf, col_major, rows=16, cols=16):
    """The rows x cols matrix a wmma call reads from (or writes to) buf [16, WMMA_LD] with that layout."""
    return buf[:cols, :rows].T if col_major else buf[:rows, :cols]


def _tf32(t, rounded):
    """float32 as the tensor cores read it: the low 13 mantissa bits dropped, after __float_to_tf32's rounding
    to nearest (ties away from zero) when rounded."""
    bits = t.view(torch.int32)
    if rounded:
        bits = bits + 0x1000
    return (bits & -0x2000).view(torch.float32)


def _wmma_run(dtype, a_col, b_col, c_col, d_col, sync, seed, round_tf32=False):
    gen = torch.Generator().manual_seed(seed)
    a, b = (torch.randn(16, WMMA_LD, generator=gen).to(dtype) for _ in range(2))
    c = torch.randn(16, WMMA_LD, generator=gen)
    d = torch.full((2, 16, WMMA_LD), float("nan"))
    _check(LIB.emu_wmma_selftest(DTYPE_CODES[dtype], a_col, b_col, _p(a), _p(b), _p(c), _p(d), c_col, d_col, sync,
                                 int(round_tf32)), "wmma self-test")
    k = 8 if dtype == torch.float32 else 16
    ta, tb = _tile(a, a_col, 16, k), _tile(b, b_col, k, 16)
    if dtype == torch.float32:
        ta, tb = _tf32(ta.contiguous(), round_tf32), _tf32(tb.contiguous(), round_tf32)
    want = 2 * (ta.double() @ tb.double()) + _tile(c, c_col).double()
    return d, want


WMMA_DTYPES = [torch.float16, torch.bfloat16, torch.float32]  # float32: TF32 operands, m16n16k8


@pytest.mark.parametrize("dtype", WMMA_DTYPES, ids=str)
@pytest.mark.parametrize("layouts", [(a, b, c, d) for a in (0, 1) for b in (0, 1) for c in (0, 1) for d in (0, 1)],
                         ids=lambda t: "".join("rc"[v] for v in t))
def test_wmma_emulation(dtype, layouts):
    """D = 2 A B + C through load / mma / elementwise x[] / store, every layout, both warps of the block; the
    padding of D (outside the 16 x 16 tile) stays untouched. TF32 operands are read truncated to 10 mantissa
    bits (or rounded by __float_to_tf32 first): products of those are exact in float."""
    for round_tf32 in ((False, True) if dtype == torch.float32 else (False,)):
        d, want = _wmma_run(dtype, *layouts, sync=1, seed=sum(v << i for i, v in enumerate(layouts)),
                            round_tf32=round_tf32)
        for w in range(2):
            torch.testing.assert_close(_tile(d[w], layouts[3]).double(), want, rtol=1e-6, atol=1e-5)
            assert d[w][:, 16:].isnan().all()


def test_wmma_tf32_is_tf32_not_float32():
    """The emulated TF32 product is as coarse as the hardware's: it differs from the float32 product by far
    more than float32 rounding, and truncation and __float_to_tf32's rounding differ (a kernel that splits a
    float32 into TF32 hi + lo parts, as the CUDA pairwise forward does, is tested at the precision it has)."""
    results = [_wmma_run(torch.float32, 0, 0, 0, 0, sync=1, seed=5, round_tf32=r) for r in (False, True)]
    gen = torch.Generator().manual_seed(5)
    a, b = (torch.randn(16, WMMA_LD, generator=gen) for _ in range(2))
    c = torch.randn(16, WMMA_LD, generator=gen)
    exact = 2 * (a[:, :8].double() @ b[:8, :16].double()) + c[:, :16].double()
    for d, _ in results:
        assert (_tile(d[0], 0).double() - exact).abs().max() > 1e-3
    assert not torch.equal(results[0][0], results[1][0])
    assert torch.equal(_tf32(torch.tensor([1 + 2.0 ** -11]), True), torch.tensor([1 + 2.0 ** -10]))  # tie: away
    assert torch.equal(_tf32(torch.tensor([1 + 2.0 ** -11]), False), torch.tensor([1.0]))


@pytest.mark.parametrize("dtype", WMMA_DTYPES, ids=str)
def test_wmma_emulation_sees_a_missing_barrier(dtype):
    """Without the __syncthreads() between staging A, B in shared memory and the fragment loads, warp 0 reads
    shared memory the other threads have not written yet: the emulation must show wrong results (the stale
    values are those of the previous call, made with other inputs)."""
    _wmma_run(dtype, 0, 1, 0, 0, sync=1, seed=1)
    d, want = _wmma_run(dtype, 0, 1, 0, 0, sync=0, seed=2)
    assert not torch.allclose(_tile(d[0], 0).double(), want, rtol=1e-3, atol=1e-3)


# --- hard_mining --------------------------------------------------------------------------------------

WAVE_SMS = 132  # an H100
LIB.emu_hard_mining_fwd_workspace_bytes.restype = ctypes.c_int64


@pytest.fixture(params=["sm90", "sm75"])
def mining_arch(request):
    """The emulated compute capability: half / bfloat16 take the tensor-core (wmma) forward from sm_80 on,
    the SIMT one before (float32 / float64 always the SIMT one)."""
    LIB.emu_set_device(132, 9 if request.param == "sm90" else 7)
    yield request.param
    LIB.emu_set_device(132, 9)


def _skip_same_path(dtype, arch):
    if arch != "sm90" and dtype in (torch.float32, torch.float64):
        pytest.skip("float32 / float64 run the same kernel on every architecture")


def _mining_grid(n, m, d, sms):
    out = (ctypes.c_int64 * 5)()
    LIB.emu_hard_mining_fwd_grid(I64(n), I64(m), I64(d), ctypes.c_int(sms), out)
    return dict(zip(("anchor_blocks", "splits", "tiles", "threads", "launches"), out))


def _mine(a, c, la, lc, ma, mc, metric, rules, self_mining, sms=WAVE_SMS):
    """hard_mining_fwd through the emulated launcher: (pos_d, pos_i, neg_d, neg_i, valid, asq, csq, pos_out,
    neg_out), the distances in the accumulation dtype and again in the features' dtype (out)."""
    n, m, d = a.shape[0], c.shape[0], a.shape[1]
    acc = _acc(a.dtype)
    # As csrc/cuda_ops.cpp allocates them: uninitialised when there are anchors and candidates (the kernels
    # write every output; here a poison that no output can hold), else the defaults.
    poison = n > 0 and m > 0
    dist_fill, index_fill = (_POISON_DIST, _POISON_INDEX) if poison else (0.0, -1)
    pos_d, neg_d = torch.full((n,), dist_fill, dtype=acc), torch.full((n,), dist_fill, dtype=acc)
    pos_i, neg_i = torch.full((n,), index_fill), torch.full((n,), index_fill)
    valid = torch.full((n,), _POISON_BOOL if poison else 0, dtype=torch.uint8).view(torch.bool)
    asq, csq = torch.full((n,), dist_fill, dtype=acc), torch.full((m,), dist_fill, dtype=acc)
    pos_out, neg_out = torch.full((n,), dist_fill, dtype=a.dtype), torch.full((n,), dist_fill, dtype=a.dtype)
    code = DTYPE_CODES[a.dtype]
    nbytes = LIB.emu_hard_mining_fwd_workspace_bytes(code, I64(n), I64(m), I64(d), ctypes.c_int(sms))
    workspace = _garbage_workspace(nbytes)
    _check(LIB.emu_hard_mining_fwd(code, _p(a), _p(c), _p(la), _p(lc), _p(ma), _p(mc), _p(pos_d), _p(pos_i), _p(neg_d),
                                   _p(neg_i), _p(valid), _p(asq), _p(csq), _p(pos_out), _p(neg_out), _p(workspace),
                                   I64(n), I64(m), I64(d),
                                   METRIC_CODES[metric], RULES[rules[0]], RULES[rules[1]], int(self_mining),
                                   ctypes.c_int(sms)), "hard_mining_fwd")
    if poison:
        for name, t in (("pos_dist", pos_d), ("neg_dist", neg_d), ("asq", asq), ("csq", csq)):
            assert not (t == _POISON_DIST).any(), f"hard_mining_fwd left {name} unwritten"
        assert not ((pos_i == _POISON_INDEX) | (neg_i == _POISON_INDEX)).any(), "an index left unwritten"
        assert (valid.view(torch.uint8) <= 1).all(), "valid left unwritten"
    # The features' dtype copies are the accumulation-dtype results rounded once, as torch rounds them.
    for out, acc_d in ((pos_out, pos_d), (neg_out, neg_d)):
        torch.testing.assert_close(out, acc_d.to(a.dtype), rtol=0, atol=0, equal_nan=True)
    return pos_d, pos_i, neg_d, neg_i, valid, asq, csq, pos_out, neg_out


_POISON_DIST, _POISON_INDEX, _POISON_BOOL = -7.0, 2**40, 0x7F  # no distance, norm, index or bool is these


def _mine_bwd(gp, gn, a, c, got, metric):
    """hard_mining_bwd through the emulated launcher; gp / gn (one dtype: the features' or their accumulation
    type) read with their strides."""
    pos_d, pos_i, neg_d, neg_i, _, asq, csq = got[:7]
    assert gp.dtype == gn.dtype
    ga, gc = torch.empty_like(a), torch.empty_like(c)
    _check(LIB.emu_hard_mining_bwd(DTYPE_CODES[a.dtype], DTYPE_CODES[gp.dtype], _p(gp), I64(gp.stride(0)), _p(gn),
                                   I64(gn.stride(0)), _p(a), _p(c), _p(pos_i), _p(neg_i), _p(pos_d), _p(neg_d), _p(asq),
                                   _p(csq), _p(ga), _p(gc), I64(a.shape[0]), I64(c.shape[0]), I64(a.shape[1]),
                                   METRIC_CODES[metric]), "hard_mining_bwd")
    return ga, gc


def _reference_mining(a, c, la, lc, ma, mc, metric, rules, self_mining):
    acc = _acc(a.dtype)
    ar = a.to(acc).requires_grad_()
    cr = ar if self_mining else c.to(acc).requires_grad_()
    want = reference.hard_mining(ar, la, None if self_mining else cr, None if self_mining else lc, metric=metric,
                                 anchor_modality=ma, candidate_modality=None if self_mining else mc,
                                 positive=rules[0], negative=rules[1])
    return want, ar, cr


def _check_forward(got, want, dtype):
    pos_d, pos_i, neg_d, neg_i, valid = got[:5]
    assert torch.equal(valid, want[4])
    assert torch.equal(pos_i, want[1]), (pos_i, want[1])
    assert torch.equal(neg_i, want[3]), (neg_i, want[3])
    assert_matches(pos_d, want[0].detach(), dtype, "pos_dist")
    assert_matches(neg_d, want[2].detach(), dtype, "neg_dist")


def _check_backward(a, c, got, want, ar, cr, metric, self_mining, gen):
    dtype, acc, n = a.dtype, _acc(a.dtype), a.shape[0]
    gp, gn = torch.rand(n, generator=gen).to(dtype), torch.rand(n, generator=gen).to(dtype)
    (want[0] * gp.to(acc) + want[2] * gn.to(acc)).sum().backward()
    ga, gc = _mine_bwd(gp, gn, a, c, got, metric)
    if self_mining:
        assert_matches((ga.to(acc) + gc.to(acc)).to(dtype), ar.grad.to(dtype), dtype, "grad")
    else:
        assert_matches(ga, ar.grad.to(dtype), dtype, "grad anchors")
        assert_matches(gc, cr.grad.to(dtype), dtype, "grad candidates")
    return gp, gn, ga, gc


def _mining_inputs(n, m, d, dtype, gen, self_mining):
    a = _features(n, d, dtype, gen)
    c = a if self_mining else _features(m, d, dtype, gen)
    la = torch.randint(0, 4, (n,), generator=gen)
    la[0] = 99  # an anchor with no positive
    lc = la if self_mining else torch.randint(0, 4, (c.shape[0],), generator=gen)
    ma = torch.randint(0, 2, (n,), generator=gen, dtype=torch.int32)
    mc = ma if self_mining else torch.randint(0, 2, (c.shape[0],), generator=gen, dtype=torch.int32)
    return a, c, la, lc, ma, mc


@pytest.mark.parametrize("rules", [("any", "any"), ("cross", "same")])
@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16], ids=str)
@pytest.mark.parametrize("n,m,d", SIZES)
def test_hard_mining(n, m, d, dtype, metric, rules):
    gen = torch.Generator().manual_seed(n + 7 * m + d)
    self_mining = n == m or n <= 2
    a, c, la, lc, ma, mc = _mining_inputs(n, m, d, dtype, gen, self_mining)
    got = _mine(a, c, la, lc, ma, mc, metric, rules, self_mining)
    want, ar, cr = _reference_mining(a, c, la, lc, ma, mc, metric, rules, self_mining)
    _check_forward(got, want, dtype)
    _check_backward(a, c, got, want, ar, cr, metric, self_mining, gen)


def _split_cases(n, m, d):
    """sms values that force 1 split, 2 splits and one split per candidate tile (the most there are)."""
    g = _mining_grid(n, m, d, 1)
    cases = {"1": 1, "2": 2 * g["anchor_blocks"], "many": 1 << 20}
    splits = {k: _mining_grid(n, m, d, v)["splits"] for k, v in cases.items()}
    assert splits == {"1": 1, "2": min(2, g["tiles"]), "many": g["tiles"]}, splits
    return cases


@pytest.mark.parametrize("rules", [("any", "any"), ("cross", "same"), ("same", "cross")])
@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_hard_mining_splits_agree_bitwise(dtype, metric, rules, mining_arch):
    """1, 2 and many candidate splits give bitwise the same results (a pair's distance does not depend on
    the split that computes it), equal to reference; duplicate rows sit in different splits."""
    _skip_same_path(dtype, mining_arch)
    n, m, d = 35, 130, 33
    gen = torch.Generator().manual_seed(5)
    a = _features(n, d, dtype, gen)
    c = _features(m, d, dtype, gen)
    la = torch.randint(0, 3, (n,), generator=gen)
    la[0] = 99
    lc = torch.randint(0, 3, (m,), generator=gen)
    ma = torch.randint(0, 2, (n,), generator=gen, dtype=torch.int32)
    mc = torch.randint(0, 2, (m,), generator=gen, dtype=torch.int32)
    # Exact ties across split boundaries (tiles 0, 1, 4, 6, 8): a far row, the hardest positive of its
    # identity, five times; an anchor's own row, its nearest negative at distance 0, three times.
    c[3] = c[3] * 8
    for j in (17, 64, 97, 129):
        c[j], lc[j], mc[j] = c[3], lc[3], mc[3]
    for j in (10, 50, 90):
        c[j], lc[j], mc[j] = a[4], (la[4] + 1) % 3, ma[4]
    results = {k: _mine(a, c, la, lc, ma, mc, metric, rules, False, sms)
               for k, sms in _split_cases(n, m, d).items()}
    for k, got in results.items():
        for x, y in zip(got, results["1"]):
            assert torch.equal(x, y), f"splits {k} differ from one split"
    want, ar, cr = _reference_mining(a, c, la, lc, ma, mc, metric, rules, False)
    _check_forward(results["many"], want, dtype)
    _check_backward(a, c, results["many"], want, ar, cr, metric, False, gen)


@pytest.mark.parametrize("splits", ["1", "2", "many"])
@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_hard_mining_exact_ties_pick_lowest_index(dtype, metric, splits, mining_arch):
    """Small-integer features: every dot product is exact in any order, so the reference and the kernels
    see the same exact ties (many of them, across split boundaries); the lowest index must win."""
    _skip_same_path(dtype, mining_arch)
    n, m, d = 20, 130, 5
    gen = torch.Generator().manual_seed(11)
    a = torch.randint(-1, 2, (n, d), generator=gen).to(dtype)
    c = torch.randint(-1, 2, (m, d), generator=gen).to(dtype)
    la, lc = torch.randint(0, 3, (n,), generator=gen), torch.randint(0, 3, (m,), generator=gen)
    ma = torch.randint(0, 2, (n,), generator=gen, dtype=torch.int32)
    mc = torch.randint(0, 2, (m,), generator=gen, dtype=torch.int32)
    for rules in (("any", "any"), ("cross", "cross")):
        got = _mine(a, c, la, lc, ma, mc, metric, rules, False, _split_cases(n, m, d)[splits])
        want, _, _ = _reference_mining(a, c, la, lc, ma, mc, metric, rules, False)
        _check_forward(got, want, dtype)
        # Independently of the reference: no lower index reaches the chosen distance.
        dist = reference.distance_matrix(a.to(_acc(dtype)), c.to(_acc(dtype)), metric)
        for i in range(n):
            if got[4][i]:
                p, q = int(got[1][i]), int(got[3][i])
                assert not ((dist[i, :p] == dist[i, p]) & (lc[:p] == la[i]) & _allowed(rules[0], ma[i], mc[:p])).any()
                assert not ((dist[i, :q] == dist[i, q]) & (lc[:q] != la[i]) & _allowed(rules[1], ma[i], mc[:q])).any()


def _allowed(rule, am, cm):
    return torch.ones_like(cm, dtype=torch.bool) if rule == "any" else (cm != am) if rule == "cross" else (cm == am)


@pytest.mark.parametrize("splits", ["1", "2", "many"])
@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_hard_mining_nan_and_inf_rows_across_splits(dtype, metric, splits, mining_arch):
    """NaN rows in different splits: a NaN distance beats every number and the lowest-index NaN wins
    wherever the splits cut; an anchor with a NaN row mines NaN from its lowest allowed candidates."""
    _skip_same_path(dtype, mining_arch)
    n, m, d = 19, 70, 9
    gen = torch.Generator().manual_seed(3)
    a, c = _features(n, d, dtype, gen), _features(m, d, dtype, gen)
    c[[23, 45, 66]] = float("nan")      # tiles 1, 2 and 4
    c[[30, 50]] = float("inf")          # an infinite row: inf or NaN distances, a real candidate either way
    a[5] = float("nan")
    la, lc = torch.randint(0, 3, (n,), generator=gen), torch.randint(0, 3, (m,), generator=gen)
    lc[[23, 45, 66]] = torch.tensor([0, 1, 2])  # every identity has a NaN positive and NaN negatives
    la[0] = 99
    ma = torch.randint(0, 2, (n,), generator=gen, dtype=torch.int32)
    mc = torch.randint(0, 2, (m,), generator=gen, dtype=torch.int32)
    rules = ("any", "any")
    got = _mine(a, c, la, lc, ma, mc, metric, rules, False, _split_cases(n, m, d)[splits])
    want, _, _ = _reference_mining(a, c, la, lc, ma, mc, metric, rules, False)
    _check_forward(got, want, dtype)
    assert got[0][got[4]].isnan().all() and got[2][got[4]].isnan().all()


@pytest.mark.parametrize("rules", [("cross", "same"), ("same", "cross")])
def test_hard_mining_nonzero_modality_is_infrared(rules):
    """The launcher reads int32 modality as given: 0 visible, any other value infrared (the glue passes
    int32 unconverted)."""
    n, m, d = 47, 130, 7
    gen = torch.Generator().manual_seed(4)
    a, c = _features(n, d, torch.float32, gen), _features(m, d, torch.float32, gen)
    la, lc = torch.randint(0, 5, (n,), generator=gen), torch.randint(0, 5, (m,), generator=gen)
    ma = torch.randint(0, 2, (n,), generator=gen, dtype=torch.int32)
    mc = torch.randint(0, 2, (m,), generator=gen, dtype=torch.int32)
    values = torch.tensor([3, -1, 7, 2**31 - 1], dtype=torch.int32)
    raw_a = torch.where(ma == 0, 0, values[torch.arange(n) % 4])
    raw_c = torch.where(mc == 0, 0, values[torch.arange(m) % 4])
    want = _mine(a, c, la, lc, ma, mc, "euclidean", rules, False)
    got = _mine(a, c, la, lc, raw_a, raw_c, "euclidean", rules, False)
    for g, w in zip(got, want):
        assert torch.equal(g, w)


@pytest.mark.parametrize("splits", ["1", "2", "many"])
@pytest.mark.parametrize("rules", [("any", "any"), ("cross", "same")])
def test_hard_mining_invalid_anchors(rules, splits):
    """Anchors without a positive or without a negative (in every split) are invalid: index -1, distance 0."""
    n, m, d = 6, 40, 7
    gen = torch.Generator().manual_seed(2)
    a, c = _features(n, d, torch.float32, gen), _features(m, d, torch.float32, gen)
    lc = torch.full((m,), 5)
    lc[33] = 6                                  # the only other identity, in the last split
    la = torch.tensor([5, 6, 7, 5, 6, 5])       # 7: no positive; 6: one positive at 33
    mc = torch.zeros(m, dtype=torch.int32)
    mc[33] = 1
    ma = torch.tensor([0, 0, 1, 1, 1, 0], dtype=torch.int32)
    got = _mine(a, c, la, lc, ma, mc, "euclidean", rules, False, _split_cases(n, m, d)[splits])
    want, _, _ = _reference_mining(a, c, la, lc, ma, mc, "euclidean", rules, False)
    _check_forward(got, want, torch.float32)
    assert not got[4][2]
    assert got[1][~got[4]].eq(-1).all() and got[3][~got[4]].eq(-1).all()
    assert got[0][~got[4]].eq(0).all() and got[2][~got[4]].eq(0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_hard_mining_runs_are_bitwise_reproducible(dtype, mining_arch):
    _skip_same_path(dtype, mining_arch)
    n, m, d = 40, 97, 65
    gen = torch.Generator().manual_seed(9)
    a, c, la, lc, ma, mc = _mining_inputs(n, m, d, dtype, gen, False)
    lc[:40] = 1  # many anchors choose the same candidates: several terms per candidate gradient
    runs = []
    for _ in range(2):
        got = _mine(a, c, la, lc, ma, mc, "euclidean", ("any", "any"), False)
        gp = torch.linspace(0.5, 1.5, n).to(dtype)
        runs.append((*got, *_mine_bwd(gp, gp.flip(0), a, c, got, "euclidean")))
    for x, y in zip(*runs):
        assert torch.equal(x, y)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_hard_mining_backward_reads_gradients_in_place(dtype, metric):
    """The upstream gradients are read in the features' dtype with their strides: an expanded scalar
    (stride 0, what a sum hands back) and every other element of a longer vector give bitwise what their
    contiguous copies give."""
    n, m, d = 37, 70, 19
    gen = torch.Generator().manual_seed(6)
    a, c, la, lc, ma, mc = _mining_inputs(n, m, d, dtype, gen, False)
    got = _mine(a, c, la, lc, ma, mc, metric, ("cross", "any"), False)
    expanded = torch.tensor(0.75, dtype=dtype).expand(n)
    every_other = torch.rand(2 * n, generator=gen).to(dtype)[::2]
    for gp, gn in ((expanded, every_other), (every_other, expanded)):
        assert (gp.stride(0), gn.stride(0)) in ((0, 2), (2, 0))
        strided = _mine_bwd(gp, gn, a, c, got, metric)
        contiguous = _mine_bwd(gp.contiguous(), gn.contiguous(), a, c, got, metric)
        for x, y in zip(strided, contiguous):
            assert torch.equal(x, y)
        assert strided[0].abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_hard_mining_backward_reads_accumulation_dtype_gradients(dtype):
    """Float32 gradients for half features (a direct call of the op) are read at full precision, not
    rounded to the features' dtype first: the result is what the float32 values give, and differs from
    what their half roundings give. Another gradient dtype is refused, not misread."""
    n, m, d = 37, 70, 19
    gen = torch.Generator().manual_seed(8)
    a, c, la, lc, ma, mc = _mining_inputs(n, m, d, dtype, gen, False)
    got = _mine(a, c, la, lc, ma, mc, "euclidean", ("any", "any"), False)
    want, ar, cr = _reference_mining(a, c, la, lc, ma, mc, "euclidean", ("any", "any"), False)
    _check_forward(got, want, dtype)
    gp, gn = 1 + torch.rand(n, generator=gen) / 1000, torch.rand(n, generator=gen)  # half: 1 (+ one step)
    (want[0] * gp + want[2] * gn).sum().backward()
    ga, gc = _mine_bwd(gp, gn, a, c, got, "euclidean")
    assert_matches(ga, ar.grad.to(dtype), dtype, "grad anchors")
    assert_matches(gc, cr.grad.to(dtype), dtype, "grad candidates")
    rounded = _mine_bwd(gp.to(dtype), gn.to(dtype), a, c, got, "euclidean")
    assert not torch.equal(torch.cat([ga.flatten(), gc.flatten()]), torch.cat([x.flatten() for x in rounded]))
    other = gp.double()
    assert LIB.emu_hard_mining_bwd(DTYPE_CODES[dtype], DTYPE_CODES[torch.float64], _p(other), I64(1), _p(other),
                                   I64(1), _p(a), _p(c), _p(got[1]), _p(got[3]), _p(got[0]), _p(got[2]), _p(got[5]),
                                   _p(got[6]), _p(ga), _p(gc), I64(n), I64(m), I64(d), 0) != 0


def test_hard_mining_grid_fills_a_wave_at_training_shapes():
    """N = M = 256, D = 2048 on a 132-SM GPU: at least one block per SM, a combine launch at most."""
    g = _mining_grid(256, 256, 2048, WAVE_SMS)
    assert g["anchor_blocks"] * g["splits"] >= WAVE_SMS, g
    assert g["launches"] <= 2
    # A large batch needs no split (one launch), and the split count never exceeds the candidate tiles.
    big = _mining_grid(8192, 8192, 2048, WAVE_SMS)
    assert big["splits"] == 1 and big["launches"] == 1
    assert _mining_grid(256, 20, 2048, WAVE_SMS)["splits"] == _mining_grid(256, 20, 2048, WAVE_SMS)["tiles"]


# --- hetero_center ------------------------------------------------------------------------------------

#: the CUDA slot kernels' block edges (256 threads) and past them
SLOT_CASES = awkward_labels((2, 31, 255, 256, 257, 600), torch.Generator().manual_seed(5))


@pytest.mark.parametrize("name,labels", SLOT_CASES, ids=[c[0] for c in SLOT_CASES])
def test_class_slots(name, labels):
    labels = labels.contiguous()  # the launcher reads a contiguous vector (csrc/cuda_ops.cpp copies a view)
    n = labels.shape[0]
    outs = [torch.full((n + (k == 1),), _POISON_INDEX, dtype=torch.int64) for k in range(5)]
    _check(LIB.emu_class_slots(int(labels.dtype == torch.int32), _p(labels), *map(_p, outs), I64(n)), "class_slots")
    for what, got, want in zip(("order", "seg", "slot", "sorted_labels", "sorted_slot"), outs,
                               reference.class_slots(labels)):
        assert torch.equal(got, want), (name, what, got, want)


def test_class_slots_of_no_samples_launch_nothing():
    _check(LIB.emu_class_slots(0, _p(torch.empty(0, dtype=torch.int64)), *([_p(None)] * 5), I64(0)), "class_slots")


LIB.emu_hetero_center_fwd_workspace_bytes.restype = ctypes.c_int64


def _hetero_center_fwd(x, slots, modality, outputs, code, strong, margin):
    """The forward on x [sets, n, d] into outputs (hinge, centers, variances, counts, stats), with garbage
    (NaN as float32 and float64) in the per-slice workspace when the features span more than one slice."""
    sets, n, d = x.shape
    nbytes = LIB.emu_hetero_center_fwd_workspace_bytes(DTYPE_CODES[x.dtype], I64(sets), I64(n), I64(d))
    workspace = _garbage_workspace(nbytes)
    hinge, centers, variances, counts, stats = outputs
    _check(LIB.emu_hetero_center_fwd(DTYPE_CODES[x.dtype], _p(x), _p(slots.order), _p(slots.seg), _p(modality),
                                     _p(hinge), _p(centers), _p(variances), _p(counts), _p(stats), _p(workspace),
                                     I64(sets), I64(n), I64(d), code, int(strong), ctypes.c_double(margin)),
           "hetero_center_fwd")


def test_hetero_center_forward_slices_the_features():
    """The forward's blocks take 64-feature slices: at the HC preset's shape (6 stripes x 64 samples in one
    call, E = 512) 8 slices per class (24 classes: 192 busy blocks), each with its 5 scalars in the
    workspace; one slice (d <= 64) needs none. Past 65535 slices (grid axis z) the slices stop growing."""
    size = {torch.float32: 4, torch.float64: 8}
    for dtype in (torch.float32, torch.float16, torch.float64):
        acc_bytes = size.get(dtype, 4)
        code = DTYPE_CODES[dtype]
        assert LIB.emu_hetero_center_fwd_workspace_bytes(code, I64(1), I64(384), I64(512)) == 384 * 8 * 5 * acc_bytes
        assert LIB.emu_hetero_center_fwd_workspace_bytes(code, I64(2), I64(3), I64(129)) == 2 * 3 * 3 * 5 * acc_bytes
        assert LIB.emu_hetero_center_fwd_workspace_bytes(code, I64(6), I64(384), I64(64)) == 0
        assert LIB.emu_hetero_center_fwd_workspace_bytes(code, I64(1), I64(1), I64(64 * 70000)) == 65535 * 5 * acc_bytes


@pytest.mark.parametrize("strong", [False, True])
@pytest.mark.parametrize("metric", ["sqeuclidean", "cosine"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16], ids=str)
@pytest.mark.parametrize("n,d", [(1, 1), (2, 7), (3, 129), (47, 7), (130, 129), (600, 3), (600, 65)])
def test_hetero_center(n, d, dtype, metric, strong):
    gen = torch.Generator().manual_seed(n * 31 + d)
    sets = 2
    x = torch.stack([_features(n, d, dtype, gen) for _ in range(sets)]).contiguous()
    labels = torch.randint(0, 6 if n < 600 else 2, (n,), generator=gen)
    # n = 600: two classes of ~300 samples, past the 256 the forward stages in shared memory (d = 65: two slices)
    assert n < 600 or labels.bincount().min() > 256
    modality = torch.randint(0, 2, (n,), generator=gen, dtype=torch.int32)
    modality[labels == 1] = 0           # class 1 has no infrared sample
    modality[(labels == 2) & (modality == 1)] = 7  # unchecked values: any non-zero is infrared
    acc = _acc(dtype)
    slots = class_slots(labels)
    # csrc/cuda_ops.cpp allocates the outputs uninitialised: here a poison no output can hold, which the
    # kernel must overwrite everywhere, in the empty slots (past the classes) too.
    hinge, stats = torch.full((sets, n), _POISON_DIST, dtype=acc), torch.full((sets, n, 5), _POISON_DIST, dtype=acc)
    centers = torch.full((sets, n, 2, d), _POISON_DIST, dtype=acc)
    variances = torch.full((sets, n, 2, d), _POISON_DIST, dtype=acc)
    counts = torch.full((n, 2), _POISON_INDEX, dtype=torch.int64)
    code = METRIC_CODES[metric]
    _hetero_center_fwd(x, slots, modality, (hinge, centers, variances, counts, stats), code, strong, 0.01)
    for name, t in (("hinge", hinge), ("centers", centers), ("variances", variances), ("stats", stats)):
        assert not (t == _POISON_DIST).any(), f"hetero_center_fwd left {name} unwritten"
    assert not (counts == _POISON_INDEX).any(), "hetero_center_fwd left counts unwritten"
    xr = x.to(acc).requires_grad_()
    loss = reference.hetero_center_loss(xr, labels, modality, margin=0.01, metric=metric, strong=strong)
    k = int(slots.num_classes)
    _, ref_centers, ref_counts = reference.modality_centers(x.to(acc), labels, modality)
    assert torch.equal(counts[:k], ref_counts) and (counts[k:] == 0).all()
    assert_matches(centers[:, :k], ref_centers, dtype, "centers")
    for name, t in (("hinge", hinge), ("centers", centers), ("variances", variances), ("stats", stats)):
        assert (t[:, k:] == 0).all(), f"{name} of an empty slot is not 0"
    if not strong:
        assert (variances == 0).all()
    assert_matches(hinge.sum(-1), loss.detach(), dtype, "loss")

    grad_hinge = torch.rand(sets, dtype=acc, generator=gen)
    (loss * grad_hinge).sum().backward()
    # The sum's gradient as autograd hands it back (expanded: stride 0 along the classes), read in place,
    # and its contiguous copy: bitwise the same.
    expanded = grad_hinge[:, None].expand(sets, n)
    grads = []
    for gh in (expanded, expanded.contiguous()):
        grad_x = torch.empty_like(x)
        _check(LIB.emu_hetero_center_bwd(DTYPE_CODES[dtype], _p(x), _p(slots.slot), _p(modality), _p(hinge),
                                         _p(centers), _p(variances), _p(counts), _p(stats), _p(gh), I64(gh.stride(0)),
                                         I64(gh.stride(1)), _p(None), _p(grad_x), I64(sets), I64(n), I64(d), code,
                                         int(strong)), "hetero_center_bwd")
        grads.append(grad_x)
    assert torch.equal(grads[0], grads[1])
    assert_matches(grads[0], xr.grad.to(dtype), dtype, "grad x")


@pytest.mark.parametrize("d", [5, 150])  # one feature slice; three, summed by the combine kernel
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("strong", [False, True])
@pytest.mark.parametrize("metric", ["sqeuclidean", "cosine"])
def test_hetero_center_one_modality_class_with_a_non_finite_feature(metric, strong, bad, d):
    """A class seen in one modality only is left out by a factor 0, as the reference's mask: a NaN or inf
    feature there gives a NaN hinge, and a gradient NaN in that class's rows only, as the reference's."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, 8, d, generator=gen)
    x[0, 4, d - 1] = bad  # in the last slice
    labels = torch.tensor([3, 3, 1, 1, 7, 7, 3, 1])  # class 7: visible only
    modality = torch.tensor([0, 1, 0, 1, 0, 0, 1, 1], dtype=torch.int32)
    slots = class_slots(labels)
    hinge, stats, counts = torch.empty(1, 8), torch.empty(1, 8, 5), torch.empty(8, 2, dtype=torch.int64)
    centers, variances = torch.empty(1, 8, 2, d), torch.empty(1, 8, 2, d)
    code = METRIC_CODES[metric]
    _hetero_center_fwd(x, slots, modality, (hinge, centers, variances, counts, stats), code, strong, 0.0)
    xr = x[0].clone().requires_grad_()
    loss = reference.hetero_center_loss(xr, labels, modality, metric=metric, strong=strong)
    assert hinge.sum().isnan() and loss.isnan()
    assert hinge[0, :2].isfinite().all(), hinge  # the classes seen in both modalities (1, 3)
    loss.backward()
    grad_x, ones = torch.empty_like(x), torch.ones(1, 8)
    _check(LIB.emu_hetero_center_bwd(DTYPE_CODES[torch.float32], _p(x), _p(slots.slot), _p(modality), _p(hinge),
                                     _p(centers), _p(variances), _p(counts), _p(stats), _p(ones), I64(8), I64(1),
                                     _p(None), _p(grad_x), I64(1), I64(8), I64(d), code, int(strong)),
           "hetero_center_bwd")
    assert torch.equal(grad_x[0].isnan(), xr.grad.isnan()) and grad_x[0, labels != 7].isfinite().all()
    torch.testing.assert_close(grad_x[0], xr.grad, equal_nan=True, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("strong", [False, True])
def test_hetero_center_centre_gradient_of_an_unused_nan_hinge(strong):
    """The centres' gradient alone, the hinge unused (the autograd passes it, and its gradient, as zeros):
    every sample gets the mean's 1/n, as the reference's, and none 0 * its class's NaN centre."""
    x = torch.randn(1, 8, 3, generator=torch.Generator().manual_seed(4))
    x[0, 0, 0] = float("nan")
    labels = torch.tensor([0, 0, 1, 1, 0, 1, 2, 2])
    modality = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1], dtype=torch.int32)
    slots = class_slots(labels)
    hinge, stats, counts = torch.empty(1, 8), torch.empty(1, 8, 5), torch.empty(8, 2, dtype=torch.int64)
    centers, variances = torch.empty(1, 8, 2, 3), torch.empty(1, 8, 2, 3)
    _hetero_center_fwd(x, slots, modality, (hinge, centers, variances, counts, stats), METRIC_CODES["sqeuclidean"],
                       strong, 0.0)
    assert hinge[0, 0].isnan()
    xr = x[0].clone().requires_grad_()
    reference.modality_centers(xr, labels, modality)[1].sum().backward()
    zeros, ones, grad_x = torch.zeros(1, 8), torch.ones(1, 8, 2, 3), torch.empty_like(x)
    _check(LIB.emu_hetero_center_bwd(DTYPE_CODES[torch.float32], _p(x), _p(slots.slot), _p(modality), _p(zeros),
                                     _p(centers), _p(variances), _p(counts), _p(stats), _p(zeros), I64(8), I64(1),
                                     _p(ones), _p(grad_x), I64(1), I64(8), I64(3), METRIC_CODES["sqeuclidean"],
                                     int(strong)), "hetero_center_bwd")
    assert grad_x.isfinite().all(), grad_x
    torch.testing.assert_close(grad_x[0], xr.grad)


# --- normalized cross-entropy epilogues -----------------------------------------------------------------

LIB.emu_normalized_ce_grad_row_blocks.restype = I64
LIB.emu_normalized_ce_grad_blocks.restype = I64

@pytest.mark.parametrize("acc", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("n,c,d", [(1, 1, 1), (2, 3, 7), (47, 130, 129), (130, 300, 7)])
def test_normalized_ce_epilogues(n, c, d, acc):
    gen = torch.Generator().manual_seed(n + c + d)
    x, w = _features(n, d, acc, gen), _features(c, d, acc, gen)
    target = torch.randint(0, c, (n,), generator=gen)
    scale, smoothing = 14.0, 0.1
    inv_x = 1.0 / (x * x).sum(1).sqrt().clamp_min(1e-12)
    inv_w = 1.0 / (w * w).sum(1).sqrt().clamp_min(1e-12)
    sfx = "f32" if acc == torch.float32 else "f64"
    ctype = ctypes.c_float if acc == torch.float32 else ctypes.c_double
    # NaN in the state and the results: the first chunk must start the state without reading it, and the last
    # must write every result (the driver allocates both uninitialised)
    state = torch.full((5, n), float("nan"), dtype=acc)
    out = torch.full((4, n), float("nan"), dtype=acc)
    chunk = 128  # the launcher is called per class chunk, as the driver does
    for c0 in range(0, c, chunk):
        cc = min(chunk, c - c0)
        dots = (x @ w[c0:c0 + cc].T).contiguous()
        _check(getattr(LIB, f"emu_normalized_ce_merge_{sfx}")(
            _p(dots), I64(n), I64(cc), I64(c0), I64(c), _p(inv_x), _p(inv_w[c0:]), _p(target), ctype(scale),
            ctype(smoothing), _p(state), _p(out)), "normalized_ce_merge")
    z = scale * (x @ w.T) * inv_x[:, None] * inv_w[None, :]
    lse = torch.logsumexp(z, 1)
    tz = (1 - smoothing) * z.gather(1, target[:, None])[:, 0] + smoothing / c * z.sum(1)
    tol = TOLERANCES[acc]
    torch.testing.assert_close(out[1], lse, atol=tol.atol * scale, rtol=tol.rtol)
    torch.testing.assert_close(out[2], (torch.softmax(z, 1) * z).sum(1), atol=tol.atol * scale, rtol=tol.rtol)
    torch.testing.assert_close(out[3], tz, atol=tol.atol * scale, rtol=tol.rtol)
    torch.testing.assert_close(out[0], lse - tz, atol=2 * tol.atol * scale, rtol=tol.rtol)

    grad_row = torch.rand(n, dtype=acc, generator=gen)
    if n >= 3:
        grad_row[-2] = 0.0  # a row that contributes nothing
    t = torch.full((n, c), smoothing / c, dtype=acc)
    t[torch.arange(n), target] += 1 - smoothing
    big_g = grad_row[:, None] * (torch.softmax(z, 1) - t)
    wsq = (w * w).sum(1)
    if c >= 3:
        wsq[-1] = 0.0  # a zero class vector: its coefficient is 0 whatever its column sum
    keep = (wsq.sqrt() > 1e-12).to(acc)
    want_coef = keep * inv_w * inv_w * (big_g * z).sum(0)
    coef = torch.full((c,), float("nan"), dtype=acc)
    blocks = LIB.emu_normalized_ce_grad_row_blocks(I64(n))
    for c0 in range(0, c, chunk):
        cc = min(chunk, c - c0)
        dots = (x @ w[c0:c0 + cc].T).contiguous()
        gq = torch.full((n, cc), float("nan"), dtype=acc)
        partials = torch.full((blocks, cc), float("nan"), dtype=acc)  # scratch: any contents
        _check(getattr(LIB, f"emu_normalized_ce_grad_{sfx}")(
            _p(dots), I64(n), I64(cc), I64(c0), I64(c), _p(inv_x), _p(inv_w[c0:]), _p(wsq[c0:]), _p(target), _p(lse),
            _p(grad_row), ctype(scale), ctype(smoothing), _p(gq), 0, _p(None), _p(partials), _p(coef[c0:])),
            "normalized_ce_grad")
        torch.testing.assert_close(gq, (big_g * inv_w[None, :])[:, c0:c0 + cc], atol=tol.atol, rtol=tol.rtol)
    torch.testing.assert_close(coef, want_coef, atol=tol.atol * scale * n, rtol=tol.rtol)


@pytest.mark.parametrize("operand", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("n,cc", [(1, 1), (33, 40), (70, 129)])
def test_normalized_ce_grad_writes_the_gemm_operand(n, cc, operand):
    """G q as the GEMM operand: fp16 is G q rounded; bf16 is hi = G q rounded and lo = G q - hi rounded
    (lo = 0 where hi is infinite, NaN stays NaN), lo rows after the hi rows; no float32 G q is needed."""
    gen = torch.Generator().manual_seed(n * cc)
    dots = torch.randn(n, cc, generator=gen).contiguous()
    inv_x, inv_w = torch.rand(n, generator=gen) + 0.5, torch.rand(cc, generator=gen) + 0.5
    wsq = 1.0 / inv_w**2
    target = torch.randint(0, cc, (n,), generator=gen)
    lse = torch.logsumexp(14.0 * dots * inv_x[:, None] * inv_w, 1)
    grad_row = torch.rand(n, generator=gen) * 3e4
    if n >= 33:
        grad_row[5] = float("inf")  # inf x (p - t): +-inf (p - t is never 0 here)
        grad_row[7] = float("nan")
        grad_row[9] = 1e38  # beyond fp16's range: that operand rounds to inf
    blocks = LIB.emu_normalized_ce_grad_row_blocks(I64(n))
    gq = torch.empty(n, cc)
    rows = 2 * n if operand == torch.bfloat16 else n
    out = torch.full((rows, cc), float("nan"), dtype=operand)  # every element must be written, 0s included
    coef_f, coef_o, partials = torch.empty(cc), torch.empty(cc), torch.empty(blocks, cc)
    for tensor, coef in ((None, coef_o), (gq, coef_f)):  # the operand alone, then gq alone
        _check(LIB.emu_normalized_ce_grad_f32(
            _p(dots), I64(n), I64(cc), I64(0), I64(cc), _p(inv_x), _p(inv_w), _p(wsq), _p(target), _p(lse),
            _p(grad_row), ctypes.c_float(14.0), ctypes.c_float(0.0), _p(tensor), DTYPE_CODES[operand],
            _p(out if tensor is None else None), _p(partials), _p(coef)), "normalized_ce_grad")
    torch.testing.assert_close(coef_o, coef_f, equal_nan=True, rtol=0, atol=0)
    hi = gq.to(operand)
    torch.testing.assert_close(out[:n], hi, equal_nan=True, rtol=0, atol=0)
    if operand == torch.bfloat16:
        lo = (gq - hi.float()).masked_fill(hi.float().isinf(), 0.0).to(operand)
        torch.testing.assert_close(out[n:], lo, equal_nan=True, rtol=0, atol=0)
        if n >= 33:
            assert hi[5].float().isinf().all() and (out[n:][5] == 0).all()
            assert out[n:][7].float().isnan().all()
        # 16 significant bits, but for values near the bottom of the exponent range (lo underflows there)
        bad = ((hi.float() + out[n:].float() - gq).abs() > gq.abs() * 2.0**-16 + 2.0**-120) & gq.isfinite()
        assert not bad.any(), gq[bad]


@pytest.mark.parametrize("acc,w_dtype", [(a, w) for a in (torch.float32, torch.float64) for w in DTYPES], ids=str)
@pytest.mark.parametrize("cc,d", [(1, 1), (5, 300), (130, 2100)])
def test_normalized_ce_weight_grad(cc, d, acc, w_dtype):
    """out = s dir - coef_c w in W's dtype: every row and feature, past one block's 256 and the 8-block cap.
    Bitwise here: the emulation does not contract s dir - c w into an FMA (a GPU may, one ulp off)."""
    gen = torch.Generator().manual_seed(cc + d)
    dir_, w = torch.randn(cc, d, generator=gen, dtype=acc), torch.randn(cc, d, generator=gen).to(w_dtype)
    coef = torch.randn(cc, generator=gen, dtype=acc)
    out = torch.full((cc, d), float("nan"), dtype=w_dtype)
    sfx, ctype = ("f32", ctypes.c_float) if acc == torch.float32 else ("f64", ctypes.c_double)
    _check(getattr(LIB, f"emu_normalized_ce_weight_grad_{sfx}")(
        _p(dir_), DTYPE_CODES[w_dtype], _p(w), _p(coef), ctype(14.0), I64(cc), I64(d), _p(out)),
        "normalized_ce_weight_grad")
    want = 14.0 * dir_ - coef[:, None] * w.to(acc)
    if w_dtype in (torch.float16, torch.bfloat16):
        want = want.float()  # the kernel rounds a double result to float, then to half
    torch.testing.assert_close(out, want.to(w_dtype), rtol=0, atol=0)


def _nce_acc(acc):
    return ("f32", ctypes.c_float) if acc == torch.float32 else ("f64", ctypes.c_double)


def _inverse_norms(sq):
    return 1.0 / sq.sqrt().clamp_min(1e-12)


def _assert_inverse_norms(inv, sq):
    """1 / max(sqrt(sq), eps) within 2 ulps: torch's CPU sqrt is not always correctly rounded."""
    torch.testing.assert_close(inv, _inverse_norms(sq), atol=0, rtol=2 * torch.finfo(sq.dtype).eps, equal_nan=True)


@pytest.mark.parametrize("acc,dtype", [(a, t) for a in (torch.float32, torch.float64) for t in DTYPES], ids=str)
@pytest.mark.parametrize("rows,d", [(1, 1), (3, 7), (47, 129), (130, 300)])
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_normalized_ce_row_norms(rows, d, acc, dtype, layout):
    """|row|^2 in the accumulation dtype and 1 / max(|row|, eps) of x and of W, read in their own dtype and
    strides (a transposed W: columns 1 row apart); a zero row gets 1 / eps, a duplicate the same norm."""
    gen = torch.Generator().manual_seed(rows * 7 + d)
    src = _features(rows, d, dtype, gen)
    if rows >= 47:
        src[2, 0] = float("nan")  # a NaN row: NaN norm and inverse, as torch's clamp_min propagates it
    if layout == "transposed":
        src = src.T.contiguous().T
    sq = torch.full((rows,), float("nan"), dtype=acc)
    inv = torch.full((rows,), float("nan"), dtype=acc)
    sfx, _ = _nce_acc(acc)
    _check(getattr(LIB, f"emu_normalized_ce_row_norms_{sfx}")(
        DTYPE_CODES[dtype], _p(src), I64(rows), I64(d), I64(src.stride(0)), I64(src.stride(1)), _p(sq), _p(inv)),
        "normalized_ce_row_norms")
    want = (src.to(acc) ** 2).sum(1)
    tol = TOLERANCES[acc]
    torch.testing.assert_close(sq, want, atol=tol.atol, rtol=tol.rtol, equal_nan=True)
    _assert_inverse_norms(inv, sq)
    if rows >= 3:
        assert sq[1] == sq[0] and sq[-1] == 0 and inv[-1] == 1e12


@pytest.mark.parametrize("acc,dtype,unit", [(torch.float32, torch.float32, torch.float32),
                                            (torch.float32, torch.float16, torch.float16),
                                            (torch.float32, torch.bfloat16, torch.float32),
                                            (torch.float32, torch.bfloat16, torch.bfloat16),
                                            (torch.float64, torch.float64, torch.float64)], ids=str)
@pytest.mark.parametrize("rows,d", [(1, 1), (3, 7), (130, 300)])
def test_normalized_ce_unit_rows(rows, d, acc, dtype, unit):
    """inv = 1 / max(sqrt(sq), eps) and x inv rounded once to the unit dtype (fp16 for fp16 x, as the
    gradient GEMM takes it); with x null, the same inv alone (W's rows). Unit rows bitwise: one product, one
    rounding."""
    gen = torch.Generator().manual_seed(rows + d)
    x = _features(rows, d, dtype, gen)
    sq = (x.to(acc) ** 2).sum(1)
    sfx, _ = _nce_acc(acc)
    inv = torch.full((rows,), float("nan"), dtype=acc)
    out = torch.full((rows, d), float("nan"), dtype=unit)
    _check(getattr(LIB, f"emu_normalized_ce_unit_rows_{sfx}")(
        _p(sq), I64(rows), _p(inv), DTYPE_CODES[dtype], _p(x), I64(d), DTYPE_CODES[unit], _p(out)),
        "normalized_ce_unit_rows")
    _assert_inverse_norms(inv, sq)
    torch.testing.assert_close(out, (x.to(acc) * inv[:, None]).to(unit), atol=0, rtol=0)
    inv_only = torch.full((rows,), float("nan"), dtype=acc)
    _check(getattr(LIB, f"emu_normalized_ce_unit_rows_{sfx}")(
        _p(sq), I64(rows), _p(inv_only), 0, _p(None), I64(0), 0, _p(None)), "normalized_ce_unit_rows")
    torch.testing.assert_close(inv_only, inv, atol=0, rtol=0)


def test_normalized_ce_unit_rows_refuses_a_unit_dtype_of_another_accumulation():
    """A float32 accumulation cannot write float64 unit rows (nor the reverse): an error, not a wrong cast."""
    sq, inv = torch.ones(2), torch.empty(2)
    x, out = torch.ones(2, 3), torch.empty(2, 3, dtype=torch.float64)
    assert LIB.emu_normalized_ce_unit_rows_f32(_p(sq), I64(2), _p(inv), 0, _p(x), I64(3), DTYPE_CODES[out.dtype],
                                               _p(out)) != 0


@pytest.mark.parametrize("acc,dtype", [(torch.float32, t) for t in (torch.float32, torch.float16, torch.bfloat16)]
                         + [(torch.float64, torch.float64)], ids=str)
@pytest.mark.parametrize("rows,d", [(1, 1), (3, 7), (130, 300)])
def test_normalized_ce_grad_x(rows, d, acc, dtype):
    """out = s r gx - [sqrt(sq) > eps] r^2 g (ez - tz) x in x's dtype, every row and feature past one block's
    256; a zero row and a row shorter than eps keep only the GEMM term. Bitwise here: the emulation does not contract into FMAs."""
    gen = torch.Generator().manual_seed(rows * 3 + d)
    x = _features(rows, d, dtype, gen)
    if rows >= 3:
        x[-2] = 1e-15  # nonzero but |x| <= eps (0 in fp16): the normalisation's term is dropped, as for a zero row
    sq = (x.to(acc) ** 2).sum(1)
    inv = _inverse_norms(sq)
    gx = torch.randn(rows, d, generator=gen, dtype=acc)
    g, ez, tz = (torch.rand(rows, generator=gen, dtype=acc) for _ in range(3))
    out = torch.full((rows, d), float("nan"), dtype=dtype)
    sfx, ctype = _nce_acc(acc)
    _check(getattr(LIB, f"emu_normalized_ce_grad_x_{sfx}")(
        _p(gx), DTYPE_CODES[dtype], _p(x), _p(sq), _p(inv), _p(g), _p(ez), _p(tz), ctype(14.0), I64(rows), I64(d),
        _p(out)), "normalized_ce_grad_x")
    keep = (sq.sqrt() > 1e-12).to(acc)
    row_coef = keep * inv * inv * (g * (ez - tz))
    want = gx * (inv * 14.0)[:, None] - x.to(acc) * row_coef[:, None]
    torch.testing.assert_close(out, want.to(dtype), atol=0, rtol=0)
    if rows >= 3:
        torch.testing.assert_close(out[-2:], (gx[-2:] * (inv[-2:, None] * 14.0)).to(dtype), atol=0, rtol=0)


def test_normalized_ce_grad_grid_fills_a_wave_at_the_training_shape():
    """N = 256, C = 395 (SYSU-MM01) on a 132-SM GPU: the grad kernel has a block per SM at least (merge has
    one per row, weight_grad one per class row)."""
    assert LIB.emu_normalized_ce_grad_blocks(I64(256), I64(395)) >= WAVE_SMS


# --- launch configurations: grid limits and D = 0 --------------------------------------------------------

@pytest.fixture
def dry_run():
    LIB.emu_set_dry_run(1)
    yield
    LIB.emu_set_dry_run(0)


def test_grid_limits_large_row_counts(dry_run):
    """More than 65535 row tiles (N > 4.2M rows) must launch: the large count goes on grid dimension x."""
    n, m, d = 64 * 65536 + 1, 130, 7
    null = ctypes.c_void_p(0)
    for dtype in (0, 1):
        assert LIB.emu_pairwise_distance_fwd(dtype, null, null, null, null, null, null, I64(n), I64(m), I64(d), 0,
                                             WAVE_SMS) == 0
        assert LIB.emu_pairwise_distance_bwd_side(dtype, null, null, null, null, null, null, null, I64(n), I64(m),
                                                  I64(d), I64(m), I64(1), I64(m), I64(1), 0, WAVE_SMS) == 0
        assert LIB.emu_hard_mining_fwd(dtype, null, null, null, null, null, null, null, null, null, null, null, null,
                                       null, null, null, null, I64(n), I64(m), I64(d), 0, 0, 0, 0, WAVE_SMS) == 0
        assert LIB.emu_hard_mining_bwd(dtype, dtype, null, I64(1), null, I64(1), null, null, null, null, null, null,
                                       null, null, null, null, I64(n), I64(m), I64(d), 0) == 0
        assert LIB.emu_hetero_center_fwd(dtype, null, null, null, null, null, null, null, null, null, null, I64(2),
                                         I64(n), I64(d), 1, 1, ctypes.c_double(0.0)) == 0
        assert LIB.emu_hetero_center_bwd(dtype, null, null, null, null, null, null, null, null, null, I64(1), I64(0),
                                         null, null, I64(2), I64(n), I64(d), 1, 1) == 0
    f32 = ctypes.c_float(1.0)
    assert LIB.emu_normalized_ce_grad_f32(null, I64(n), I64(m), I64(0), I64(m), null, null, null, null, null, null, f32,
                                          f32, null, 0, null, null, null) == 0
    assert LIB.emu_normalized_ce_row_norms_f32(0, null, I64(n), I64(d), I64(d), I64(1), null, null) == 0
    assert LIB.emu_normalized_ce_unit_rows_f32(null, I64(n), null, 0, null, I64(d), 0, null) == 0  # inv only
    unread = ctypes.c_void_p(64)  # a dry run reads no pointer; x non-null selects the unit-rows kernel
    assert LIB.emu_normalized_ce_unit_rows_f32(null, I64(n), null, 0, unread, I64(d), 0, unread) == 0
    assert LIB.emu_normalized_ce_grad_x_f32(null, 0, null, null, null, null, null, null, f32, I64(n), I64(d), null) == 0


def test_zero_feature_dimension_launches_nothing(dry_run):
    """D = 0: no zero-sized grid (an invalid launch on a GPU)."""
    null = ctypes.c_void_p(0)
    assert LIB.emu_pairwise_distance_bwd_side(0, null, null, null, null, null, null, null, I64(5), I64(3), I64(0),
                                              I64(3), I64(1), I64(3), I64(1), 0, WAVE_SMS) == 0
    assert LIB.emu_hard_mining_bwd(0, 0, null, I64(1), null, I64(1), null, null, null, null, null, null, null, null,
                                   null, null, I64(5), I64(3), I64(0), 0) == 0
    assert LIB.emu_hetero_center_bwd(0, null, null, null, null, null, null, null, null, null, I64(1), I64(0), null,
                                     null, I64(1), I64(5), I64(0), 1, 0) == 0
    assert LIB.emu_normalized_ce_weight_grad_f32(null, 0, null, null, ctypes.c_float(1.0), I64(5), I64(0), null) == 0
    assert LIB.emu_normalized_ce_grad_x_f32(null, 0, null, null, null, null, null, null, ctypes.c_float(1.0), I64(5),
                                            I64(0), null) == 0
