"""vtreid.ops.hard_mining: the hardest positive and negative of every anchor, fused and streaming.

Fused backends (each a forward/backward pair of torch.library ops with fake kernels and autograd):

    native: torch.ops.vtreid.hard_mining_fwd / _bwd         (csrc/, CPU and CUDA)
    triton: torch.ops.vtreid.hard_mining_triton_fwd / _bwd  (kernels/hard_mining.py)

The forward returns (pos_dist, pos_index, neg_dist, neg_index, valid, asq, csq, pos_dist_acc, neg_dist_acc):
the distances in the input dtype (what the public function returns, the outputs that carry the gradient),
the squared row norms the streaming pass computed anyway, and the same distances in float32 (float64 for
float64 inputs), saved so the backward works from full-precision values. The kernels write both copies of
the distances, so half inputs cost no cast launch either way (forward, or the gradient's way back).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from . import _backend, reference
from ._checks import (check_choice, check_feature_dims, check_features, check_modality_values, check_same_device,
                      check_same_dtype, check_tensor, modality_ids)
from ._autocast import autocast_inputs
from ._registry import register_fused_op

RULES = reference.MODALITY_RULES


class Mined(NamedTuple):
    """Per anchor: the hardest (farthest) positive and hardest (nearest) negative.

    pos_dist, neg_dist: [N] in the anchors' dtype, differentiable w.r.t. anchors and candidates;
    pos_index, neg_index: [N] int64 candidate rows; valid: [N] bool, the anchor has at least one
    positive and one negative. Invalid anchors have dist 0 (zero gradient) and index -1.
    """
    pos_dist: torch.Tensor
    pos_index: torch.Tensor
    neg_dist: torch.Tensor
    neg_index: torch.Tensor
    valid: torch.Tensor


def _check_ids(t, name: str, length: int, device: torch.device, kind: str) -> torch.Tensor:
    check_tensor(t, name)
    if t.dim() != 1 or t.shape[0] != length:
        raise ValueError(f"{name} must be a 1-D tensor of length {length}, got shape {tuple(t.shape)}")
    allowed = (torch.int32, torch.int64) if kind == "labels" else (torch.int32, torch.int64, torch.uint8, torch.int8,
                                                                   torch.bool)
    if t.dtype not in allowed:
        raise TypeError(f"{name} must have dtype {' or '.join(str(a) for a in allowed)}, got {t.dtype}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but the features are on {device}")
    if kind == "modality":
        check_modality_values(t, name)
    return t


@autocast_inputs(lower=False)
def hard_mining(anchors: torch.Tensor, anchor_labels: torch.Tensor, candidates: torch.Tensor | None = None,
                candidate_labels: torch.Tensor | None = None, *, metric: str = "euclidean",
                anchor_modality: torch.Tensor | None = None, candidate_modality: torch.Tensor | None = None,
                positive: str = "any", negative: str = "any", backend: str | None = None) -> Mined:
    """For each anchor, the farthest candidate of its identity and the nearest of another identity.

    positive / negative: "any", "cross" or "same": the modality a positive / negative may have relative
    to the anchor's (then anchor_modality, and candidate_modality when candidates are given, are
    required: 0 = visible, 1 = infrared; checked on CPU tensors, and on CUDA tensors when
    VTREID_CHECK_VALUES=1, since that check needs a host sync). candidates=None mines the anchors
    against themselves, and an anchor is never its own positive. Distances use ``metric`` exactly as
    pairwise_distance. Ties pick the lowest candidate index. Fused backends never form the N x M
    matrix and their backward touches only the chosen pairs; candidate gradients are summed in a fixed
    order (no float atomics), so results are bitwise reproducible.
    """
    check_features(anchors, "anchors")
    device = anchors.device
    n = anchors.shape[0]
    check_choice(metric, "metric", reference.METRICS)
    check_choice(positive, "positive", RULES)
    check_choice(negative, "negative", RULES)
    _check_ids(anchor_labels, "anchor_labels", n, device, "labels")
    self_mining = candidates is None
    if self_mining:
        for value, name in ((candidate_labels, "candidate_labels"), (candidate_modality, "candidate_modality")):
            if value is not None:
                raise ValueError(f"{name} was given without candidates")
        candidates = anchors
    else:
        check_features(candidates, "candidates")
        check_feature_dims(anchors, "anchors", candidates, "candidates")
        check_same_dtype({"anchors": anchors, "candidates": candidates})
        check_same_device({"anchors": anchors, "candidates": candidates})
        if candidate_labels is None:
            raise ValueError("candidate_labels is required when candidates are given")
    m = candidates.shape[0]
    if not self_mining:
        _check_ids(candidate_labels, "candidate_labels", m, device, "labels")
    needs_modality = positive != "any" or negative != "any"
    if needs_modality and anchor_modality is None:
        raise ValueError(f"anchor_modality is required for positive={positive!r}, negative={negative!r}")
    if needs_modality and not self_mining and candidate_modality is None:
        raise ValueError("candidate_modality is required when candidates are given and a rule is not 'any'")
    # A modality that is given is checked even where the rules ignore it: a wrong one is a caller's bug
    # that would surface only once a rule is switched on.
    if anchor_modality is not None:
        _check_ids(anchor_modality, "anchor_modality", n, device, "modality")
    if candidate_modality is not None:
        _check_ids(candidate_modality, "candidate_modality", m, device, "modality")
    if not needs_modality:
        anchor_modality = candidate_modality = None

    name = _backend.resolve(backend, device, anchors.dtype, "hard_mining")
    if name == "reference":
        return Mined(*reference.hard_mining(
            anchors, anchor_labels, None if self_mining else candidates, None if self_mining else candidate_labels,
            metric=metric, anchor_modality=anchor_modality, candidate_modality=candidate_modality,
            positive=positive, negative=negative))

    labels_a = anchor_labels.to(torch.int64).contiguous()
    labels_c = labels_a if self_mining else candidate_labels.to(torch.int64).contiguous()
    mod_a = mod_c = None
    if needs_modality:
        mod_a = modality_ids(anchor_modality)
        mod_c = mod_a if self_mining else modality_ids(candidate_modality)
    out = FUSED[name].call(anchors, labels_a, candidates, labels_c, mod_a, mod_c, metric, positive, negative,
                           self_mining)
    return Mined(*out[:5])


# --- fake kernels and autograd, shared by both fused backends ---------------------------------------

def _fake_forward(anchors, anchor_labels, candidates, candidate_labels, anchor_modality, candidate_modality,
                  metric, positive, negative, self_mining):
    n, m = anchors.shape[0], candidates.shape[0]
    acc = torch.float64 if anchors.dtype == torch.float64 else torch.float32
    return (anchors.new_empty(n), anchors.new_empty(n, dtype=torch.int64), anchors.new_empty(n),
            anchors.new_empty(n, dtype=torch.int64), anchors.new_empty(n, dtype=torch.bool),
            anchors.new_empty(n, dtype=acc), anchors.new_empty(m, dtype=acc), anchors.new_empty(n, dtype=acc),
            anchors.new_empty(n, dtype=acc))


def _fake_backward(grad_pos, grad_neg, anchors, candidates, pos_index, neg_index, pos_dist, neg_dist, asq, csq,
                   metric):
    return torch.empty_like(anchors, memory_format=torch.contiguous_format), \
        torch.empty_like(candidates, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    anchors, _, candidates, _, _, _, metric, _, _, _ = inputs
    _, pos_i, _, neg_i, valid, asq, csq, pos_acc, neg_acc = output
    # The backward works from the accumulation-dtype distances; pos_dist / neg_dist carry the gradient.
    ctx.save_for_backward(anchors, candidates, pos_i, neg_i, pos_acc, neg_acc, asq, csq)
    ctx.metric = metric
    ctx.mark_non_differentiable(pos_i, neg_i, valid, asq, csq, pos_acc, neg_acc)
    # Only pos_dist and neg_dist carry gradients: zero-filling the other seven was seven launches a step.
    ctx.set_materialize_grads(False)


def _make_backward(backward_op):
    def backward(ctx, grad_pos, _gpi, grad_neg, _gni, _gv, _gasq, _gcsq, _gpa, _gna):
        anchors, candidates, pos_i, neg_i, pos_d, neg_d, asq, csq = ctx.saved_tensors
        # A loss of one side only: the other's gradient is zero, and its pairs are passed as none (index -1):
        # 0 times a non-finite anchor's pair would be NaN, where the reference's unused side adds nothing.
        if grad_pos is None:
            grad_pos, pos_i = anchors.new_zeros(()).expand(len(anchors)), torch.full_like(pos_i, -1)
        if grad_neg is None:
            grad_neg, neg_i = anchors.new_zeros(()).expand(len(anchors)), torch.full_like(neg_i, -1)
        grad_a, grad_c = backward_op(grad_pos, grad_neg, anchors, candidates, pos_i, neg_i, pos_d, neg_d, asq, csq,
                                     ctx.metric)
        return grad_a, None, grad_c, None, None, None, None, None, None, None
    return backward


# --- triton -----------------------------------------------------------------------------------------

def _triton_forward(anchors: torch.Tensor, anchor_labels: torch.Tensor, candidates: torch.Tensor,
                    candidate_labels: torch.Tensor, anchor_modality: torch.Tensor | None,
                    candidate_modality: torch.Tensor | None, metric: str, positive: str, negative: str,
                    self_mining: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from vtreid.kernels import hard_mining as kernel
    return kernel.forward(anchors, anchor_labels, candidates, candidate_labels, anchor_modality, candidate_modality,
                          metric, positive, negative, self_mining, reference.zero_tolerance(anchors.shape[1]))


def _triton_backward(grad_pos: torch.Tensor, grad_neg: torch.Tensor, anchors: torch.Tensor, candidates: torch.Tensor,
                     pos_index: torch.Tensor, neg_index: torch.Tensor, pos_dist: torch.Tensor, neg_dist: torch.Tensor,
                     asq: torch.Tensor, csq: torch.Tensor, metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    from vtreid.kernels import hard_mining as kernel
    return kernel.backward(grad_pos, grad_neg, anchors, candidates, pos_index, neg_index, pos_dist, neg_dist, asq,
                           csq, metric)


FUSED = register_fused_op(
    "hard_mining",
    triton=(_triton_forward, _triton_backward),
    fake_forward=_fake_forward,
    fake_backward=_fake_backward,
    setup_context=_setup_context,
    make_backward=_make_backward,
)
