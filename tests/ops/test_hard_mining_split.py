"""The Triton hard-mining launches: the forward split over candidates, the combine, and the three-launch backward.

Under the interpreter the one interpreter config (BLOCK_N 16, BLOCK_M 32) tiles the candidates in 32s, so
forcing a split count places candidate tiles in chosen splits: ties, NaN and inf rows are put on both sides
of split boundaries. Every count must give exactly what one split gives, and what `reference` gives.
"""
import os

import pytest
import torch

import vtreid.ops as ops
from vtreid.kernels import _launch
from vtreid.kernels import hard_mining as k

from support import TOLERANCES, AtenOps, Launches, assert_matches, require_backend
from test_hard_mining import METRICS, check, make_batch, mine

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="runs the Triton interpreter")

TILE = k._FWD_CONFIGS[1]["BLOCK_M"]  # candidates per tile under the interpreter
SPLIT_COUNTS = (1, 2, 3, 64)  # 64: more than the tiles of every case here, so clamped to one tile per split


@pytest.fixture(autouse=True)
def _triton():
    require_backend("triton", "cpu", torch.float32)


def forced(monkeypatch, splits):
    monkeypatch.setattr(k, "SPLITS", splits)


def run_all(backend, anchors, labels, candidates=None, cand_labels=None, grads=None, **kw):
    out, ga, gc, grads = mine(backend, anchors, labels, candidates, cand_labels, grads, **kw)
    return [*out, ga] + ([] if gc is None else [gc]), grads


def assert_same(first, second, what):
    for i, (a, b) in enumerate(zip(first, second)):
        assert a.dtype == b.dtype and torch.equal(a.isnan(), b.isnan()), f"{what}: output {i}"
        assert torch.equal(a[~a.isnan()], b[~b.isnan()]), f"{what}: output {i} differs\n{a}\n{b}"


# --- the split count changes nothing ----------------------------------------------------------------

@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("rules", [("any", "any"), ("cross", "same")], ids=lambda r: f"{r[0]}-{r[1]}")
def test_forced_splits_match_reference_and_one_split(monkeypatch, metric, rules):
    kw = dict(metric=metric, positive=rules[0], negative=rules[1])
    for n, d, ids, m in ((47, 33, 6, None), (130, 7, 20, None), (9, 16, 4, 300)):
        x, labels, modality = make_batch(n, d, ids, "cpu", seed=n)
        args = (x, labels)
        extra = dict(kw, anchor_modality=modality)
        if m is not None:
            c, lc, mc = make_batch(m, d, ids, "cpu", seed=m)
            args = (x, labels, c, lc)
            extra["candidate_modality"] = mc
        # every count gives bitwise what one split gives, so one comparison with the reference covers all
        forced(monkeypatch, 2)
        check("triton", "cpu", torch.float32, *args, **extra)
        results, grads = [], None
        for splits in SPLIT_COUNTS:
            forced(monkeypatch, splits)
            launches = Launches(monkeypatch, k)
            got, grads = run_all("triton", *args, grads=grads, **extra)
            blocks, used = launches.grid("_mining_fwd_kernel")
            tiles = -(-(m or n) // TILE)
            assert used == min(splits, tiles), (splits, used)
            assert ("_mining_combine_kernel" in launches.names()) == (used > 1)
            results.append(got)
        for splits, got in zip(SPLIT_COUNTS[1:], results[1:]):
            assert_same(results[0], got, f"N={n} splits={splits} vs 1")


@pytest.mark.parametrize("splits", SPLIT_COUNTS)
def test_norms_are_written_once_and_right(monkeypatch, splits):
    x, labels, _ = make_batch(70, 40, 5, "cpu", seed=3)
    c, lc, _ = make_batch(200, 40, 5, "cpu", seed=4)
    out = k.forward(x, labels, c, lc, None, None, "euclidean", "any", "any", False, 1e-6, splits=splits)
    ref = k.forward(x, labels, c, lc, None, None, "euclidean", "any", "any", False, 1e-6, splits=1)
    torch.testing.assert_close(out[5], (x.double() ** 2).sum(1).float())
    torch.testing.assert_close(out[6], (c.double() ** 2).sum(1).float())
    assert_same(out, ref, f"splits={splits}")


@pytest.mark.parametrize("splits", SPLIT_COUNTS)
def test_input_dtype_distances_come_from_the_last_launch(splits):
    """float16 anchors: with one split the forward kernel writes the float16 distances, with more the
    combine does; either way they are the float32 results rounded once, invalid anchors included."""
    x, labels, _ = make_batch(70, 40, 5, "cpu", torch.float16, seed=3)
    c, lc, _ = make_batch(200, 40, 5, "cpu", torch.float16, seed=4)
    labels[0] = 99  # no positive: invalid, distance 0 in both copies
    out = k.forward(x, labels, c, lc, None, None, "euclidean", "any", "any", False, 1e-6, splits=splits)
    assert out[0].dtype == out[2].dtype == torch.float16 and out[7].dtype == out[8].dtype == torch.float32
    assert torch.equal(out[0], out[7].half()) and torch.equal(out[2], out[8].half())
    assert not out[4][0] and out[0][0] == 0 and out[2][0] == 0
    ref = k.forward(x, labels, c, lc, None, None, "euclidean", "any", "any", False, 1e-6, splits=1)
    assert_same(out, ref, f"splits={splits}")


# --- awkward inputs across split boundaries ---------------------------------------------------------

def _tie_bank():
    """Candidates in 8 tiles: id-0 rows at distance 3 and id-1 rows at 5 from the anchor (the origin),
    with exact ties of the farthest positive (4) and nearest negative (1) in different tiles."""
    m = 8 * TILE
    cands = torch.zeros(m, 2)
    labels = torch.zeros(m, dtype=torch.long)
    labels[1::2] = 1
    cands[0::2, 0] = 3.0
    cands[1::2, 0] = 5.0
    pos_ties = (TILE + 8, 3 * TILE + 2, 7 * TILE + 30)        # tiles 1, 3, 7
    neg_ties = (2 * TILE + 31, 2 * TILE + 33, 6 * TILE + 1)    # both sides of the tile 2 | 3 boundary, tile 6
    for i in pos_ties:
        cands[i] = torch.tensor([0.0, 4.0])
    for i in neg_ties:
        cands[i] = torch.tensor([-1.0, 0.0])
    return cands, labels, pos_ties[0], neg_ties[0]


@pytest.mark.parametrize("splits", (1, 2, 3, 5, 8))
@pytest.mark.parametrize("metric", ("euclidean", "sqeuclidean"))
def test_ties_across_splits_pick_lowest_index(monkeypatch, splits, metric):
    """Small integer features: every distance is exact, so the ties are exact in every split."""
    forced(monkeypatch, splits)
    cands, labels, pos_first, neg_first = _tie_bank()
    out = ops.hard_mining(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), cands, labels, metric=metric,
                          backend="triton")
    ref = ops.hard_mining(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), cands, labels, metric=metric,
                          backend="reference")
    assert out.pos_index.tolist() == [pos_first] == ref.pos_index.tolist()
    assert out.neg_index.tolist() == [neg_first] == ref.neg_index.tolist()
    assert torch.equal(out.pos_dist, ref.pos_dist) and torch.equal(out.neg_dist, ref.neg_dist)


@pytest.mark.parametrize("splits", (1, 2, 4, 8))
def test_duplicate_rows_in_different_splits(monkeypatch, splits):
    """Self-mining a batch whose second half repeats its first: every distance has a twin in another
    split; the lowest index must win for every anchor and the gradients must match the reference."""
    forced(monkeypatch, splits)
    half, labels_half, modality = make_batch(4 * TILE // 2, 12, 5, "cpu", seed=8)
    x = torch.cat([half, half])
    labels = torch.cat([labels_half, labels_half])
    out = check("triton", "cpu", torch.float32, x, labels, metric="sqeuclidean")
    ref = ops.hard_mining(x, labels, metric="sqeuclidean", backend="reference")
    assert torch.equal(out.pos_index, ref.pos_index) and torch.equal(out.neg_index, ref.neg_index)


@pytest.mark.parametrize("splits", (1, 2, 4, 8))
def test_nan_and_inf_rows_across_splits(monkeypatch, splits):
    """NaN candidates in tiles 5 and 2: the lowest-index NaN wins from any split, over finite and infinite
    distances found in earlier splits. Infinite candidates are real ones: an anchor whose only positive
    is infinitely far is valid and mines it."""
    forced(monkeypatch, splits)
    m = 8 * TILE
    g = torch.Generator().manual_seed(0)
    cands = torch.randn(m, 6, generator=g)
    labels = torch.randint(0, 3, (m,), generator=g)
    cands[5 * TILE + 3, 2] = float("nan")
    cands[2 * TILE + 17, 0] = float("nan")
    labels[5 * TILE + 3], labels[2 * TILE + 17] = 1, 0
    cands[6 * TILE + 9, 4] = float("inf")
    labels[6 * TILE + 9] = 7  # the only candidate of id 7
    cands[7 * TILE + 1, 1] = float("-inf")
    anchors = torch.randn(5, 6, generator=g)
    anchors[3, 4] = -1.0  # |a|^2 + inf - 2 a.c = +inf for the infinite row (a positive a_4 would give inf - inf)
    alabels = torch.tensor([0, 1, 2, 7, 8])  # id 7: only an infinite positive; id 8: no positive at all
    for metric in METRICS:
        got = ops.hard_mining(anchors, alabels, cands, labels, metric=metric, backend="triton")
        ref = ops.hard_mining(anchors, alabels, cands, labels, metric=metric, backend="reference")
        for field in ("pos_index", "neg_index", "valid"):
            assert torch.equal(getattr(got, field), getattr(ref, field)), (metric, field)
        for field in ("pos_dist", "neg_dist"):
            torch.testing.assert_close(getattr(got, field), getattr(ref, field), equal_nan=True)
        # the NaN rows are everyone's hardest: id 0's positive / id 1's negative at 2T+17 (split <= 2),
        # id 1's positive at 5T+3 (a later split), id 2's negative at 2T+17 (the lowest NaN)
        assert got.pos_index[:2].tolist() == [2 * TILE + 17, 5 * TILE + 3]
        assert got.neg_index[:3].tolist() == [5 * TILE + 3, 2 * TILE + 17, 2 * TILE + 17]
    # id 7 against the bank without NaN rows: its positive is infinitely far, and found
    clean = cands.clone()
    clean[5 * TILE + 3, 2] = clean[2 * TILE + 17, 0] = 0.0
    got = ops.hard_mining(anchors[3:4], alabels[3:4], clean, labels, metric="euclidean", backend="triton")
    ref = ops.hard_mining(anchors[3:4], alabels[3:4], clean, labels, metric="euclidean", backend="reference")
    assert got.valid.item() and got.pos_index.item() == 6 * TILE + 9 and got.pos_dist.item() == float("inf")
    assert torch.equal(got.pos_index, ref.pos_index) and torch.equal(got.pos_dist, ref.pos_dist)


@pytest.mark.parametrize("splits", (1, 3, 64))
def test_invalid_anchors_and_tiny_shapes(monkeypatch, splits):
    forced(monkeypatch, splits)
    # anchors without a positive (singleton ids) or without a negative (one id) among valid ones
    x, _, modality = make_batch(3 * TILE + 5, 9, 1, "cpu", seed=11)
    labels = torch.arange(len(x)) % 4
    labels[:7] = 100 + torch.arange(7)
    out = check("triton", "cpu", torch.float32, x, labels)
    assert not out.valid[:7].any() and out.valid[7:].all()
    out = check("triton", "cpu", torch.float32, x, torch.zeros(len(x), dtype=torch.long))
    assert not out.valid.any()
    # N = 1 against a bank of several splits; M smaller than one tile (one split whatever is asked)
    c, lc, _ = make_batch(4 * TILE, 9, 3, "cpu", seed=12)
    check("triton", "cpu", torch.float32, x[:1], lc[:1], c, lc)
    launches = Launches(monkeypatch, k)
    check("triton", "cpu", torch.float32, x[:6], lc[:6], c[:5], lc[:5])
    assert launches.grid("_mining_fwd_kernel")[1] == 1 and "_mining_combine_kernel" not in launches.names()
    check("triton", "cpu", torch.float32, x[:1], lc[:1], c[:1], lc[:1])


def test_float16_with_splits(monkeypatch):
    forced(monkeypatch, 4)
    x, labels, modality = make_batch(64, 96, 8, "cpu", torch.float16, seed=5)
    check("triton", "cpu", torch.float16, x, labels, anchor_modality=modality, positive="cross", negative="any")


# --- grid -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("n,m", [(1, 1), (5, 1000), (256, 256), (1000, 7), (3, 2**20)])
@pytest.mark.parametrize("splits", (None, 1, 2, 7, 10**6))
def test_forward_grid_splits_cover_every_tile_once(n, m, splits):
    for config in k._FWD_CONFIGS[0]:
        meta = config.kwargs
        blocks, used = k.forward_grid(n, m, 2048, meta, 132, splits)
        tiles = -(-m // meta["BLOCK_M"])
        assert blocks == -(-n // meta["BLOCK_N"]) and 1 <= used <= min(tiles, _launch.GRID_LIMITS[1])
        if splits is not None:
            assert used == min(splits, tiles, _launch.GRID_LIMITS[1])
        ranges = [(s * tiles // used, (s + 1) * tiles // used) for s in range(used)]  # as the kernel cuts them
        assert all(b < e for b, e in ranges) and ranges[0][0] == 0 and ranges[-1][1] == tiles
        assert all(ranges[i][1] == ranges[i + 1][0] for i in range(used - 1))


@pytest.mark.parametrize("dtype", (torch.float32, torch.float16, torch.bfloat16))
def test_grids_at_the_training_shapes(dtype):
    """N = M = 256, D = 2048 on 132 SMs: every config the autotuner keeps for the dtype gives a full wave
    (the candidate splits make up for the few anchor blocks), and both backward launches do."""
    n = m = 256
    d, sms = 2048, 132
    kernel = k._mining_fwd_kernel
    kept = kernel.early_config_prune(list(kernel.gpu_configs), {"A": torch.empty(0, dtype=dtype), "N": n, "M": m,
                                                                "D": d})
    assert kept and all(any(c is own for own in k.configs_for(dtype)) for c in kept)
    for config in kept:
        blocks, splits = k.forward_grid(n, m, d, config.kwargs, sms)
        assert blocks * splits >= sms, config
    for name, (grid, _) in k.backward_grids(n, m, d).items():
        assert grid[0] * grid[1] >= sms, (name, grid)
    # at large sizes every config of the precision stays a candidate
    big = kernel.early_config_prune(list(kernel.gpu_configs), {"A": torch.empty(0, dtype=dtype), "N": 8192,
                                                               "M": 8192, "D": d})
    assert len(big) == len(k.configs_for(dtype))


# --- launches, determinism, indices that are not pairs ----------------------------------------------

@pytest.mark.parametrize("d", (7, 40))
def test_backward_is_two_launches_without_sort(monkeypatch, d):
    x, labels, _ = make_batch(130, d, 6, "cpu", seed=2)
    c, lc, _ = make_batch(90, d, 6, "cpu", seed=3)
    launches = Launches(monkeypatch, k)
    with AtenOps(launches) as aten:
        _, pi, _, ni, valid, asq, csq, pd, nd = k.forward(x, labels, c, lc, None, None, "euclidean", "any", "any",
                                                          False, 1e-6, splits=3)
    assert launches.names() == ["_mining_fwd_kernel", "_mining_combine_kernel"] and aten.ops == [], aten.ops
    sorts = []
    real_sort = torch.sort
    monkeypatch.setattr(torch, "sort", lambda *a, **kw: sorts.append(1) or real_sort(*a, **kw))
    launches = Launches(monkeypatch, k)
    grad, expanded = torch.randn(130), torch.ones(()).expand(130)
    with AtenOps(launches) as aten:
        # an expanded (stride 0) upstream gradient is read in place, not copied
        got = k.backward(grad, expanded, x, c, pi, ni, pd, nd, asq, csq, "euclidean")
    assert launches.names() == ["_mining_pair_grad_kernel", "_candidate_grad_kernel"], launches.names()
    assert aten.ops == [] and not sorts and "sort" not in aten.ops, aten.ops
    assert len(launches.triton) + len(aten.ops) <= 3
    want = k.backward(grad, expanded.contiguous(), x, c, pi, ni, pd, nd, asq, csq, "euclidean")
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_backward_through_autograd_launches_at_most_three_kernels(monkeypatch):
    x, labels, _ = make_batch(100, 20, 4, "cpu", seed=6)
    xa = x.clone().requires_grad_()
    out = ops.hard_mining(xa, labels, backend="triton")
    loss = out.pos_dist.sum() - out.neg_dist.sum()
    launches = Launches(monkeypatch, k)
    loss.backward()
    assert len(launches.triton) <= 3 and "_candidate_grad_kernel" in launches.names(), launches.names()


def test_half_distances_cost_no_cast_launch(monkeypatch):
    """float16 anchors: the public op returns the kernels' own float16 distances, and their gradients
    reach the backward kernels as they come: no conversion (_to_copy) forward or backward."""
    x, labels, _ = make_batch(100, 20, 4, "cpu", torch.float16, seed=6)
    xa = x.clone().requires_grad_()
    launches = Launches(monkeypatch, k)
    with AtenOps(launches) as aten:
        out = ops.hard_mining(xa, labels, backend="triton")
        (out.pos_dist.sum() + out.neg_dist.sum()).backward()
    assert out.pos_dist.dtype == torch.float16 and xa.grad.dtype == torch.float16
    assert "_to_copy" not in aten.ops and "copy_" not in aten.ops, aten.ops
    assert launches.names()[-2:] == ["_mining_pair_grad_kernel", "_candidate_grad_kernel"], launches.names()


@pytest.mark.parametrize("d", (5, 64))
@pytest.mark.parametrize("splits", (1, 4))
def test_backward_is_bitwise_reproducible(monkeypatch, d, splits):
    """3 identities over 200 anchors: each candidate sums many pair terms."""
    forced(monkeypatch, splits)
    x, labels, _ = make_batch(200, d, 3, "cpu", seed=4)
    grads = (torch.randn(200), torch.randn(200))
    first, _ = run_all("triton", x, labels, x.flip(0), labels.flip(0), grads, metric="euclidean")
    second, _ = run_all("triton", x, labels, x.flip(0), labels.flip(0), grads, metric="euclidean")
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_nonfinite_anchor_reaches_only_the_candidates_it_chose():
    """A zero weight times NaN is NaN: the candidate gradient's product must not carry a NaN / inf anchor
    row to candidates that anchor did not choose. (The reference's dense backward spreads it to every
    candidate, so it is no oracle here; an anchor's choice does not depend on the other anchors, so the
    reference without the non-finite anchors is.)"""
    a, la, _ = make_batch(40, 24, 4, "cpu", seed=7)
    c, lc, _ = make_batch(70, 24, 4, "cpu", seed=8)
    bad = [3, 11]
    a[3, 5] = float("nan")
    a[11, 17] = float("inf")
    good = torch.ones(40, dtype=torch.bool)
    good[bad] = False
    grads = (torch.randn(40), torch.randn(40))
    for metric in METRICS:
        out, ga, gc, _ = mine("triton", a, la, c, lc, grads, metric=metric)
        _, ra, rc, _ = mine("reference", a[good], la[good], c, lc, (grads[0][good], grads[1][good]), metric=metric)
        reached = torch.zeros(70, dtype=torch.bool)
        for index in (out.pos_index[bad], out.neg_index[bad]):
            reached[index[index >= 0]] = True
        assert reached.any() and not reached.all()
        assert gc[~reached].isfinite().all(), f"{metric}: a non-finite anchor reached a candidate it did not choose"
        assert (~gc.isfinite()).any(), f"{metric}: the chosen candidates see the non-finite anchor"
        assert_matches(gc[~reached], rc[~reached], torch.float32, f"{metric} grad candidates")
        assert_matches(ga[good], ra, torch.float32, f"{metric} grad anchors")


def test_indices_that_are_not_pairs_address_nothing():
    """Indices outside [0, M) in the backward are "no pair", like -1 (and read no memory)."""
    x, labels, _ = make_batch(6, 16, 2, "cpu", seed=9)
    c = torch.randn(4, 16)
    pi = torch.tensor([0, -1, 4, 2**40, -7, 3])
    ni = torch.tensor([1, 2, -1, 3, 10**6, -2])
    args = (torch.randn(6), torch.randn(6), x, c)
    rest = (torch.rand(6) + 0.5, torch.rand(6) + 0.5, (x * x).sum(1), (c * c).sum(1), "euclidean")
    got = k.backward(*args, pi, ni, *rest)
    clean_pi = torch.where((pi >= 0) & (pi < 4), pi, -1)
    clean_ni = torch.where((ni >= 0) & (ni < 4), ni, -1)
    want = k.backward(*args, clean_pi, clean_ni, *rest)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert got[0][1].abs().sum() > 0 and (got[0][4] == 0).all()  # anchor 4: no pair at all


def test_combine_alone_follows_the_fold_rule():
    """The combine on hand-made partial rows: lowest index on ties, the first NaN wins, inf is a
    candidate, -1 is none, invalid rows come out as (0, -1)."""
    nan, inf = float("nan"), float("inf")
    # per anchor, three splits of (pos value, pos index); candidate indices grow with the split
    pos = [[(1.0, 2), (1.0, 9), (0.5, 20)],       # tie across splits -> 2
           [(1.0, 2), (nan, 9), (nan, 20)],       # first NaN -> 9
           [(-inf, 3), (-inf, -1), (-inf, -1)],   # -inf is a real farthest positive -> 3
           [(-inf, -1), (-inf, -1), (-inf, -1)],  # no positive -> invalid
           [(nan, 1), (5.0, 9), (nan, 30)]]       # NaN in the first split stays
    neg = [[(3.0, 4), (3.0, 5), (inf, -1)]] * 5
    pd = torch.tensor([[p[s][0] for p in pos] for s in range(3)])
    pi = torch.tensor([[p[s][1] for p in pos] for s in range(3)])
    nd = torch.tensor([[q[s][0] for q in neg] for s in range(3)])
    ni = torch.tensor([[q[s][1] for q in neg] for s in range(3)])
    valid = torch.empty(5, dtype=torch.int8)
    pos_out, neg_out = torch.empty(5, dtype=torch.float16), torch.empty(5, dtype=torch.float16)
    k._mining_combine_kernel[k.combine_grid(5)](pd, pi, nd, ni, valid, pos_out, neg_out, 5, 3,
                                                BLOCK_N=k.COMBINE_BLOCK)
    assert pi[0].tolist() == [2, 9, 3, -1, 1] and ni[0].tolist() == [4, 4, 4, -1, 4]
    assert valid.tolist() == [1, 1, 1, 0, 1]
    assert pd[0, 0] == 1.0 and pd[0, 1].isnan() and pd[0, 2] == -inf and pd[0, 3] == 0 and pd[0, 4].isnan()
    assert nd[0].tolist()[:3] == [3.0, 3.0, 3.0] and nd[0, 3] == 0
    torch.testing.assert_close(pos_out, pd[0].half(), rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(neg_out, nd[0].half(), rtol=0, atol=0, equal_nan=True)
