"""Defects 4, 5 and 8 of the GPU review (issue 14), on the backends a CPU runs; the CUDA kernels get the
same checks in tests/cuda_emu (executed on the CPU under AddressSanitizer)."""
import pytest
import torch

import vtreid.ops as ops
from tests.support import FUSED_BACKENDS, assert_matches, require_backend
from vtreid.ops import hetero_center as hc

CPU = torch._C.DispatchKeySet(torch._C.DispatchKey.CPU)


# --- 4: one meaning of a modality value, and never an index past 1 -------------------------------------

@pytest.mark.parametrize("strong", [False, True])
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_hetero_center_modality_values_mean_the_same_in_every_backend(backend, strong):
    """Unchecked modality values (CUDA tensors without VTREID_CHECK_VALUES) count as infrared when non-zero,
    in the fused ops called directly as in the public functions; the CPU kernel used to index its counts
    with the raw value and the Triton one to weight samples by it."""
    require_backend(backend, "cpu", torch.float32)
    x = torch.randn(2, 8, 5)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    raw = torch.tensor([0, 2, 0, 1, 5, 0, -3, 0], dtype=torch.int32)
    slots = hc.class_slots(labels)
    fused = hc.FUSED[backend]
    got = fused.forward(x, slots.order, slots.seg, slots.slot, raw, "sqeuclidean", strong, 0.0)
    want = fused.forward(x, slots.order, slots.seg, slots.slot, (raw != 0).int(), "sqeuclidean", strong, 0.0)
    for g, w, what in zip(got, want, ("hinge", "centers", "variances", "counts", "stats")):
        assert torch.equal(g, w), what
    grad_hinge = torch.rand(2, 8)
    gx = fused.backward(x, slots.slot, raw, *got, grad_hinge, None, "sqeuclidean", strong)
    wx = fused.backward(x, slots.slot, (raw != 0).int(), *want, grad_hinge, None, "sqeuclidean", strong)
    assert torch.equal(gx, wx)
    # ... and the reference agrees with them.
    loss = ops.reference.hetero_center_loss(x, labels, raw, strong=strong)
    assert_matches(got[0].sum(-1), loss, torch.float32, "hinge sum vs reference")


# --- 5: the C++ ops check devices and shapes when called directly -------------------------------------

def _direct(op, *args):
    """Call the CPU kernel of torch.ops.vtreid.<op> whatever the arguments' devices (as a CUDA kernel would
    be reached with one CPU argument among CUDA ones)."""
    return getattr(torch.ops.vtreid, op).default.redispatch(CPU, *args)


def _meta(t):
    return t.to("meta")


def test_native_ops_check_devices_shapes_and_feature_dimension():
    require_backend("native", "cpu")
    x, y = torch.randn(5, 3), torch.randn(4, 3)
    labels, ylabels = torch.arange(5) % 2, torch.arange(4) % 2
    cases = [
        ("y", "pairwise_distance_fwd", (x, _meta(y), "euclidean")),
        ("feature dimension of size 0", "pairwise_distance_fwd", (x[:, :0], y[:, :0], "euclidean")),
        ("grad", "pairwise_distance_bwd", (torch.ones(5, 3), torch.ones(5, 4), x, y, torch.ones(5), torch.ones(4),
                                          "euclidean")),
        ("ysq", "pairwise_distance_bwd", (torch.ones(5, 4), torch.ones(5, 4), x, y, torch.ones(5), _meta(torch.ones(4)),
                                         "euclidean")),
        ("anchor_labels", "hard_mining_fwd", (x, _meta(labels), y, ylabels, None, None, "euclidean", "any", "any",
                                              False)),
        ("candidate_labels", "hard_mining_fwd", (x, labels, y, ylabels[:3], None, None, "euclidean", "any", "any",
                                                 False)),
        ("candidate_modality", "hard_mining_fwd", (x, labels, y, ylabels, labels, _meta(ylabels), "euclidean", "cross",
                                                   "any", False)),
        ("pos_index", "hard_mining_bwd", (torch.ones(5), torch.ones(5), x, y, torch.zeros(3, dtype=torch.int64),
                                          torch.zeros(5, dtype=torch.int64), torch.ones(5), torch.ones(5),
                                          torch.ones(5), torch.ones(4), "euclidean")),
        ("csq", "hard_mining_bwd", (torch.ones(5), torch.ones(5), x, y, torch.zeros(5, dtype=torch.int64),
                                    torch.zeros(5, dtype=torch.int64), torch.ones(5), torch.ones(5), torch.ones(5),
                                    torch.ones(5), "euclidean")),
    ]
    slots = hc.class_slots(labels)
    x3 = x[None]
    cases += [
        ("modality", "hetero_center_fwd", (x3, slots.order, slots.seg, slots.slot, _meta(labels), "sqeuclidean", False,
                                           0.0)),
        ("seg", "hetero_center_fwd", (x3, slots.order, slots.seg[:-1], slots.slot, labels, "sqeuclidean", False, 0.0)),
    ]
    out = torch.ops.vtreid.hetero_center_fwd(x3, slots.order, slots.seg, slots.slot, labels, "sqeuclidean", False, 0.0)
    hinge, centers, variances, counts, stats = out
    cases += [
        ("counts", "hetero_center_bwd", (x3, slots.slot, labels, hinge, centers, variances, counts[:2], stats,
                                         torch.ones_like(hinge), None, "sqeuclidean", False)),
        ("grad_centers", "hetero_center_bwd", (x3, slots.slot, labels, hinge, centers, variances, counts, stats,
                                               torch.ones_like(hinge), centers[:, :2], "sqeuclidean", False)),
        ("target", "normalized_ce_fwd", (x, y, _meta(labels), 1.0, 0.0)),
        ("target", "normalized_ce_fwd", (x, y, labels[:4], 1.0, 0.0)),
    ]
    fwd = torch.ops.vtreid.normalized_ce_fwd(x, y, labels, 1.0, 0.0)
    cases += [
        ("wsq", "normalized_ce_bwd", (torch.ones(5), x, y, labels, *fwd[1:5], fwd[5][:2], fwd[6], 1.0, 0.0)),
        ("grad", "normalized_ce_bwd", (torch.ones(4), x, y, labels, *fwd[1:6], fwd[6], 1.0, 0.0)),
    ]
    for name, op, args in cases:
        with pytest.raises(ValueError, match=name):
            _direct(op, *args)


def test_native_ops_take_index_tensors_of_integers_only():
    """Float labels were truncated (0.2 and 0.7 both identity 0); every index argument must be integer."""
    require_backend("native", "cpu")
    x, y = torch.randn(5, 3), torch.randn(4, 3)
    labels = torch.arange(5) % 2
    slots = hc.class_slots(labels)
    x3, f = x[None], lambda t: t.float()  # noqa: E731
    fwd = torch.ops.vtreid.normalized_ce_fwd(x, y, labels, 1.0, 0.0)
    hinge, centers, variances, counts, stats = torch.ops.vtreid.hetero_center_fwd(
        x3, slots.order, slots.seg, slots.slot, labels, "sqeuclidean", False, 0.0)
    cases = [
        ("anchor_labels", "hard_mining_fwd", (x, f(labels), y, labels[:4], None, None, "euclidean", "any", "any",
                                              False)),
        ("candidate_labels", "hard_mining_fwd", (x, labels, y, f(labels[:4]), None, None, "euclidean", "any", "any",
                                                 False)),
        ("order", "hetero_center_fwd", (x3, f(slots.order), slots.seg, slots.slot, labels, "sqeuclidean", False, 0.0)),
        ("seg", "hetero_center_fwd", (x3, slots.order, f(slots.seg), slots.slot, labels, "sqeuclidean", False, 0.0)),
        ("slot", "hetero_center_bwd", (x3, f(slots.slot), labels, hinge, centers, variances, counts, stats,
                                       torch.ones_like(hinge), None, "sqeuclidean", False)),
        ("target", "normalized_ce_fwd", (x, y, f(labels), 1.0, 0.0)),
        ("target", "normalized_ce_bwd", (torch.ones(5), x, y, f(labels), *fwd[1:7], 1.0, 0.0)),
    ]
    for name, op, args in cases:
        with pytest.raises(TypeError, match=f"{name} must be an integer tensor, got Float"):
            _direct(op, *args)


def test_native_ops_refuse_mixed_dtypes_and_non_finite_scalars():
    """A direct call with features of two dtypes was taken on CPU (the result in the first one's dtype) and
    refused on CUDA; a NaN scale, smoothing or margin made every loss NaN. Both are refused alike now."""
    require_backend("native", "cpu")
    x, y = torch.randn(5, 3), torch.randn(4, 3)
    labels = torch.arange(5) % 2
    slots = hc.class_slots(labels)
    fwd = torch.ops.vtreid.pairwise_distance_fwd(x, y, "euclidean")
    mined = torch.ops.vtreid.hard_mining_fwd(x, labels, y, labels[:4], None, None, "euclidean", "any", "any", False)
    ce = torch.ops.vtreid.normalized_ce_fwd(x, y, labels, 1.0, 0.0)
    h = y.half()
    mixed = [
        ("y", "pairwise_distance_fwd", (x, h, "euclidean")),
        ("y", "pairwise_distance_bwd", (torch.ones(5, 4), fwd[0], x, h, fwd[1], fwd[2], "euclidean")),
        ("candidates", "hard_mining_fwd", (x, labels, h, labels[:4], None, None, "euclidean", "any", "any", False)),
        ("candidates", "hard_mining_bwd", (torch.ones(5), torch.ones(5), x, h, mined[1], mined[3], mined[7],
                                           mined[8], mined[5], mined[6], "euclidean")),
        ("weight", "normalized_ce_fwd", (x, h, labels, 1.0, 0.0)),
        ("weight", "normalized_ce_bwd", (torch.ones(5), x, h, labels, *ce[1:7], 1.0, 0.0)),
    ]
    for name, op, args in mixed:
        with pytest.raises(TypeError, match=f"{name} has dtype Half but .* has dtype Float"):
            _direct(op, *args)
    scalars = [
        ("scale", "normalized_ce_fwd", (x, y, labels, float("nan"), 0.0)),
        ("scale", "normalized_ce_fwd", (x, y, labels, 0.0, 0.0)),
        ("scale", "normalized_ce_bwd", (torch.ones(5), x, y, labels, *ce[1:7], float("inf"), 0.0)),
        ("label_smoothing", "normalized_ce_fwd", (x, y, labels, 1.0, 1.5)),
        ("label_smoothing", "normalized_ce_bwd", (torch.ones(5), x, y, labels, *ce[1:7], 1.0, float("nan"))),
        ("margin", "hetero_center_fwd", (x[None], slots.order, slots.seg, slots.slot, labels, "sqeuclidean", False,
                                         float("nan"))),
    ]
    for name, op, args in scalars:
        with pytest.raises(ValueError, match=f"{name} must be"):
            _direct(op, *args)
    # the bounds themselves are taken
    torch.ops.vtreid.normalized_ce_fwd(x, y, labels, 1.0, 1.0)
    torch.ops.vtreid.hetero_center_fwd(x[None], slots.order, slots.seg, slots.slot, labels, "sqeuclidean", False, -1.0)


def test_native_mining_backward_ignores_indices_out_of_range():
    """A mined index outside [0, M) (a direct call of the op) is no pair: nothing is read through it."""
    require_backend("native", "cpu")
    a, c = torch.randn(3, 4), torch.randn(2, 4)
    pos_i = torch.tensor([0, 7, -1])
    neg_i = torch.tensor([1, 1, 2])
    args = (torch.ones(3), torch.ones(3), a, c, pos_i, neg_i, torch.ones(3), torch.ones(3), (a * a).sum(1),
            (c * c).sum(1), "euclidean")
    ga, gc = torch.ops.vtreid.hard_mining_bwd(*args)
    clean = torch.ops.vtreid.hard_mining_bwd(*args[:4], torch.tensor([0, -1, -1]), torch.tensor([1, 1, -1]), *args[6:])
    assert torch.equal(ga, clean[0]) and torch.equal(gc, clean[1])


# --- 8: the pairwise backward keeps its per-pair coefficients in float32 --------------------------------

@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_pairwise_backward_half_close_pairs(backend):
    """Close pairs (large g / d, a ~ b): coefficients rounded to half before the product no longer cancel
    the float32 row coefficient, and the error is the size of the whole gradient."""
    require_backend(backend, "cpu", torch.float16)
    torch.manual_seed(0)
    a = (torch.randn(8, 64) * 4).half()
    b = (a.float() + 0.02 * torch.randn(8, 64)).half()
    xa, xb = a.clone().requires_grad_(), b.clone().requires_grad_()
    ops.pairwise_distance(xa, xb, metric="euclidean", backend=backend).float().sum().backward()
    ra, rb = a.float().requires_grad_(), b.float().requires_grad_()
    # Reference from the half distances the fused backward sees (dist is returned in the input dtype).
    ops.pairwise_distance(ra, rb, metric="euclidean", backend="reference").sum().backward()
    assert_matches(xa.grad, ra.grad.half(), torch.float16, "grad x")
    assert_matches(xb.grad, rb.grad.half(), torch.float16, "grad y")


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_pairwise_cosine_backward_half_tiny_norms(backend):
    """g / (|a| |b|) of tiny-norm rows is above the half range: it must not overflow to inf / NaN."""
    require_backend(backend, "cpu", torch.float16)
    a = (torch.randn(4, 64) * 2e-4).half()
    b = (torch.randn(5, 64) * 2e-4).half()
    xa, xb = a.clone().requires_grad_(), b.clone().requires_grad_()
    ops.pairwise_distance(xa, xb, metric="cosine", backend=backend).float().sum().backward()
    ra, rb = a.float().requires_grad_(), b.float().requires_grad_()
    ops.pairwise_distance(ra, rb, metric="cosine", backend="reference").sum().backward()
    assert xa.grad.isfinite().all() and xb.grad.isfinite().all()
    scale = ra.grad.abs().max()
    assert_matches(xa.grad.float() / scale, ra.grad / scale, torch.float16, "grad x (scaled)")
    assert_matches(xb.grad.float() / scale, rb.grad / scale, torch.float16, "grad y (scaled)")
