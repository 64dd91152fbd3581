"""vtreid.ops.normalized_logits and vtreid.ops.normalized_cross_entropy (Sphere softmax).

Fused cross-entropy backends (a forward/backward pair each, with fake kernels and autograd):

    native: torch.ops.vtreid.normalized_ce_fwd / _bwd         (csrc/, CPU and CUDA)
    triton: torch.ops.vtreid.normalized_ce_triton_fwd / _bwd  (kernels/normalized_softmax.py)

The forward returns per row the loss, the log-sum-exp, E_p[z], the target term and |x|^2, and |w|^2 per
class (all float32; float64 for float64 inputs): what the backward needs to rebuild p = exp(z - lse)
tile by tile without the N x C logits. When C <= SAVED_DOTS_MAX_CLASSES it also returns x.W^T [N, C]
(else an empty [0]) and the backward reuses it instead of recomputing the GEMM: at such C eager keeps
its N x C logits as well, so this trades no memory over eager for one GEMM less (the native CPU
backend was otherwise slower than eager at C = 206..395). The C++ driver's kClassChunk is the same
number. normalized_logits is the fused cosine kernel of
pairwise_distance scaled: scale * (1 - (1 - cos)).
"""
from __future__ import annotations

import torch

from . import _backend, reference
from ._checks import (check_choice, check_feature_dims, check_features, check_fraction, check_scale, check_same_device,
                      check_same_dtype, check_tensor, values_checked)
from ._registry import register_fused_op
from ._autocast import autocast_inputs
from .pairwise_distance import pairwise_distance

#: Largest class count for which the forward keeps x.W^T for the backward (= kClassChunk in csrc/).
SAVED_DOTS_MAX_CLASSES = 8192


def _check_pair(x, weight):
    check_features(x, "x")
    check_features(weight, "weight")
    check_feature_dims(x, "x", weight, "weight")
    check_same_dtype({"x": x, "weight": weight})
    return check_same_device({"x": x, "weight": weight})


@autocast_inputs(lower=True)
def normalized_logits(x: torch.Tensor, weight: torch.Tensor, *, scale: float = 1.0,
                      backend: str | None = None) -> torch.Tensor:
    """scale * <x_i / |x_i|, w_c / |w_c|>: [N, C] logits of a cosine classifier (norms clamped at 1e-12)."""
    device = _check_pair(x, weight)
    scale = check_scale(scale, x.dtype, "the logits")
    name = _backend.resolve(backend, device, x.dtype, "normalized_logits")
    if name == "reference":
        return reference.normalized_logits(x, weight, scale)
    # A half distance 1 - cos is rounded to the spacing near 1 (2^-11 in float16, 2^-8 in bfloat16) before
    # 1 - d: a small logit lost its digits. Half inputs take the product in float32 and the logits round
    # once, as the reference's; the classifier's N x C x D is small beside the network.
    acc = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    d = pairwise_distance(x.to(acc), weight.to(acc), metric="cosine", backend=name)
    return ((1.0 - d) * scale).to(x.dtype)


@autocast_inputs(lower=True)
def normalized_cross_entropy(x: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, *, scale: float,
                             label_smoothing: float = 0.0, reduction: str = "mean",
                             backend: str | None = None) -> torch.Tensor:
    """Cross entropy of normalized_logits(x, weight, scale): the Sphere loss.

    loss_i = logsumexp_c(z_ic) - (1 - eps) z_{i, y_i} - eps / C sum_c z_ic, z = s cos(x_i, w_c),
    eps = label_smoothing (F.cross_entropy's convention); reduction "mean", "sum" or "none" ([N]).
    SphereReID uses s = 14, HSME s = 5. Gradients for x and weight. The fused backends never hold the
    N x C logits in the forward, and in the backward at most 2^25 elements of an N x C buffer.
    target: int32/int64 class indices in [0, C) (checked on CPU tensors, and on CUDA tensors when
    VTREID_CHECK_VALUES=1, since the check needs a host sync).
    """
    device = _check_pair(x, weight)
    # the logits are float32 (float64 for float64 inputs) whatever x's dtype
    scale = check_scale(scale, torch.float64 if x.dtype == torch.float64 else torch.float32, "the logits")
    check_tensor(target, "target")
    if target.dim() != 1 or target.shape[0] != x.shape[0]:
        raise ValueError(f"target must be a 1-D tensor of length {x.shape[0]}, got shape {tuple(target.shape)}")
    if target.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"target must be int32 or int64 class indices, got {target.dtype}")
    if target.device != device:
        raise ValueError(f"target is on {target.device} but x is on {device}")
    if weight.shape[0] == 0:
        raise ValueError("weight must have at least one class row")
    if values_checked(target) and target.numel():
        if ((target < 0) | (target >= weight.shape[0])).any():
            raise ValueError(f"target must hold class indices in [0, {weight.shape[0]}) (weight has "
                             f"{weight.shape[0]} classes)")
    label_smoothing = check_fraction(label_smoothing, "label_smoothing")
    check_choice(reduction, "reduction", reference.CE_REDUCTIONS)

    name = _backend.resolve(backend, device, x.dtype, "normalized_cross_entropy")
    if name == "reference":
        return reference.normalized_cross_entropy(x, weight, target, scale=scale, label_smoothing=label_smoothing,
                                                  reduction=reduction)
    loss = FUSED[name].call(x, weight, target.to(torch.int64).contiguous(), scale, float(label_smoothing))[0]
    if reduction == "mean":
        loss = loss.mean()
    elif reduction == "sum":
        loss = loss.sum()
    return loss.to(x.dtype)


# --- fake kernels and autograd, shared by both fused backends ---------------------------------------

def _fake_forward(x, weight, target, scale, label_smoothing):
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    n, c = x.shape[0], weight.shape[0]
    dots = x.new_empty((n, c) if c <= SAVED_DOTS_MAX_CLASSES else (0,), dtype=acc)
    return (*(x.new_empty(n, dtype=acc) for _ in range(5)), x.new_empty(c, dtype=acc), dots)


def _fake_backward(grad, x, weight, target, lse, ez, tz, xsq, wsq, dots, scale, label_smoothing):
    return torch.empty_like(x, memory_format=torch.contiguous_format), \
        torch.empty_like(weight, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    x, weight, target, scale, smoothing = inputs
    _, lse, ez, tz, xsq, wsq, dots = output
    ctx.save_for_backward(x, weight, target, lse, ez, tz, xsq, wsq, dots)
    ctx.scale, ctx.smoothing = scale, smoothing
    ctx.mark_non_differentiable(lse, ez, tz, xsq, wsq, dots)
    ctx.set_materialize_grads(False)  # no zero-filled gradients for the six saved statistics: six launches


def _make_backward(backward_op):
    def backward(ctx, grad_loss, *_):
        if grad_loss is None:
            x = ctx.saved_tensors[0]
            grad_loss = x.new_zeros(len(x))
        grad_x, grad_w = backward_op(grad_loss.contiguous(), *ctx.saved_tensors, ctx.scale, ctx.smoothing)
        return grad_x, grad_w, None, None, None
    return backward


# --- triton -----------------------------------------------------------------------------------------

def _triton_forward(x: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, scale: float,
                    label_smoothing: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                     torch.Tensor, torch.Tensor, torch.Tensor]:
    from vtreid.kernels import normalized_softmax as kernel
    return kernel.cross_entropy_forward(x, weight, target, scale, label_smoothing,
                                        save_dots=weight.shape[0] <= SAVED_DOTS_MAX_CLASSES)


def _triton_backward(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
                     lse: torch.Tensor, ez: torch.Tensor, tz: torch.Tensor, xsq: torch.Tensor, wsq: torch.Tensor,
                     dots: torch.Tensor, scale: float, label_smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    from vtreid.kernels import normalized_softmax as kernel
    return kernel.cross_entropy_backward(grad.float(), x, weight, target, lse, ez, tz, xsq, wsq, dots, scale,
                                         label_smoothing)


FUSED = register_fused_op(
    "normalized_ce",
    triton=(_triton_forward, _triton_backward),
    fake_forward=_fake_forward,
    fake_backward=_fake_backward,
    setup_context=_setup_context,
    make_backward=_make_backward,
)
