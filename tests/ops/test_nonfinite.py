"""NaN and inf features propagate through every backend (a diverged model must not look perfect).

Euclidean distances used to flush NaN / inf to 0 (the noise flush compared `d2 > tau * norms`, false for
NaN); hard_mining then mined zero distances. Every backend must give what `reference` gives.
"""
import pytest
import torch

import vtreid.ops as ops
from tests.support import FUSED_BACKENDS, require_backend

BACKENDS = ("reference", *FUSED_BACKENDS)


def _features():
    x = torch.randn(6, 7)
    x[1, 3] = float("nan")
    x[4, 0] = float("inf")
    y = torch.randn(5, 7)
    y[2, 6] = float("-inf")
    return x, y


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_pairwise_distance_propagates_nan_and_inf(backend, metric):
    require_backend(backend, "cpu", torch.float32)
    x, y = _features()
    out = ops.pairwise_distance(x, y, metric=metric, backend=backend)
    # Every distance that involves a non-finite row is non-finite; every other one is finite.
    bad_rows = ~x.isfinite().all(1)
    bad_cols = ~y.isfinite().all(1)
    involved = bad_rows[:, None] | bad_cols[None, :]
    assert (~out.isfinite() == involved).all(), f"{backend}: non-finite pattern\n{out}"
    assert out[1].isnan().all(), "a NaN row gives NaN distances"
    if metric != "cosine":
        # |x|^2 = inf: the euclidean distance to a finite row is inf, not 0
        assert out[4, 0].item() == float("inf") or out[4, 0].isnan()
    expected = ops.pairwise_distance(x, y, metric=metric, backend="reference")
    torch.testing.assert_close(out, expected, equal_nan=True, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_hard_mining_propagates_nan(backend, metric):
    require_backend(backend, "cpu", torch.float32)
    a = torch.randn(9, 5)
    a[2, 1] = float("nan")  # anchor 2: every distance NaN; as a candidate, NaN for everyone
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    mined = ops.hard_mining(a, labels, metric=metric, backend=backend)
    ref = ops.hard_mining(a, labels, metric=metric, backend="reference")
    assert mined.pos_dist[2].isnan() and mined.neg_dist[2].isnan(), "a NaN anchor gives NaN distances"
    # Anchors 0 and 1 have the NaN row as a positive: it is their hardest (NaN beats every number).
    assert mined.pos_dist[:2].isnan().all() and (mined.pos_index[:2] == 2).all()
    # Every anchor of another identity sees the NaN row as a negative: its nearest.
    assert mined.neg_dist[3:].isnan().all() and (mined.neg_index[3:] == 2).all()
    for field in ("pos_index", "neg_index", "valid"):
        assert torch.equal(getattr(mined, field), getattr(ref, field)), field
    for field in ("pos_dist", "neg_dist"):
        torch.testing.assert_close(getattr(mined, field), getattr(ref, field), equal_nan=True, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_a_non_finite_first_row_stays_in_its_row(backend):
    """The Triton loops read row 0 in place of the rows past a partial tile (only the feature mask stays
    live): a NaN or inf in row 0 must still reach only the outputs of row 0, for sizes that end in a
    partial tile on both sides."""
    require_backend(backend, "cpu", torch.float32)
    x, y, w = torch.randn(37, 9), torch.randn(21, 9), torch.randn(19, 9)
    x[0, 2] = float("nan")
    y[0, 5] = float("inf")
    d = ops.pairwise_distance(x, y, backend=backend)
    want = ops.pairwise_distance(x, y, backend="reference")
    torch.testing.assert_close(d, want, equal_nan=True, atol=2e-5, rtol=2e-5)
    assert d[1:, 1:].isfinite().all()
    # classes past a partial class tile read class 0, rows past a partial row tile read row 0
    w[0, 1] = 0.5
    x = x.requires_grad_()
    target = torch.arange(37) % 19
    loss = ops.normalized_cross_entropy(x, w, target, scale=14.0, reduction="none", backend=backend)
    want = ops.normalized_cross_entropy(x, w, target, scale=14.0, reduction="none", backend="reference")
    torch.testing.assert_close(loss, want, equal_nan=True, atol=1e-4, rtol=1e-4)
    assert loss[0].isnan() and loss[1:].isfinite().all()
    (grad,) = torch.autograd.grad(loss[1:].sum(), x)
    (want_grad,) = torch.autograd.grad(want[1:].sum(), x)
    assert grad[1:].isfinite().all()
    torch.testing.assert_close(grad[1:], want_grad[1:], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_gradients_propagate_nan_as_the_reference(backend, metric):
    """A NaN feature's gradients are NaN wherever the reference's are: the backward's zero-distance mask
    (d > 0) and the norm floor (max(|v|, eps), which dropped NaN in Triton and CUDA) used to turn them into
    zeros or 1e12-sized finite numbers."""
    require_backend(backend, "cpu", torch.float32)
    torch.manual_seed(0)
    x, y = torch.randn(6, 5), torch.randn(4, 5)
    x[0, 0] = float("nan")

    def grads(b):
        xs, ys = x.clone().requires_grad_(), y.clone().requires_grad_()
        d = ops.pairwise_distance(xs, ys, metric=metric, backend=b)
        # every anchor mines the NaN row 0 (a NaN distance beats every number): as positive or negative
        mined = ops.hard_mining(xs, torch.tensor([0, 0, 1, 1, 2, 2]), metric=metric, backend=b)
        return torch.autograd.grad(d.sum(), (xs, ys)) + torch.autograd.grad((mined.pos_dist + mined.neg_dist).sum(),
                                                                             xs)
    for got, want, name in zip(grads(backend), grads("reference"), ("pairwise x", "pairwise y", "mining")):
        assert torch.equal(got.isnan(), want.isnan()), f"{name}: NaN pattern\n{got}\n{want}"
        torch.testing.assert_close(got, want, equal_nan=True, atol=1e-4, rtol=1e-4, msg=name)


@pytest.mark.parametrize("metric", ["sqeuclidean", "cosine"])
@pytest.mark.parametrize("strong", [False, True])
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_hetero_center_loss_propagates_nan(backend, metric, strong):
    """The hinge max(h, 0) returned 0 for a NaN h in Triton (and CUDA): a NaN feature gave a finite loss."""
    require_backend(backend, "cpu", torch.float32)
    torch.manual_seed(0)
    x = torch.randn(8, 5)
    x[0, 0] = float("nan")
    labels, modality = torch.tensor([3, 3, 1, 1, 7, 7, 3, 1]), torch.tensor([0, 1, 0, 1, 0, 0, 1, 1])
    loss = ops.hetero_center_loss(x, labels, modality, metric=metric, strong=strong, backend=backend)
    assert loss.isnan(), loss
    assert ops.hetero_center_loss(x, labels, modality, metric=metric, strong=strong, backend="reference").isnan()
    # the NaN row's class (3) reads it; the hinge's gradient reaches every row of a class it read, as relu's
    xs, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    (got,) = torch.autograd.grad(ops.hetero_center_loss(xs, labels, modality, metric=metric, strong=strong,
                                                        backend=backend), xs)
    (want,) = torch.autograd.grad(ops.hetero_center_loss(xr, labels, modality, metric=metric, strong=strong,
                                                         backend="reference"), xr)
    assert torch.equal(got.isnan(), want.isnan()), f"NaN pattern\n{got}\n{want}"
    torch.testing.assert_close(got, want, equal_nan=True, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("d", [5, 150])  # one feature slice of the Triton forward; three, combined
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("strong", [False, True])
@pytest.mark.parametrize("metric", ["sqeuclidean", "cosine"])
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_hetero_center_loss_of_a_one_modality_class_with_a_non_finite_feature(backend, metric, strong, bad, d):
    """A class seen in one modality only is left out by a factor 0, as the reference's mask leaves it: a
    NaN or inf feature there makes the loss NaN on every backend (the fused ones gave a finite loss, and
    then NaN gradients under it), and the gradient is the reference's: NaN in that class's rows
    (0 times its non-finite centre), finite elsewhere."""
    require_backend(backend, "cpu", torch.float32)
    torch.manual_seed(1)
    x = torch.randn(8, d)
    x[4, d - 1] = bad  # class 7 has visible samples only; the last slice
    labels, modality = torch.tensor([3, 3, 1, 1, 7, 7, 3, 1]), torch.tensor([0, 1, 0, 1, 0, 0, 1, 1])
    xs, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    got = ops.hetero_center_loss(xs, labels, modality, metric=metric, strong=strong, backend=backend)
    want = ops.hetero_center_loss(xr, labels, modality, metric=metric, strong=strong, backend="reference")
    assert got.isnan() and want.isnan(), (got, want)
    (g,) = torch.autograd.grad(got, xs)
    (w,) = torch.autograd.grad(want, xr)
    assert torch.equal(g.isnan(), w.isnan()), f"NaN pattern\n{g}\n{w}"
    assert g[labels != 7].isfinite().all()
    torch.testing.assert_close(g, w, equal_nan=True, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("d", [5, 150])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_non_finite_feature_stays_in_its_own_modality_centre(backend, bad, d):
    """A NaN or inf feature of an infrared sample reaches its class's infrared centre only, as the
    reference's per-(class, modality) sums: the visible centre of that class stays finite. (Triton's forward
    once summed every sample into both centres with weights 1 and 0, and inf * 0 is NaN.)"""
    require_backend(backend, "cpu", torch.float32)
    torch.manual_seed(2)
    x = torch.randn(2, 8, d)
    x[:, 1, d - 1] = bad  # class 3, infrared
    labels, modality = torch.tensor([3, 3, 1, 1, 7, 7, 3, 1]), torch.tensor([0, 1, 0, 1, 0, 0, 1, 1])
    got = ops.modality_centers(x, labels, modality, backend=backend)
    want = ops.modality_centers(x, labels, modality, backend="reference")
    visible, infrared = got.centers[:, 1, 0], got.centers[:, 1, 1]  # class 3 is the second (1, 3, 7)
    assert visible.isfinite().all() and not infrared[:, d - 1].isfinite().any(), got.centers[:, 1]
    torch.testing.assert_close(got.centers, want.centers, equal_nan=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_centre_only_gradient_ignores_the_unused_nan_hinge(backend):
    """Through the centres alone (the hinge unused), the gradient is the mean's 1/n for every sample, as the
    reference's: the NaN hinge of the class with a NaN feature once gave 0 * NaN to the samples of both its
    modalities (its ungated hinge gradient, materialised as zeros, times the NaN centres)."""
    require_backend(backend, "cpu", torch.float32)
    x = torch.randn(8, 3)
    x[0, 0] = float("nan")
    labels, modality = torch.tensor([0, 0, 1, 1, 0, 1, 2, 2]), torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    grads = []
    for be in (backend, "reference"):
        xs = x.clone().requires_grad_(True)
        ops.modality_centers(xs, labels, modality, backend=be).centers.sum().backward()
        grads.append(xs.grad)
    torch.testing.assert_close(grads[0], grads[1], equal_nan=True)
    assert grads[0].isfinite().all(), grads[0]
