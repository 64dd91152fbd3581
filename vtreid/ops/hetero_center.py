"""vtreid.ops.modality_centers and vtreid.ops.hetero_center_loss: per-class modality centres, fused.

The authors' code forms centres with ``chunk()``, right only for a batch sorted by identity (and wrong
under data parallelism). Here every sample gets a class slot, its position in a stable sort of the
labels (``class_slots``: each fused backend's own op, no host sync), so any batch order gives the same
centres, and each slot's samples are summed in batch order: bitwise reproducible, no float atomics.

Fused backends (a forward/backward pair each, with fake kernels and autograd):

    native: torch.ops.vtreid.hetero_center_fwd / _bwd          (csrc/, CPU and CUDA)
    triton: torch.ops.vtreid.hetero_center_triton_fwd / _bwd   (kernels/hetero_center.py)

The forward returns per slot k of feature set s: hinge[s, k] = [D + V - margin]_+ (0 unless both
modalities are present), the centres and variances [S, N, 2, D], counts [N, 2] and the per-class
scalars the backward needs. Slots past the number of classes are empty (count 0).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from . import _backend, reference
from ._checks import (check_choice, check_features, check_flag, check_modality_values, check_real, check_tensor,
                      modality_ids)
from ._autocast import autocast_inputs
from ._registry import native_op, register_fused_op


class Centers(NamedTuple):
    """classes [K] sorted labels present; centers [K, 2, D] (or [S, K, 2, D]), 0 = visible, 1 = infrared,
    zero where a class lacks that modality; counts [K, 2] int64."""
    classes: torch.Tensor
    centers: torch.Tensor
    counts: torch.Tensor


class ClassSlots(NamedTuple):
    order: torch.Tensor          # [N] samples stably sorted by label
    seg: torch.Tensor            # [N + 1] slot k's samples are order[seg[k]:seg[k + 1]]
    slot: torch.Tensor           # [N] each sample's slot
    sorted_labels: torch.Tensor  # [N] labels[order]
    sorted_slot: torch.Tensor    # [N] slot[order]: 0, 0, 1, 1, 1, 2, ...

    # The loss needs only the three above; these cost launches, so they are made when asked for.
    @property
    def slot_labels(self) -> torch.Tensor:
        """[N] label of each slot, -1 past the last class (duplicate slots write the same label, so the
        scatter is deterministic)."""
        return torch.full_like(self.sorted_labels, -1).scatter_(0, self.sorted_slot, self.sorted_labels)

    @property
    def num_classes(self) -> torch.Tensor:
        """[] on the device: the last slot + 1, or 0 for an empty batch."""
        return (self.sorted_slot[-1:] + 1).sum()


#: Past this many samples the slot kernels (O(N^2) comparisons: 1e9 at the limit, about a millisecond on an
#: H100) give way to the reference's sort (O(N log N), ~9 launches). Training batches are far below it.
QUADRATIC_LIMIT = 1 << 15


def _triton_class_slots(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                        torch.Tensor]:
    from vtreid.kernels import hetero_center as kernel
    return kernel.class_slots(labels)


_TRITON_SLOTS = torch.library.custom_op("vtreid::class_slots_triton", _triton_class_slots, mutates_args=())


def _fake_class_slots(labels):
    n = labels.shape[0]
    return (labels.new_empty(n, dtype=torch.int64), labels.new_empty(n + 1, dtype=torch.int64),
            *(labels.new_empty(n, dtype=torch.int64) for _ in range(3)))


torch.library.register_fake(_TRITON_SLOTS)(_fake_class_slots)


def class_slots(labels: torch.Tensor, backend: str = "reference") -> ClassSlots:
    """Slot layout of a batch's labels (vtreid.ops.reference.class_slots) with device ops only (no host
    synchronisation): the fused backends' own op, one C++ call (native) or two Triton launches, in place
    of a sort and ~8 more launches; the reference's sort past QUADRATIC_LIMIT samples on the O(N^2) paths."""
    if backend == "native" and not (labels.is_cuda and labels.shape[0] > QUADRATIC_LIMIT):
        return ClassSlots(*_NATIVE_SLOTS(labels))
    if backend == "triton" and labels.shape[0] <= QUADRATIC_LIMIT:
        if torch.compiler.is_compiling():
            return ClassSlots(*_TRITON_SLOTS(labels))
        return ClassSlots(*_triton_class_slots(labels))  # eager: without the custom op's Python dispatch
    return ClassSlots(*reference.class_slots(labels))


def _check_inputs(x, labels, modality):
    check_tensor(x, "x")
    if x.dim() not in (2, 3):
        raise ValueError(f"x must be [N, D] or [S, N, D], got shape {tuple(x.shape)}")
    check_features(x, "x", ndim=x.dim())
    n = x.shape[-2]
    for t, name, allowed in ((labels, "labels", (torch.int32, torch.int64)),
                             (modality, "modality", (torch.int32, torch.int64, torch.int8, torch.uint8, torch.bool))):
        check_tensor(t, name)
        if t.dim() != 1 or t.shape[0] != n:
            raise ValueError(f"{name} must be a 1-D tensor of length {n} (x's sample axis), got shape {tuple(t.shape)}")
        if t.dtype not in allowed:
            raise TypeError(f"{name} must have dtype {' or '.join(map(str, allowed))}, got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}")
    check_modality_values(modality, "modality")


def _fused(name, x, labels, modality, metric, strong, margin):
    xs = x if x.dim() == 3 else x[None]
    slots = class_slots(labels, name)
    mod = modality_ids(modality)
    out = FUSED[name].call(xs, slots.order, slots.seg, slots.slot, mod, metric, strong, margin)
    return slots, out


@autocast_inputs(lower=False)
def modality_centers(x: torch.Tensor, labels: torch.Tensor, modality: torch.Tensor, *,
                     backend: str | None = None) -> Centers:
    """Mean feature of each (class, modality) for any batch order; differentiable w.r.t. x.

    x [N, D] or [S, N, D]; labels int32/int64 [N]; modality [N] with 0 = visible, 1 = infrared.
    The number of classes K sizes the output, so this reads it on the host once (one synchronisation);
    hetero_center_loss never does.
    """
    _check_inputs(x, labels, modality)
    name = _backend.resolve(backend, x.device, x.dtype, "modality_centers")
    if name == "reference":
        return Centers(*reference.modality_centers(x, labels, modality))
    slots, (_, centers, _, counts, _) = _fused(name, x, labels, modality, "sqeuclidean", False, 0.0)
    k = int(slots.num_classes)
    centers = centers[:, :k].to(x.dtype)
    return Centers(slots.slot_labels[:k].to(labels.dtype), centers if x.dim() == 3 else centers[0], counts[:k])


@autocast_inputs(lower=False)
def hetero_center_loss(x: torch.Tensor, labels: torch.Tensor, modality: torch.Tensor, *, margin: float = 0.0,
                       metric: str = "sqeuclidean", strong: bool = False, reduction: str = "sum",
                       backend: str | None = None) -> torch.Tensor:
    """Hetero-Center loss (Zhu et al., eq. 2, 5, 7, 8); see vtreid.ops.reference.hetero_center_loss.

        sum (or mean) over classes present in both modalities of
        [D(c_vis, c_ir) (+ ||v_vis - v_ir||^2 if strong) - margin]_+,
        D = ||c_vis - c_ir||^2 ("sqeuclidean") or 1 - cos(c_vis, c_ir) ("cosine").

    x [N, D] gives a scalar; x [S, N, D] (S feature sets, e.g. TSLFN's 6 stripes, sharing labels and
    modality) gives [S] in one launch. Classes seen in one modality only are left out (times 0, as the
    reference: a NaN feature there still gives NaN); a batch with no class in both gives 0 with zero
    gradient. Any batch order; bitwise reproducible; no host sync.
    """
    _check_inputs(x, labels, modality)
    check_choice(metric, "metric", reference.CENTER_METRICS)
    check_choice(reduction, "reduction", reference.REDUCTIONS)
    margin = check_real(margin, "margin")
    strong = check_flag(strong, "strong")
    name = _backend.resolve(backend, x.device, x.dtype, "hetero_center_loss")
    if name == "reference":
        return reference.hetero_center_loss(x, labels, modality, margin=margin, metric=metric, strong=strong,
                                            reduction=reduction)
    _, (hinge, _, _, counts, _) = _fused(name, x, labels, modality, metric, strong, margin)
    loss = hinge.sum(-1)
    if reduction == "mean":
        loss = loss / (counts > 0).all(-1).sum().clamp_min(1)
    loss = loss.to(x.dtype)
    return loss if x.dim() == 3 else loss.squeeze(0)  # a view both ways: loss[0]'s backward is two launches


# --- fake kernels and autograd, shared by both fused backends ---------------------------------------

def _fake_forward(x, order, seg, slot, modality, metric, strong, margin):
    s, n, d = x.shape
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    return (x.new_empty((s, n), dtype=acc), x.new_empty((s, n, 2, d), dtype=acc), x.new_empty((s, n, 2, d), dtype=acc),
            x.new_empty((n, 2), dtype=torch.int64), x.new_empty((s, n, 5), dtype=acc))


def _fake_backward(x, slot, modality, hinge, centers, variances, counts, stats, grad_hinge, grad_centers, metric,
                   strong):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    x, _, _, slot, modality, metric, strong, _ = inputs
    hinge, centers, variances, counts, stats = output
    ctx.save_for_backward(x, slot, modality, hinge, centers, variances, counts, stats)
    ctx.metric, ctx.strong = metric, strong
    ctx.mark_non_differentiable(variances, counts, stats)
    ctx.set_materialize_grads(False)


def _make_backward(backward_op):
    def backward(ctx, grad_hinge, grad_centers, _gv, _gc, _gs):
        x, slot, modality, hinge, centers, variances, counts, stats = ctx.saved_tensors
        if grad_hinge is None:
            # an unused hinge: as an inactive one, so a NaN hinge gives no 0 * NaN to the samples that
            # only reach the loss through the centres (the kernels read the hinge only to gate its gradient)
            grad_hinge = hinge = torch.zeros_like(hinge)
        grad_x = backward_op(x, slot, modality, hinge, centers, variances, counts, stats, grad_hinge, grad_centers,
                             ctx.metric, ctx.strong)
        return grad_x, None, None, None, None, None, None, None
    return backward


# --- triton -----------------------------------------------------------------------------------------

def _triton_forward(x: torch.Tensor, order: torch.Tensor, seg: torch.Tensor, slot: torch.Tensor,
                    modality: torch.Tensor, metric: str, strong: bool, margin: float
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from vtreid.kernels import hetero_center as kernel
    return kernel.forward(x, order, seg, modality, metric, strong, margin)


def _triton_backward(x: torch.Tensor, slot: torch.Tensor, modality: torch.Tensor, hinge: torch.Tensor,
                     centers: torch.Tensor, variances: torch.Tensor, counts: torch.Tensor, stats: torch.Tensor,
                     grad_hinge: torch.Tensor, grad_centers: torch.Tensor | None, metric: str,
                     strong: bool) -> torch.Tensor:
    from vtreid.kernels import hetero_center as kernel
    return kernel.backward(x, slot, modality, hinge, centers, variances, counts, stats, grad_hinge, grad_centers,
                           metric, strong)


FUSED = register_fused_op(
    "hetero_center",
    triton=(_triton_forward, _triton_backward),
    fake_forward=_fake_forward,
    fake_backward=_fake_backward,
    setup_context=_setup_context,
    make_backward=_make_backward,
)
_NATIVE_SLOTS = native_op("class_slots") if "native" in FUSED else None  # None: the extension is not built
if _NATIVE_SLOTS is not None:
    torch.library.register_fake(_NATIVE_SLOTS)(_fake_class_slots)
