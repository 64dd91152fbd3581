"""Eager PyTorch ground truth for every op family.

Every other backend (Triton in kernels/, C++/CUDA in csrc/) is tested against these functions on
values, indices and every input gradient; the benchmarks time them as the `reference` provider and
``torch.compile`` them as the `compiled` provider. Gradients come from autograd. Half-precision inputs
are computed in float32 (as the fused kernels accumulate) and the result is cast back.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

METRICS = ("euclidean", "sqeuclidean", "cosine")

#: Row norms are clamped to at least this before dividing, as ``F.normalize`` does.
COSINE_EPS = 1e-12


def zero_tolerance(dim: int) -> float:
    """Relative threshold under which a squared Euclidean distance is flushed to exactly 0.

    d^2 = |x|^2 + |y|^2 - 2 x.y cancels catastrophically for (near-)identical rows: in float32 the
    result is rounding noise of size about sqrt(D) * 2^-24 * (|x|^2 + |y|^2), so identical rows would
    come out as a small positive number (and their gradient as noise / noise). Values at or below
    tau(D) * (|x|^2 + |y|^2), tau(D) = 2^-20 * sqrt(D) (16x that noise), are set to 0; this makes the
    distance between identical rows exactly 0 in every backend and every dtype. For unit-norm rows
    at D = 2048 it flushes Euclidean distances under about 0.009, which float32 cannot resolve anyway.
    """
    return 2.0 ** -20 * math.sqrt(dim)


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def distance_matrix(x: torch.Tensor, y: torch.Tensor, metric: str) -> torch.Tensor:
    """pairwise_distance in the accumulation dtype (float32, or float64 for float64 inputs)."""
    acc = _accumulation_dtype(x.dtype)
    xf, yf = x.to(acc), y.to(acc)
    if metric == "cosine":
        return 1.0 - F.normalize(xf, dim=1, eps=COSINE_EPS) @ F.normalize(yf, dim=1, eps=COSINE_EPS).T
    xsq = (xf * xf).sum(1)
    ysq = (yf * yf).sum(1)
    norms = xsq[:, None] + ysq[None, :]
    d2 = norms - 2.0 * (xf @ yf.T)
    keep = d2 > zero_tolerance(x.shape[1]) * norms
    d2 = torch.where(keep, d2, torch.zeros_like(d2))
    if metric == "sqeuclidean":
        return d2
    # sqrt only where kept, so the backward never forms 0 * inf at flushed entries.
    safe = torch.where(keep, d2, torch.ones_like(d2))
    return torch.where(keep, safe.sqrt(), torch.zeros_like(d2))


def pairwise_distance(x: torch.Tensor, y: torch.Tensor, metric: str = "euclidean") -> torch.Tensor:
    """[N, M] distances between the rows of x [N, D] and y [M, D].

    euclidean:   sqrt(d2),  d2 = [|x_i|^2 + |y_j|^2 - 2 x_i.y_j], flushed to 0 below zero_tolerance(D)
    sqeuclidean: d2
    cosine:      1 - <x_i / max(|x_i|, eps), y_j / max(|y_j|, eps)>,  eps = 1e-12 (as F.normalize)
    """
    return distance_matrix(x, y, metric).to(x.dtype)


MODALITY_RULES = ("any", "cross", "same")


def modality_mask(rule: str, anchor_modality, candidate_modality) -> torch.Tensor | bool:
    """[N, M] mask of the candidates a rule admits relative to each anchor's modality."""
    if rule == "any":
        return True
    same = anchor_modality[:, None] == candidate_modality[None, :]
    return same if rule == "same" else ~same


def hard_mining(anchors, anchor_labels, candidates=None, candidate_labels=None, *, metric="euclidean",
                anchor_modality=None, candidate_modality=None, positive="any", negative="any"):
    """Hardest positive (farthest same-identity candidate) and hardest negative (nearest
    other-identity candidate) of every anchor, under the modality rules; see vtreid.ops.hard_mining.

    Returns (pos_dist, pos_index, neg_dist, neg_index, valid). Builds the full N x M distance matrix:
    it is the ground truth, not the fast path.
    """
    self_mining = candidates is None
    if self_mining:
        candidates, candidate_labels, candidate_modality = anchors, anchor_labels, anchor_modality
    dist = distance_matrix(anchors, candidates, metric)
    if dist.shape[1] == 0:  # no candidates: every anchor is invalid (zeros kept on the autograd graph)
        zero = dist.sum(1)
        none = torch.full((len(anchors),), -1, dtype=torch.int64, device=anchors.device)
        return (zero.to(anchors.dtype), none, zero.to(anchors.dtype), none.clone(),
                torch.zeros(len(anchors), dtype=torch.bool, device=anchors.device))
    same_id = anchor_labels[:, None] == candidate_labels[None, :]
    pos_mask = same_id & modality_mask(positive, anchor_modality, candidate_modality)
    neg_mask = ~same_id & modality_mask(negative, anchor_modality, candidate_modality)
    if self_mining:
        pos_mask = pos_mask & ~torch.eye(len(anchors), dtype=torch.bool, device=anchors.device)
    valid = pos_mask.any(1) & neg_mask.any(1)
    inf = torch.tensor(float("inf"), dtype=dist.dtype, device=dist.device)
    # argmax/argmin return the first extreme value: ties pick the lowest index.
    pos_index = torch.where(pos_mask, dist.detach(), -inf).argmax(1)
    neg_index = torch.where(neg_mask, dist.detach(), inf).argmin(1)
    zero = torch.zeros((), dtype=dist.dtype, device=dist.device)
    pos_dist = torch.where(valid, dist.gather(1, pos_index[:, None])[:, 0], zero)
    neg_dist = torch.where(valid, dist.gather(1, neg_index[:, None])[:, 0], zero)
    none = torch.full_like(pos_index, -1)
    return (pos_dist.to(anchors.dtype), torch.where(valid, pos_index, none), neg_dist.to(anchors.dtype),
            torch.where(valid, neg_index, none), valid)
