"""vtreid.ops.pairwise_distance: every backend against vtreid.ops.reference on values and both gradients."""
import itertools

import pytest
import torch

import vtreid.ops as ops
from vtreid.ops import reference
from vtreid.ops.pairwise_distance import FUSED

from support import (DEVICES, FUSED_BACKENDS, assert_half_gradient_within_rounding, assert_matches, close_pairs,
                     dtypes_for, require_backend, side_gradient_float64)

METRICS = ("euclidean", "sqeuclidean", "cosine")


def run(backend, x, y, metric, grad_out=None):
    """(dist, grad_x, grad_y) of one backend, with leaf copies so each backend gets fresh tensors."""
    xl = x.detach().clone().requires_grad_(True)
    yl = None if y is None else y.detach().clone().requires_grad_(True)
    dist = ops.pairwise_distance(xl, yl, metric=metric, backend=backend)
    if grad_out is None:
        grad_out = torch.randn_like(dist)
    inputs = (xl,) if yl is None else (xl, yl)
    grads = torch.autograd.grad(dist, inputs, grad_out)
    return dist, grads, grad_out


def gradient_term_scales(x, y, grad_out, metric):
    """Per-row size of the terms each input gradient sums. For cosine, sum_j |g_ij| / |x_i| can dwarf
    the result (at D = 1 the gradient is exactly 0 and both sides return cancellation noise)."""
    if metric != "cosine":
        return None, None
    self_distance = y is None
    y = x if y is None else y
    g = grad_out.double().abs()
    sx = g.sum(1) / x.double().norm(dim=1).clamp_min(1e-12)
    sy = g.sum(0) / y.double().norm(dim=1).clamp_min(1e-12)
    if self_distance:  # x's gradient gathers both sides
        return (sx + sy)[:, None], None
    return sx[:, None], sy[:, None]


def check_against_reference(backend, device, dtype, x, y, metric):
    require_backend(backend, device, dtype)
    ref_dist, ref_grads, grad_out = run("reference", x, y, metric)
    dist, grads, _ = run(backend, x, y, metric, grad_out)
    assert_matches(dist, ref_dist, dtype, f"{backend} {metric} dist")
    for name, g, rg, scale in zip(("grad_x", "grad_y"), grads, ref_grads, gradient_term_scales(x, y, grad_out, metric)):
        assert_matches(g, rg, dtype, f"{backend} {metric} {name}", scale)
    assert dist.isfinite().all() and all(g.isfinite().all() for g in grads)


SHAPES = [  # (N, M, D): the awkward sizes of DESIGN.md
    (1, 1, 1), (1, 3, 7), (2, 2, 129), (3, 47, 1), (47, 3, 7), (47, 130, 129), (130, 47, 7), (3, 2, 2048),
    (47, 47, 2048),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_random_inputs_float32(device, backend, metric, shape):
    n, m, d = shape
    g = torch.Generator().manual_seed(n * 1000 + m * 10 + d)
    x = torch.randn(n, d, generator=g).to(device)
    y = torch.randn(m, d, generator=g).to(device)
    check_against_reference(backend, device, torch.float32, x, y, metric)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("metric", METRICS)
def test_every_dtype(device, backend, metric):
    for dtype in dtypes_for(device, backend):
        g = torch.Generator().manual_seed(7)
        x = torch.randn(37, 65, generator=g).to(device, dtype)
        y = torch.randn(29, 65, generator=g).to(device, dtype)
        check_against_reference(backend, device, dtype, x, y, metric)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("metric", METRICS)
def test_self_distance_with_duplicates_and_zero_rows(device, backend, metric):
    """y=None, duplicated rows (distance exactly 0) and all-zero rows, fp32 and fp16."""
    for dtype in (torch.float32, torch.float16):
        g = torch.Generator().manual_seed(3)
        x = torch.randn(40, 33, generator=g)
        x[5] = x[17]
        x[30] = x[17]
        x[8] = 0.0
        x[9] = 0.0
        if metric == "cosine" and dtype == torch.float16:
            x[8] = x[9] = 1.0  # zero rows give 1/eps gradients, which overflow float16 in every backend
        x = x.to(device, dtype)
        check_against_reference(backend, device, dtype, x, None, metric)
        dist = ops.pairwise_distance(x, metric=metric, backend=backend)
        if metric != "cosine":
            assert (dist.diagonal() == 0).all()
            assert dist[5, 17] == 0 and dist[17, 30] == 0 and dist[8, 9] == 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", ("reference",) + FUSED_BACKENDS)
def test_identical_rows_are_exactly_zero_with_finite_gradient(device, backend):
    require_backend(backend, device)
    for d in (1, 7, 129, 2048):
        x = (torch.randn(6, d) * 3.0).to(device)
        y = x[[2, 0, 5]].clone()
        xl, yl = x.clone().requires_grad_(), y.clone().requires_grad_()
        dist = ops.pairwise_distance(xl, yl, metric="euclidean", backend=backend)
        assert dist[2, 0] == 0 and dist[0, 1] == 0 and dist[5, 2] == 0
        dist.sum().backward()
        assert xl.grad.isfinite().all() and yl.grad.isfinite().all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("metric", METRICS)
def test_non_contiguous_inputs(device, backend, metric):
    g = torch.Generator().manual_seed(11)
    base = torch.randn(60, 2 * 50, generator=g).to(device)
    x = base[::2, ::2]            # strided rows and columns
    y = base[:25, 1::2].t().contiguous().t()  # column-major
    assert not x.is_contiguous() and not y.is_contiguous()
    check_against_reference(backend, device, torch.float32, x, y, metric)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_empty_inputs(device, backend):
    require_backend(backend, device)
    x = torch.randn(0, 8, device=device, requires_grad=True)
    y = torch.randn(5, 8, device=device, requires_grad=True)
    dist = ops.pairwise_distance(x, y, backend=backend)
    assert dist.shape == (0, 5)
    dist.sum().backward()
    assert (y.grad == 0).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_deterministic(device, backend):
    require_backend(backend, device)
    x = torch.randn(70, 96, device=device)
    y = torch.randn(50, 96, device=device)
    first = run(backend, x, y, "euclidean", torch.ones(70, 50, device=device))
    second = run(backend, x, y, "euclidean", torch.ones(70, 50, device=device))
    assert torch.equal(first[0], second[0])
    assert all(torch.equal(a, b) for a, b in zip(first[1], second[1]))


@pytest.mark.parametrize("backend", ("reference", "native"))
@pytest.mark.parametrize("metric", METRICS)
def test_gradcheck_float64(backend, metric):
    require_backend(backend, "cpu", torch.float64)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: ops.pairwise_distance(a, b, metric=metric, backend=backend),
                                    (x, y))


def _opcheck_cases(device):
    for metric, dtype in itertools.product(METRICS, (torch.float32, torch.float16)):
        x = torch.randn(9, 17, device=device, dtype=dtype, requires_grad=True)
        y = torch.randn(5, 17, device=device, dtype=dtype, requires_grad=True)
        yield metric, x, y


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_opcheck(device, backend):
    require_backend(backend, device)
    op = FUSED[backend]
    for metric, x, y in _opcheck_cases(device):
        torch.library.opcheck(op.forward, (x, y, metric))
        dist, xsq, ysq = op.forward(x.detach(), y.detach(), metric)
        grad = torch.randn_like(dist)
        torch.library.opcheck(op.backward, (grad, dist, x.detach(), y.detach(), xsq, ysq, metric))


def test_bad_inputs_name_the_argument():
    x = torch.randn(4, 8)
    with pytest.raises(ValueError, match=r"\bx\b.*2-D"):
        ops.pairwise_distance(torch.randn(4, 8, 2))
    with pytest.raises(ValueError, match=r"\by\b.*2-D"):
        ops.pairwise_distance(x, torch.randn(8))
    with pytest.raises(ValueError, match="feature dimension"):
        ops.pairwise_distance(x, torch.randn(3, 7))
    with pytest.raises(TypeError, match=r"\bx\b.*float"):
        ops.pairwise_distance(torch.ones(4, 8, dtype=torch.int64))
    with pytest.raises(TypeError, match=r"\by\b"):
        ops.pairwise_distance(x, torch.ones(3, 8, dtype=torch.int32))
    with pytest.raises(TypeError, match=r"\by\b.*dtype"):
        ops.pairwise_distance(x, torch.randn(3, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\by\b is on meta"):
        ops.pairwise_distance(x, torch.randn(3, 8, device="meta"))
    with pytest.raises(ValueError, match="metric"):
        ops.pairwise_distance(x, metric="manhattan")
    with pytest.raises(TypeError, match=r"\bx\b.*Tensor"):
        ops.pairwise_distance([[1.0, 2.0]])
    with pytest.raises(ValueError, match="feature dimension of size 0"):
        ops.pairwise_distance(torch.randn(3, 0))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", ("reference",) + FUSED_BACKENDS)
def test_nan_propagates_but_is_never_made(device, backend):
    require_backend(backend, device)
    x = torch.randn(8, 16, device=device)
    x[3, 2] = float("nan")
    dist = ops.pairwise_distance(x, backend=backend, metric="cosine")
    assert dist[3].isnan().all() and not dist[[0, 1, 2, 4]][:, [0, 1, 2, 4]].isnan().any()
    big = torch.full((4, 16), 1e15, device=device)
    assert ops.pairwise_distance(big, backend=backend).isfinite().all()


def test_reference_matches_torch_cdist():
    x = torch.randn(30, 20, dtype=torch.float64)
    y = torch.randn(25, 20, dtype=torch.float64)
    torch.testing.assert_close(reference.pairwise_distance(x, y, "euclidean"), torch.cdist(x, y))
    torch.testing.assert_close(reference.pairwise_distance(x, y, "sqeuclidean"), torch.cdist(x, y) ** 2)
    cos = torch.nn.functional.cosine_similarity(x[:, None], y[None], dim=-1)
    torch.testing.assert_close(reference.pairwise_distance(x, y, "cosine"), 1 - cos)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_torch_compile(backend):
    require_backend(backend, "cpu")
    fn = torch.compile(lambda a, b: ops.pairwise_distance(a, b, backend=backend).sum(), backend="aot_eager",
                       fullgraph=True)
    x = torch.randn(10, 12, requires_grad=True)
    y = torch.randn(7, 12)
    out = fn(x, y)
    out.backward()
    xr = x.detach().clone().requires_grad_()
    ops.pairwise_distance(xr, y, backend="reference").sum().backward()
    torch.testing.assert_close(x.grad, xr.grad, atol=1e-5, rtol=1e-5)



@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("metric", ("euclidean", "cosine"))
def test_half_gradient_of_close_pairs(device, backend, metric):
    """Every row of x has a near twin in y (support.close_pairs): B_ij = g / d is large and a_i x - B y
    cancels it, so B must enter the GEMM at float32 precision, as in the row sums a_i. The half backward
    multiplies on tensor cores as two TF32 products (B = hi + lo); one TF32 product, 10 bits of B, misses
    the bound many times over."""
    require_backend(backend, device)
    for dtype in [dt for dt in dtypes_for(device, backend) if dt in (torch.float16, torch.bfloat16)]:
        g = torch.Generator().manual_seed(23)
        x, y = (t.to(device) for t in close_pairs(dtype, g))
        grad_out = torch.randn(x.shape[0], y.shape[0], generator=g).to(device, dtype)
        dist, (gx, gy), _ = run(backend, x, y, metric, grad_out)
        assert_half_gradient_within_rounding(gx, *side_gradient_float64(grad_out, dist, x, y, metric))
        assert_half_gradient_within_rounding(gy, *side_gradient_float64(grad_out.T, dist.T, y, x, metric))
        assert (dist.diagonal() < 0.25).all()
