"""Near-degenerate inputs against the reference, on every fused backend: rows and centres of norm in
(0, 1e-12) (the cosine guards take their other branch only there: an exactly zero row multiplies the
guarded term by 0 anyway), pairs flushed to distance 0 without being identical, a chosen pair at distance
0, a non-finite anchor's chosen negative. Each case was written for a kernel mutation the suite let
through (a dropped guard, a dropped mask, a dropped term)."""
import pytest
import torch

import vtreid.ops as ops
from tests.support import FUSED_BACKENDS, require_backend

TINY = 5e-13  # a norm below the cosine eps (1e-12) that is not 0


def grads(fn, *leaves):
    leaves = [t.detach().clone().requires_grad_(True) for t in leaves]
    out = fn(*leaves)
    return torch.autograd.grad(out, leaves)


def assert_matches(fn, *leaves, backend):
    """fn(*leaves, backend)'s gradients match the reference's: NaN pattern, and the finite values to 1e-5 of
    the largest finite reference gradient (the mutants were off by 0.2% to 8% of it)."""
    got, want = grads(lambda *t: fn(*t, backend), *leaves), grads(lambda *t: fn(*t, "reference"), *leaves)
    for i, (g, w) in enumerate(zip(got, want)):
        assert torch.equal(g.isnan(), w.isnan()) and torch.equal(g.isinf(), w.isinf()), f"input {i}: {g}\n{w}"
        finite = w.isfinite()
        scale = w[finite].abs().max() if finite.any() else torch.tensor(1.0)
        torch.testing.assert_close(g[finite], w[finite], rtol=0, atol=1e-5 * float(scale), msg=lambda s: f"input {i}: {s}")


def tiny_row(x, i):
    x[i] *= TINY / x[i].norm()
    return x


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_pairwise_cosine_with_a_row_of_tiny_norm(backend):
    require_backend(backend, "cpu", torch.float32)
    torch.manual_seed(0)
    x, y = tiny_row(torch.randn(3, 8), 1), tiny_row(torch.randn(4, 8), 2)
    assert_matches(lambda a, b, be: ops.pairwise_distance(a, b, metric="cosine", backend=be).sum(), x, y,
                   backend=backend)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_pairwise_euclidean_pair_flushed_to_zero_but_not_identical(backend):
    """|x - y|^2 below the flush threshold: distance 0 and gradient 0 there, as the reference's, though
    x - y is not 0 (identical rows hid a dropped mask: their g (x - y) is 0 anyway)."""
    require_backend(backend, "cpu", torch.float32)
    torch.manual_seed(0)
    x = torch.randn(1, 64)
    y = torch.cat([x + 3e-3 * torch.randn(1, 64), torch.randn(3, 64)])
    assert ops.pairwise_distance(x, y, backend="reference")[0, 0] == 0
    assert_matches(lambda a, b, be: ops.pairwise_distance(a, b, backend=be).sum(), x, y, backend=backend)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_mining_cosine_with_an_anchor_of_tiny_norm(backend):
    require_backend(backend, "cpu", torch.float32)
    torch.manual_seed(0)
    a, c = tiny_row(torch.randn(4, 16), 0), torch.randn(6, 16)
    la, lc = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 0, 1, 2, 2])

    def loss(x, y, be):
        mined = ops.hard_mining(x, la, y, lc, metric="cosine", backend=be)
        return mined.pos_dist.sum() + mined.neg_dist.sum()
    assert_matches(loss, a, c, backend=backend)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_mining_euclidean_chooses_a_duplicate_at_distance_zero(backend):
    """Anchor 0's hardest negative is its duplicate: the chosen distance is 0 and its gradient must be the
    reference's (0), not g / 0."""
    require_backend(backend, "cpu", torch.float32)
    torch.manual_seed(0)
    x = torch.randn(4, 16)
    x[2] = x[0]
    labels = torch.tensor([0, 0, 1, 1])
    assert ops.hard_mining(x, labels, backend="reference").neg_dist[0] == 0
    assert_matches(lambda t, be: ops.hard_mining(t, labels, backend=be).neg_dist.sum(), x, backend=backend)


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
@pytest.mark.parametrize("metric", ["sqeuclidean", "euclidean", "cosine"])
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_mining_a_non_finite_anchor_reaches_the_negative_it_chose(backend, metric, bad):
    """Anchor 0 has an inf or NaN feature: its gradient and that of the negative it chose are the
    reference's, non-finite values included. Every other candidate's gradient stays finite: the fused
    backward reaches only the chosen pairs, where the reference's dense autograd spreads 0 * NaN to every
    candidate of the anchor's row (so only the finite reference values are compared there)."""
    require_backend(backend, "cpu", torch.float32)
    torch.manual_seed(1)
    a, c = torch.randn(4, 16), torch.randn(6, 16)
    a[0, 3] = bad
    la, lc = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 0, 1, 2, 2])
    loss = lambda x, y, be: ops.hard_mining(x, la, y, lc, metric=metric, backend=be).neg_dist.sum()  # noqa: E731
    (ga, gc), (wa, wc) = grads(lambda x, y: loss(x, y, backend), a, c), grads(lambda x, y: loss(x, y, "reference"), a, c)
    chosen = int(ops.hard_mining(a, la, c, lc, metric=metric, backend="reference").neg_index[0])
    torch.testing.assert_close(ga, wa, equal_nan=True, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gc[chosen], wc[chosen], equal_nan=True, rtol=1e-5, atol=1e-5)
    assert not gc[chosen].isfinite().all(), gc[chosen]
    others = torch.arange(len(c)) != chosen
    assert gc[others].isfinite().all(), gc
    finite = wc[others].isfinite()
    torch.testing.assert_close(gc[others][finite], wc[others][finite], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_hetero_center_cosine_with_a_centre_of_tiny_norm(backend):
    require_backend(backend, "cpu", torch.float32)
    torch.manual_seed(0)
    x = torch.randn(8, 16)
    labels, modality = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]), torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])
    x[:2] *= TINY / x[:2].mean(0).norm()   # class 0's visible centre
    assert_matches(lambda t, be: ops.hetero_center_loss(t, labels, modality, metric="cosine", backend=be), x,
                   backend=backend)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_normalized_ce_with_a_feature_row_and_a_class_of_tiny_norm(backend):
    require_backend(backend, "cpu", torch.float32)
    torch.manual_seed(0)
    x, w = tiny_row(torch.randn(4, 16), 1), tiny_row(torch.randn(5, 16), 3)
    target = torch.tensor([0, 1, 2, 3])
    assert_matches(lambda a, b, be: ops.normalized_cross_entropy(a, b, target, scale=14.0, backend=be), x, w,
                   backend=backend)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_self_distance_compiles(backend):
    """pairwise_distance(x) under torch.compile: a custom op's outputs may not alias each other (the self
    case returns the row norms of x twice, so one is a copy)."""
    require_backend(backend, "cpu", torch.float32)
    torch.manual_seed(0)
    x = torch.randn(5, 8)
    fn = lambda t: ops.pairwise_distance(t, backend=backend).sum()  # noqa: E731
    (want,) = grads(fn, x)
    (got,) = grads(torch.compile(fn, backend="aot_eager"), x)
    torch.testing.assert_close(got, want)
