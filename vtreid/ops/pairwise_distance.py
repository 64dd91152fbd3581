"""vtreid.ops.pairwise_distance: fused pairwise distances with three interchangeable backends.

Each fused backend is a pair of torch.library ops, forward and backward, with a fake kernel and an
autograd formula:

    native: torch.ops.vtreid.pairwise_distance_fwd / _bwd         (csrc/, CPU and CUDA)
    triton: torch.ops.vtreid.pairwise_distance_triton_fwd / _bwd  (kernels/pairwise_distance.py)

The forward returns (dist, xsq, ysq): the squared row norms are a by-product of the fused pass that
the backward reuses instead of re-reading x and y for them.
"""
from __future__ import annotations

import torch

from . import _backend, reference
from ._checks import check_choice, check_feature_dims, check_features, check_same_device, check_same_dtype
from ._autocast import autocast_inputs
from ._registry import register_fused_op

METRICS = reference.METRICS


@autocast_inputs(lower=False)
def pairwise_distance(x: torch.Tensor, y: torch.Tensor | None = None, *, metric: str = "euclidean",
                      backend: str | None = None) -> torch.Tensor:
    """Distances between the rows of ``x`` [N, D] and ``y`` [M, D] (``y=None``: ``x`` with itself), [N, M].

    metric:
        "euclidean"   sqrt(max(|x_i|^2 + |y_j|^2 - 2 x_i.y_j, 0)), exactly 0 for identical rows
                      (squared distances below ``reference.zero_tolerance(D) * (|x_i|^2 + |y_j|^2)``
                      are flushed to 0; their gradient is 0, never NaN)
        "sqeuclidean" the same without the square root
        "cosine"      1 - cos(x_i, y_j), rows normalised with eps = 1e-12 as ``F.normalize`` does
    Output dtype is the input dtype; half inputs accumulate in float32. Differentiable in x and y.
    """
    check_features(x, "x")
    if y is None:
        y = x
    else:
        check_features(y, "y")
        check_feature_dims(x, "x", y, "y")
        check_same_dtype({"x": x, "y": y})
    check_choice(metric, "metric", METRICS)
    device = check_same_device({"x": x, "y": y})
    name = _backend.resolve(backend, device, x.dtype, "pairwise_distance")
    if name == "reference":
        return reference.pairwise_distance(x, y, metric)
    return FUSED[name].call(x, y, metric)[0]


# --- fake kernels and autograd, shared by both fused backends ---------------------------------------

def _norm_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _fake_forward(x, y, metric):
    acc = _norm_dtype(x.dtype)
    return (x.new_empty((x.shape[0], y.shape[0])), x.new_empty((x.shape[0],), dtype=acc),
            y.new_empty((y.shape[0],), dtype=acc))


def _fake_backward(grad, dist, x, y, xsq, ysq, metric):
    return torch.empty_like(x, memory_format=torch.contiguous_format), \
        torch.empty_like(y, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    x, y, metric = inputs
    dist, xsq, ysq = output
    ctx.save_for_backward(x, y, dist, xsq, ysq)
    ctx.metric = metric
    ctx.mark_non_differentiable(xsq, ysq)
    ctx.set_materialize_grads(False)  # no zero-filled gradients for the norms: two launches a step


def _make_backward(backward_op):
    def backward(ctx, grad_dist, _grad_xsq, _grad_ysq):
        x, y, dist, xsq, ysq = ctx.saved_tensors
        if grad_dist is None:
            grad_dist = torch.zeros_like(dist)
        grad_x, grad_y = backward_op(grad_dist, dist, x, y, xsq, ysq, ctx.metric)
        return grad_x, grad_y, None
    return backward


# --- triton: the launchers of kernels/pairwise_distance.py (custom ops: _registry.py) -------------

def _triton_forward(x: torch.Tensor, y: torch.Tensor, metric: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from vtreid.kernels import pairwise_distance as kernel  # imports triton: only when used
    return kernel.forward(x, y, metric, reference.zero_tolerance(x.shape[1]))


def _triton_backward(grad: torch.Tensor, dist: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                     xsq: torch.Tensor, ysq: torch.Tensor, metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    from vtreid.kernels import pairwise_distance as kernel
    return kernel.backward(grad, dist, x, y, xsq, ysq, metric)


FUSED = register_fused_op(
    "pairwise_distance",
    triton=(_triton_forward, _triton_backward),
    fake_forward=_fake_forward,
    fake_backward=_fake_backward,
    setup_context=_setup_context,
    make_backward=_make_backward,
)
