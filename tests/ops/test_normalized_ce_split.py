"""The Triton normalized cross-entropy split over classes (forward) and rows (grad kernel), and its grids.

Under the interpreter the tests shrink the tiles to 16 classes (``small_tiles``), so that a problem of a
few hundred classes has many tiles and a forced split count puts split boundaries where a test wants
them: next to the target, in the last (partial) tile, past the last tile (empty splits). Every split
count must give what `reference` gives, on the loss, the log-sum-exp and both input gradients.
"""
import os

import pytest
import torch
import triton

import vtreid.ops as ops
from vtreid.kernels import _launch
from vtreid.kernels import normalized_softmax as k
from vtreid.kernels._launch import configs_for
from vtreid.ops import reference
from vtreid.ops.normalized_softmax import FUSED

from support import assert_matches, require_backend
from test_normalized_softmax import ce_and_grads, check, grad_scales, problem

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="runs the Triton interpreter")

TILE = 16  # classes (and rows) per tile under small_tiles
SPLIT_COUNTS = (1, 2, 5, 64)  # 64: more splits than tiles, so some splits own no class (or no row)

#: The training shapes the grids must fill a 132-SM GPU at (SYSU-MM01: 395 identities; a 100000-class head).
TRAINING = [dict(n=256, c=395, d=2048), dict(n=256, c=100000, d=2048)]


@pytest.fixture(autouse=True)
def _triton():
    require_backend("triton", "cpu", torch.float32)


@pytest.fixture
def small_tiles(monkeypatch):
    for kernel in (k._nce_fwd_kernel, k._nce_grad_kernel):
        monkeypatch.setattr(kernel, "configs", [triton.Config({"BLOCK_N": TILE, "BLOCK_C": TILE, "BLOCK_D": 16},
                                                              num_warps=4)])
        monkeypatch.setattr(kernel, "cache", {})


class Grids:
    """Records the grid of every launch of the two split kernels."""

    def __init__(self, monkeypatch):
        self.grids = {"fwd": [], "grad": []}
        for name, kernel in (("fwd", k._nce_fwd_kernel), ("grad", k._nce_grad_kernel)):
            real = kernel.fn.run

            def run(*args, grid, _name=name, _real=real, **kwargs):
                self.grids[_name].append(tuple(grid(kwargs)))
                return _real(*args, grid=grid, **kwargs)
            monkeypatch.setattr(kernel.fn, "run", run)


def force(monkeypatch, splits, grad_splits=None):
    monkeypatch.setattr(k, "FWD_SPLITS", splits)
    monkeypatch.setattr(k, "GRAD_SPLITS", splits if grad_splits is None else grad_splits)


def reference_lse(x, w, scale):
    z = reference.normalized_logits(x.double(), w.double(), scale)
    return torch.logsumexp(z, dim=1)


def check_split(x, w, target, scale=14.0, smoothing=0.1, dtype=torch.float32):
    """Loss, lse and both gradients against reference (per row: reduction none)."""
    check("triton", "cpu", dtype, x, w, target, scale=scale, label_smoothing=smoothing, reduction="none")
    with torch.no_grad():
        out = FUSED["triton"].forward(x, w, target, scale, smoothing)
    assert_matches(out[1].double(), reference_lse(x, w, scale), torch.float32, "lse")
    for t in out[:6]:
        assert not t.isnan().any()
    return out


@pytest.mark.parametrize("splits", SPLIT_COUNTS)
@pytest.mark.parametrize("smoothing", (0.0, 0.1))
def test_forced_splits_match_reference(small_tiles, monkeypatch, splits, smoothing):
    force(monkeypatch, splits)
    grids = Grids(monkeypatch)
    x, w, target = problem(37, 150, 20, "cpu", seed=splits)  # 10 class tiles (the last one partial), 3 row tiles
    check_split(x, w, target, smoothing=smoothing)
    assert {g[1] for g in grids.grids["fwd"]} == {splits}
    assert {g[1] for g in grids.grids["grad"]} == {splits}


def _boundaries(c, splits):
    """First class of every split but the first (the kernel's tile assignment, tiles of TILE classes)."""
    tiles = triton.cdiv(c, TILE)
    return [(s * tiles // splits) * TILE for s in range(1, splits)]


@pytest.mark.parametrize("splits", (2, 3, 5))
def test_target_next_to_split_boundaries(small_tiles, monkeypatch, splits):
    """Targets on both sides of each split boundary, in the middle of a tile, in the last partial tile
    (the last split) and at the last class."""
    force(monkeypatch, splits)
    c = 150
    x, w, target = problem(40, c, 12, "cpu", seed=20 + splits)
    classes = [0, TILE // 2, c - 1, c - 3]
    for b in _boundaries(c, splits):
        classes += [b - 1, b, b + TILE // 2]
    target[:len(classes)] = torch.tensor(classes)
    w[c - 1] *= 3.0  # the last class is a big logit for some rows
    check_split(x, w, target, smoothing=0.1)
    check_split(x, w, target, smoothing=0.0)


@pytest.mark.parametrize("c", (1, 5, TILE))
def test_classes_within_one_tile(small_tiles, monkeypatch, c):
    force(monkeypatch, 3)  # two of three splits own nothing
    x, w, target = problem(19, c, 9, "cpu", seed=c)
    check_split(x, w, target, smoothing=0.1)
    check_split(x, w, target, smoothing=0.0)


@pytest.mark.parametrize("splits", (1, 4))
def test_zero_rows_and_large_scale(small_tiles, monkeypatch, splits):
    """s = 64: z spans [-64, 64], so exp(z) without the max subtraction overflows float32 far less than
    sums of exp would lose; zero rows of x and W give z = 0."""
    force(monkeypatch, splits)
    x, w, target = problem(21, 70, 8, "cpu", seed=30)
    x[3] = 0.0
    w[5] = 0.0
    w[40] = 0.0
    target[0] = 5
    target[1] = 40
    x[4] = w[target[4]] * 7.0  # cos = 1: the target logit is the maximum, s
    for scale in (14.0, 64.0):
        check_split(x, w, target, scale=scale, smoothing=0.1)


def test_nan_row_stays_in_its_row(small_tiles, monkeypatch):
    force(monkeypatch, 4)
    x, w, target = problem(9, 70, 8, "cpu", seed=31)
    x[2, 3] = float("nan")
    with torch.no_grad():
        loss, lse = FUSED["triton"].forward(x, w, target, 14.0, 0.0)[:2]
    assert loss[2].isnan() and lse[2].isnan()
    keep = torch.arange(9) != 2
    assert loss[keep].isfinite().all() and lse[keep].isfinite().all()


@pytest.mark.parametrize("dtype", (torch.float32, torch.float16))
def test_row_chunks_with_splits(small_tiles, monkeypatch, dtype):
    """The backward in several row chunks (float32 accumulation of grad_w across chunks; for float16 the
    fused-epilogue GEMM accumulating in place) with split grad kernels."""
    force(monkeypatch, 3, grad_splits=2)
    monkeypatch.setattr(k, "MAX_CHUNK_ELEMENTS", 20 * 70)  # 20 rows per chunk: 3 chunks of 45 rows
    x, w, target = problem(45, 70, 24, "cpu", dtype, seed=32)
    check_split(x, w, target, smoothing=0.1, dtype=dtype)


def test_float16_matches_with_splits(small_tiles, monkeypatch):
    force(monkeypatch, 5)
    x, w, target = problem(33, 150, 40, "cpu", torch.float16, seed=33)
    check_split(x, w, target, smoothing=0.1, dtype=torch.float16)


def test_float16_backward_copies_no_weight(small_tiles, monkeypatch):
    """No float32 copy of W on the float16 path: W is only read by kernels."""
    x, w, target = problem(20, 150, 40, "cpu", torch.float16, seed=34)
    with torch.no_grad():
        out = FUSED["triton"].forward(x, w, target, 14.0, 0.1)
    copies = []
    real_to, real_float = torch.Tensor.to, torch.Tensor.float

    def spy_to(self, *args, **kwargs):
        if self.data_ptr() == w.data_ptr():
            copies.append("to")
        return real_to(self, *args, **kwargs)

    def spy_float(self, *args, **kwargs):
        if self.data_ptr() == w.data_ptr():
            copies.append("float")
        return real_float(self, *args, **kwargs)
    monkeypatch.setattr(torch.Tensor, "to", spy_to)
    monkeypatch.setattr(torch.Tensor, "float", spy_float)
    gx, gw = k.cross_entropy_backward(torch.ones(20), x, w, target, *out[1:], 14.0, 0.1)
    assert not copies and gx.dtype == gw.dtype == torch.float16


@pytest.mark.parametrize("splits", (1, 5, 64))
def test_deterministic(small_tiles, monkeypatch, splits):
    force(monkeypatch, splits)
    x, w, target = problem(37, 150, 20, "cpu", seed=40)
    first = ce_and_grads("triton", x, w, target, torch.ones(37), scale=14.0, label_smoothing=0.1, reduction="none")
    second = ce_and_grads("triton", x, w, target, torch.ones(37), scale=14.0, label_smoothing=0.1, reduction="none")
    assert all(torch.equal(a, b) for a, b in zip(first[:3], second[:3]))


def test_split_counts_agree(small_tiles, monkeypatch):
    """Every split count gives the one-split result up to float32 rounding of the merge."""
    x, w, target = problem(30, 150, 20, "cpu", seed=41)
    results = []
    for splits in SPLIT_COUNTS:
        force(monkeypatch, splits)
        results.append(ce_and_grads("triton", x, w, target, torch.ones(30), scale=14.0, label_smoothing=0.1,
                                    reduction="none"))
    sx, sw = grad_scales(x, w)
    for got in results[1:]:
        assert_matches(got[0], results[0][0], torch.float32, "loss")
        assert_matches(got[1], results[0][1], torch.float32, "grad x", sx)
        assert_matches(got[2], results[0][2], torch.float32, "grad w", sw)


def test_default_split_count_comes_from_splits_for(small_tiles, monkeypatch):
    grids = Grids(monkeypatch)
    x, w, target = problem(20, 150, 8, "cpu", seed=42)
    ops.normalized_cross_entropy(x.requires_grad_(), w, target, scale=14.0, backend="triton").backward()
    # 2 row blocks x 10 class tiles: splits_for(2, 10, 132) = 10; grad: 10 class tiles x 2 row tiles -> 2
    assert grids.grids["fwd"] == [(2, _launch.splits_for(2, 10, _launch.WAVE_SMS))] == [(2, 10)]
    assert grids.grids["grad"] == [(10, 2)]


def test_zero_rows_batch(small_tiles):
    x, w, target = problem(0, 40, 8, "cpu")
    out = FUSED["triton"].forward(x, w, target, 14.0, 0.1)
    torch.testing.assert_close(out[5], (w * w).sum(1))
    gx, gw = k.cross_entropy_backward(torch.ones(0), x, w, target, *out[1:], 14.0, 0.1)
    assert gx.shape == (0, 8) and torch.equal(gw, torch.zeros_like(w))


# --- grids at the training shapes, every GPU config -----------------------------------------------------

def _kept(configs, grid_fn, shape, sms):
    """The configs the autotuner's prune keeps at ``shape`` (as kernels/normalized_softmax does it)."""
    full = [c for c in configs if k._programs(grid_fn(shape["n"], shape["c"], c.kwargs, sms)) >= sms]
    return full or list(configs)


@pytest.mark.parametrize("dtype", (torch.float32, torch.float16, torch.bfloat16), ids=str)
@pytest.mark.parametrize("which", ("fwd", "grad"))
@pytest.mark.parametrize("shape", TRAINING, ids=lambda s: f"C{s['c']}")
def test_training_grids_fill_one_wave(which, shape, dtype):
    """At N = 256 (D = 2048) every config the tuner may pick for the inputs' precision launches at least
    one program per SM of a 132-SM GPU: at C = 100000 every config of that precision, at C = 395 the
    small-tile ones (the large tiles give 16 programs there and are pruned for that shape; at least two
    configs remain to tune over). A launch never gets the other precision's configs (not compiled for its
    dtype in the spill table)."""
    kernel, grid_fn = (k._nce_fwd_kernel, k.forward_grid) if which == "fwd" else (k._nce_grad_kernel, k.grad_grid)
    sms = _launch.WAVE_SMS
    own = configs_for(kernel.dtype_configs, dtype)
    kept = _kept(own, grid_fn, shape, sms)
    assert len(kept) >= 2
    if shape["c"] >= 100000:
        assert len(kept) == len(own)
    for cfg in kept:
        grid = grid_fn(shape["n"], shape["c"], cfg.kwargs, sms)
        assert k._programs(grid) >= sms, (cfg, grid)
        for count, limit in zip(grid, _launch.GRID_LIMITS):
            assert 1 <= count <= limit
    # the prune the kernel really runs agrees with _kept
    x = torch.empty(shape["n"], shape["d"], dtype=dtype)
    prune = kernel.early_config_prune
    assert prune(kernel.gpu_configs, {"X": x, "N": shape["n"], "C": shape["c"]}) == kept


def test_mm_grid_fills_one_wave():
    meta = {"BLOCK_M": 32, "BLOCK_D": 64}
    assert k.mm_grid(256, 2048, meta)[0] >= _launch.WAVE_SMS  # grad_x
    assert k.mm_grid(395, 2048, meta)[0] >= _launch.WAVE_SMS  # grad_w
    for rows in (256, 395):  # the epilogues of grad_x and grad_w
        assert k.mm_grid(rows, 2048, k.EPILOGUE_META)[0] >= _launch.WAVE_SMS
