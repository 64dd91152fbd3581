"""vtreid.ops.hard_mining: every backend against vtreid.ops.reference on values, indices and both gradients."""
import pytest
import torch

import vtreid.ops as ops
from vtreid.ops import reference
from vtreid.ops.hard_mining import FUSED

from support import DEVICES, FUSED_BACKENDS, TOLERANCES, assert_matches, dtypes_for, raw_modality, require_backend

METRICS = ("euclidean", "sqeuclidean", "cosine")
RULES = [("any", "any"), ("cross", "same"), ("cross", "cross"), ("same", "any"), ("any", "cross")]


def mine(backend, anchors, labels, candidates=None, cand_labels=None, grads=None, **kw):
    """(Mined, grad_anchors, grad_candidates or None, (gp, gn)) with fresh leaves."""
    a = anchors.detach().clone().requires_grad_(True)
    c = None if candidates is None else candidates.detach().clone().requires_grad_(True)
    out = ops.hard_mining(a, labels, c, cand_labels, backend=backend, **kw)
    if grads is None:
        grads = (torch.randn_like(out.pos_dist), torch.randn_like(out.neg_dist))
    leaves = (a,) if c is None else (a, c)
    got = torch.autograd.grad((out.pos_dist * grads[0]).sum() + (out.neg_dist * grads[1]).sum(), leaves,
                              allow_unused=True)
    got = [torch.zeros_like(leaf) if g is None else g for g, leaf in zip(got, leaves)]
    return out, got[0], (got[1] if c is not None else None), grads


def check(backend, device, dtype, anchors, labels, candidates=None, cand_labels=None, **kw):
    require_backend(backend, device, dtype)
    ref, ref_ga, ref_gc, grads = mine("reference", anchors, labels, candidates, cand_labels, **kw)
    out, ga, gc, _ = mine(backend, anchors, labels, candidates, cand_labels, grads, **kw)
    assert torch.equal(out.valid, ref.valid), f"{backend}: valid differs"
    assert out.pos_index.dtype == torch.int64 and out.neg_index.dtype == torch.int64
    assert out.pos_dist.dtype == anchors.dtype
    # An index may differ from the reference's only where the reference sees (numerically) equal distances.
    full = reference.distance_matrix(anchors.double(), (anchors if candidates is None else candidates).double(),
                                     kw.get("metric", "euclidean"))
    rows = torch.arange(len(anchors), device=anchors.device)
    tol = TOLERANCES[dtype]
    same_indices = True
    for name in ("pos_index", "neg_index"):
        mine_i, ref_i = getattr(out, name), getattr(ref, name)
        differ = (mine_i != ref_i) & ref.valid
        if differ.any():
            same_indices = False
            gap = (full[rows[differ], mine_i[differ]] - full[rows[differ], ref_i[differ]]).abs()
            assert (gap <= tol.atol * max(1.0, full.abs().max().item())).all(), f"{backend} {name}: not a tie"
        assert (mine_i[~out.valid] == -1).all()
    assert_matches(out.pos_dist, ref.pos_dist, dtype, f"{backend} pos_dist")
    assert_matches(out.neg_dist, ref.neg_dist, dtype, f"{backend} neg_dist")
    assert (out.pos_dist[~out.valid] == 0).all() and (out.neg_dist[~out.valid] == 0).all()
    if same_indices:
        assert_matches(ga, ref_ga, dtype, f"{backend} grad anchors", grad_scale(anchors, grads, kw))
        if gc is not None:
            assert_matches(gc, ref_gc, dtype, f"{backend} grad candidates", grad_scale(candidates, grads, kw))
    assert ga.isfinite().all() and (gc is None or gc.isfinite().all())
    return out


def grad_scale(x, grads, kw):
    """Cosine gradients are sums of terms of size |g| / |x|, which can dwarf the result."""
    if kw.get("metric") != "cosine":
        return None
    return (grads[0].abs().max() + grads[1].abs().max()).double() / x.double().norm(dim=1).clamp_min(1e-12)[:, None]


def make_batch(n, d, ids, device, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g).to(device, dtype)
    labels = torch.randint(0, ids, (n,), generator=g).to(device)
    modality = torch.randint(0, 2, (n,), generator=g).to(device)
    return x, labels, modality


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("rules", RULES, ids=lambda r: f"{r[0]}-{r[1]}")
def test_self_mining_matches_reference(device, backend, metric, rules):
    for n, d, ids in ((47, 33, 6), (130, 7, 20), (3, 129, 2)):
        x, labels, modality = make_batch(n, d, ids, device, seed=n)
        check(backend, device, torch.float32, x, labels, metric=metric, anchor_modality=modality,
              positive=rules[0], negative=rules[1])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("metric", METRICS)
def test_cross_batch_candidates(device, backend, metric):
    """Anchors against a separate memory bank, larger than one candidate block of every backend."""
    a, la, ma = make_batch(9, 16, 40, device, seed=1)
    c, lc, mc = make_batch(1100, 16, 40, device, seed=2)
    for rules in (("any", "any"), ("cross", "cross")):
        check(backend, device, torch.float32, a, la, c, lc, metric=metric, anchor_modality=ma, candidate_modality=mc,
              positive=rules[0], negative=rules[1])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("metric", METRICS)
def test_every_dtype(device, backend, metric):
    for dtype in dtypes_for(device, backend):
        x, labels, modality = make_batch(64, 96, 8, device, dtype, seed=5)
        check(backend, device, dtype, x, labels, metric=metric, anchor_modality=modality, positive="cross",
              negative="any")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", ("reference",) + FUSED_BACKENDS)
def test_awkward_label_sets(device, backend):
    require_backend(backend, device)
    x = torch.randn(6, 5, device=device)
    # singleton identities only: no positives anywhere
    out = check(backend, device, torch.float32, x, torch.arange(6, device=device)) if backend != "reference" else None
    # one identity: no negatives
    out = ops.hard_mining(x, torch.zeros(6, dtype=torch.long, device=device), backend=backend)
    assert not out.valid.any() and (out.pos_index == -1).all() and (out.neg_dist == 0).all()
    # one modality only: no cross-modality positive
    labels = torch.tensor([0, 0, 1, 1, 2, 2], device=device)
    out = ops.hard_mining(x, labels, anchor_modality=torch.zeros(6, dtype=torch.long, device=device),
                          positive="cross", backend=backend)
    assert not out.valid.any()
    # an anchor whose only same-label sample is itself is invalid; the others are valid
    labels = torch.tensor([0, 0, 1, 1, 2, 3], device=device)
    out = ops.hard_mining(x, labels, backend=backend)
    assert out.valid.tolist() == [True, True, True, True, False, False]
    if backend != "reference":
        check(backend, device, torch.float32, x, labels)
    # an empty memory bank: every anchor invalid, zero gradients
    xa = x.clone().requires_grad_()
    out = ops.hard_mining(xa, labels, torch.randn(0, 5, device=device), torch.zeros(0, dtype=torch.long,
                                                                                     device=device), backend=backend)
    assert not out.valid.any()
    (out.pos_dist.sum() + out.neg_dist.sum()).backward()
    assert (xa.grad == 0).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", ("reference",) + FUSED_BACKENDS)
def test_ties_pick_lowest_index(device, backend):
    """Small integer features: every dot product is exact in any order, so ties are exact everywhere."""
    require_backend(backend, device)
    anchors = torch.tensor([[0.0, 0.0], [1.0, 0.0]], device=device)
    cands = torch.tensor([[2.0, 0.0], [0.0, 2.0], [0.0, 1.0], [1.0, 0.0], [-2.0, 0.0], [0.0, -1.0]], device=device)
    cl = torch.tensor([0, 0, 1, 1, 0, 1], device=device)
    out = ops.hard_mining(anchors, torch.tensor([0, 1], device=device), cands, cl, backend=backend,
                          metric="sqeuclidean")
    # anchor 0 (id 0): positives at distance 4, 4, 4 -> index 0; negatives at 1, 1, 1 -> index 2
    # anchor 1 (id 1): positives 2 and 0 (itself is not excluded: candidates were given) -> 2;
    #                  negatives 1, 5, 9 -> 0
    assert out.pos_index.tolist() == [0, 2] and out.neg_index.tolist() == [2, 0]
    assert out.pos_dist.tolist() == [4.0, 2.0] and out.neg_dist.tolist() == [1.0, 1.0]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", ("reference",) + FUSED_BACKENDS)
def test_ties_across_candidate_tiles_pick_lowest_index(device, backend):
    """Exact ties placed in different candidate tiles / blocks of every backend (32 .. 1024 wide)."""
    require_backend(backend, device)
    m = 2100
    cands = torch.zeros(m, 2)
    cands[:, 0] = 3.0                                   # ordinary positives: distance 3
    labels = torch.zeros(m, dtype=torch.long)
    labels[1::2] = 1
    cands[1::2, 0] = 5.0                                # ordinary negatives: distance 5
    for i in (7 * 2, 517 * 2, 1030 * 2):                # farthest positives, tied at 4 (one per block)
        cands[i] = torch.tensor([0.0, 4.0])
    for i in (40 * 2 + 1, 600 * 2 + 1, 1049 * 2 + 1):   # nearest negatives, tied at 1
        cands[i] = torch.tensor([1.0, 0.0])
    out = ops.hard_mining(torch.zeros(1, 2, device=device), torch.zeros(1, dtype=torch.long, device=device),
                          cands.to(device), labels.to(device), metric="euclidean", backend=backend)
    assert out.pos_index.tolist() == [14] and out.neg_index.tolist() == [81]
    assert out.pos_dist.tolist() == [4.0] and out.neg_dist.tolist() == [1.0]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_label_and_modality_dtypes(device, backend):
    x, labels, modality = make_batch(40, 12, 5, device, seed=9)
    check(backend, device, torch.float32, x, labels.int(), anchor_modality=modality.bool(), positive="cross",
          negative="same")
    check(backend, device, torch.float32, x, labels, anchor_modality=modality.to(torch.uint8), positive="same",
          negative="cross")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_fused_op_reads_nonzero_int32_modality_as_infrared(device, backend):
    """The registered op takes int32 modality as given (no conversion launch) and reads 0 as visible and
    any other value as infrared, as every backend does; other dtypes are converted by the op itself."""
    require_backend(backend, device)
    op = FUSED[backend]
    x, labels, modality = make_batch(40, 12, 5, device, seed=21)
    c, lc, mc = make_batch(33, 12, 5, device, seed=22)
    raw_a = raw_modality(modality)
    raw_c = torch.where(mc == 0, 0, -5)
    for rules in (("cross", "same"), ("same", "cross")):
        want = op.forward(x, labels, c, lc, modality.int(), mc.int(), "euclidean", *rules, False)
        for am, cm in ((raw_a.int(), raw_c.int()), (raw_a, raw_c.to(torch.int8)), (raw_a.int(), raw_c.bool())):
            got = op.forward(x, labels, c, lc, am, cm, "euclidean", *rules, False)
            for g, w in zip(got[:5], want[:5]):
                assert torch.equal(g, w), (rules, am.dtype, cm.dtype)
    # a strided int32 view: the public op hands the kernels a contiguous one
    strided = torch.stack([modality.int(), 1 - modality.int()], 1)[:, 0]
    got = ops.hard_mining(x, labels, anchor_modality=strided, positive="cross", negative="same", backend=backend)
    want = ops.hard_mining(x, labels, anchor_modality=modality, positive="cross", negative="same", backend=backend)
    assert not strided.is_contiguous()
    assert torch.equal(got.pos_index, want.pos_index) and torch.equal(got.neg_index, want.neg_index)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_deterministic(device, backend):
    """Many anchors share candidates (3 identities), so candidate gradients sum many pair terms."""
    require_backend(backend, device)
    x, labels, modality = make_batch(200, 64, 3, device, seed=4)
    grads = (torch.randn(200, device=device), torch.randn(200, device=device))
    first = mine(backend, x, labels, x.flip(0), labels.flip(0), grads, metric="euclidean")
    second = mine(backend, x, labels, x.flip(0), labels.flip(0), grads, metric="euclidean")
    for a, b in zip(first[0], second[0]):
        assert torch.equal(a, b)
    assert torch.equal(first[1], second[1]) and torch.equal(first[2], second[2])


@pytest.mark.parametrize("backend", ("reference", "native"))
@pytest.mark.parametrize("metric", METRICS)
def test_gradcheck_float64(backend, metric):
    require_backend(backend, "cpu", torch.float64)
    g = torch.Generator().manual_seed(2)
    a = torch.randn(7, 4, generator=g, dtype=torch.float64, requires_grad=True)
    c = torch.randn(9, 4, generator=g, dtype=torch.float64, requires_grad=True)
    la = torch.tensor([0, 1, 2, 0, 1, 2, 3])
    lc = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1, 2])

    def fn(a, c):
        out = ops.hard_mining(a, la, c, lc, metric=metric, backend=backend)
        return out.pos_dist, out.neg_dist

    assert torch.autograd.gradcheck(fn, (a, c))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_opcheck(device, backend):
    require_backend(backend, device)
    op = FUSED[backend]
    x, labels, modality = make_batch(20, 9, 4, device, seed=3)
    c, lc, mc = make_batch(15, 9, 4, device, seed=4)
    for metric in METRICS:
        for args in ((x, labels, x, labels, modality.int(), modality.int(), metric, "cross", "same", True),
                     (x, labels, c, lc, None, None, metric, "any", "any", False)):
            torch.library.opcheck(op.forward, args)
            pos_d, pos_i, neg_d, neg_i, valid, asq, csq, pos_acc, neg_acc = op.forward(*args)
            gp, gn = torch.randn_like(pos_d), torch.randn_like(neg_d)
            torch.library.opcheck(op.backward,
                                  (gp, gn, args[0], args[2], pos_i, neg_i, pos_acc, neg_acc, asq, csq, metric))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_kernels_write_the_distances_in_the_input_dtype(device, backend):
    """The fused forward writes the distances in the anchors' dtype beside the accumulation-dtype copies it
    saves for the backward: the public result is the op's own output (no cast launch forward, none for
    the gradient on its way back), the saved copy rounded once, and a tensor of its own."""
    for dtype in dtypes_for(device, backend):
        require_backend(backend, device, dtype)
        x, labels, modality = make_batch(40, 24, 5, device, dtype, seed=8)
        out = FUSED[backend].forward(x, labels, x, labels, modality.int(), modality.int(), "euclidean", "cross",
                                     "any", True)
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        for got, saved in ((out[0], out[7]), (out[2], out[8])):
            assert got.dtype == dtype and saved.dtype == acc
            assert torch.equal(got, saved.to(dtype))
            assert got.data_ptr() != saved.data_ptr()
        mined = ops.hard_mining(x.detach().requires_grad_(), labels, anchor_modality=modality, positive="cross",
                                backend=backend)
        for t in (mined.pos_dist, mined.neg_dist):
            assert "hardmining" in t.grad_fn.name().lower().replace("_", ""), t.grad_fn.name()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_backward_op_reads_float32_gradients_of_half_features_at_full_precision(device, backend):
    """A direct call of the backward op with float32 gradients for half features (autograd hands the
    features' dtype) uses them as given, not rounded to half first, in every backend: the CUDA kernel
    reads either dtype."""
    for dtype in (d for d in dtypes_for(device, backend) if d in (torch.float16, torch.bfloat16)):
        require_backend(backend, device, dtype)
        x, labels, _ = make_batch(40, 24, 5, device, dtype, seed=9)
        op = FUSED[backend]
        out = op.forward(x, labels, x, labels, None, None, "euclidean", "any", "any", True)
        gen = torch.Generator().manual_seed(9)
        gp = (1 + torch.rand(40, generator=gen) / 1000).to(device)  # rounds to 1 (+ one step) in half
        gn = torch.rand(40, generator=gen).to(device)
        got = op.backward(gp, gn, x, x, out[1], out[3], out[7], out[8], out[5], out[6], "euclidean")
        rounded = op.backward(gp.to(dtype), gn.to(dtype), x, x, out[1], out[3], out[7], out[8], out[5], out[6],
                              "euclidean")
        xr = x.float().requires_grad_()
        pos_d, pos_i, neg_d, neg_i, _ = reference.hard_mining(xr, labels)
        assert torch.equal(pos_i, out[1]) and torch.equal(neg_i, out[3])
        (pos_d * gp + neg_d * gn).sum().backward()
        assert_matches(got[0] + got[1], xr.grad.to(dtype), dtype, f"{backend} {dtype} grad")
        assert not torch.equal(got[0] + got[1], rounded[0] + rounded[1]), f"{backend} {dtype}: gradients rounded"


def test_bad_inputs_name_the_argument():
    x = torch.randn(6, 4)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    modality = torch.tensor([0, 1, 0, 1, 0, 1])
    with pytest.raises(ValueError, match="anchor_labels.*length 6"):
        ops.hard_mining(x, labels[:5])
    with pytest.raises(TypeError, match="anchor_labels.*dtype"):
        ops.hard_mining(x, labels.float())
    with pytest.raises(ValueError, match="anchor_modality is required"):
        ops.hard_mining(x, labels, positive="cross")
    with pytest.raises(ValueError, match="anchor_modality must hold 0"):
        ops.hard_mining(x, labels, anchor_modality=modality * 2, positive="cross")
    # A given modality is checked even where both rules are "any" and ignore it.
    with pytest.raises(ValueError, match="anchor_modality must be a 1-D tensor of length 6"):
        ops.hard_mining(x, labels, anchor_modality=modality[:4])
    with pytest.raises(ValueError, match="candidate_modality must hold 0"):
        ops.hard_mining(x, labels, x, labels, candidate_modality=modality + 3)
    with pytest.raises(ValueError, match="candidate_labels is required"):
        ops.hard_mining(x, labels, x)
    with pytest.raises(ValueError, match="candidate_labels was given without candidates"):
        ops.hard_mining(x, labels, candidate_labels=labels)
    with pytest.raises(ValueError, match="candidate_modality is required"):
        ops.hard_mining(x, labels, x, labels, anchor_modality=modality, negative="cross")
    with pytest.raises(ValueError, match="positive"):
        ops.hard_mining(x, labels, positive="other")
    with pytest.raises(ValueError, match="negative"):
        ops.hard_mining(x, labels, negative="far")
    with pytest.raises(ValueError, match="anchors has feature dimension 4 but candidates has 5"):
        ops.hard_mining(x, labels, torch.randn(3, 5), labels[:3])
    with pytest.raises(ValueError, match="anchors must be a 2-D"):
        ops.hard_mining(x[0], labels)
    with pytest.raises(TypeError, match="anchors must be float"):
        ops.hard_mining(x.long(), labels)
    with pytest.raises(ValueError, match="anchor_labels is on meta"):
        ops.hard_mining(x, labels.to("meta"))
    with pytest.raises(ValueError, match="candidates is on meta"):
        ops.hard_mining(x, labels, x.to("meta"), labels)
