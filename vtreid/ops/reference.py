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
    # Only finite rounding noise is flushed: NaN (and inf) distances of a diverged model propagate.
    keep = ~((d2 <= zero_tolerance(x.shape[1]) * norms) & norms.isfinite())
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
    """[N, M] mask of the candidates a rule admits relative to each anchor's modality (any non-zero value
    is infrared, as in every backend)."""
    if rule == "any":
        return True
    same = (anchor_modality != 0)[:, None] == (candidate_modality != 0)[None, :]
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
    pos_mask, neg_mask = mining_masks(anchor_labels, candidate_labels, anchor_modality, candidate_modality,
                                      positive, negative, self_mining)
    valid = pos_mask.any(1) & neg_mask.any(1)
    inf = torch.tensor(float("inf"), dtype=dist.dtype, device=dist.device)
    # argmax/argmin return the first extreme value: ties pick the lowest index.
    pos_index = torch.where(pos_mask, dist.detach(), -inf).argmax(1)
    neg_index = torch.where(neg_mask, dist.detach(), inf).argmin(1)
    return mined_pairs(dist, pos_index, neg_index, valid, anchors.dtype)


def mining_masks(anchor_labels, candidate_labels, anchor_modality, candidate_modality, positive, negative,
                 self_mining: bool):
    """[N, M] masks of the candidates hard_mining may pick as each anchor's positive and negative."""
    same_id = anchor_labels[:, None] == candidate_labels[None, :]
    pos_mask = same_id & modality_mask(positive, anchor_modality, candidate_modality)
    neg_mask = ~same_id & modality_mask(negative, anchor_modality, candidate_modality)
    if self_mining:
        pos_mask = pos_mask & ~torch.eye(len(anchor_labels), dtype=torch.bool, device=anchor_labels.device)
    return pos_mask, neg_mask


def mined_pairs(dist, pos_index, neg_index, valid, dtype):
    """hard_mining's result for given chosen indices: the distances of the chosen pairs (on dist's autograd
    graph), and distance 0, index -1 for invalid anchors."""
    zero = torch.zeros((), dtype=dist.dtype, device=dist.device)
    pos_safe, neg_safe = pos_index.clamp_min(0), neg_index.clamp_min(0)
    pos_dist = torch.where(valid, dist.gather(1, pos_safe[:, None])[:, 0], zero)
    neg_dist = torch.where(valid, dist.gather(1, neg_safe[:, None])[:, 0], zero)
    none = torch.full_like(pos_index, -1)
    return (pos_dist.to(dtype), torch.where(valid, pos_index, none), neg_dist.to(dtype),
            torch.where(valid, neg_index, none), valid)


CENTER_METRICS = ("sqeuclidean", "cosine")
REDUCTIONS = ("sum", "mean")


def modality_centers(x: torch.Tensor, labels: torch.Tensor, modality: torch.Tensor):
    """Per class present, the mean feature of each modality (0 visible, 1 infrared), for any batch order.

    x is [N, D] or [S, N, D] (S feature sets sharing labels and modality). Returns
    (classes [K] sorted, centers [K, 2, D] or [S, K, 2, D] in x's dtype, counts [K, 2] int64).
    A modality a class lacks has a zero centre and count 0. (torch.unique: synchronises.)
    """
    centers, _, counts, classes = _centers_and_variances(x, labels, modality)
    return classes, centers.to(x.dtype), counts


def _centers_and_variances(x, labels, modality):
    squeeze = x.dim() == 2
    xs = (x[None] if squeeze else x).to(_accumulation_dtype(x.dtype))
    classes, inverse = torch.unique(labels, sorted=True, return_inverse=True)
    k = len(classes)
    slot = inverse * 2 + (modality != 0).long()  # (class, modality) cell; any non-zero value is infrared
    counts = torch.zeros(k * 2, dtype=torch.int64, device=x.device).index_add_(0, slot, torch.ones_like(slot))
    denom = counts.clamp_min(1).to(xs.dtype)[:, None]
    sums = torch.zeros(xs.shape[0], k * 2, xs.shape[2], dtype=xs.dtype, device=x.device).index_add(1, slot, xs)
    centers = sums / denom
    dev = xs - centers[:, slot]
    variances = torch.zeros_like(sums).index_add(1, slot, dev * dev) / denom  # population variance (divide by n)
    shape = (xs.shape[0], k, 2, xs.shape[2])
    centers, variances = centers.reshape(shape), variances.reshape(shape)
    if squeeze:
        centers, variances = centers[0], variances[0]
    return centers, variances, counts.reshape(k, 2), classes


def class_slots(labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The class-slot layout the fused hetero-center ops take, from a stable sort of the labels:

        order          [N] sample indices stably sorted by label
        seg            [N + 1] slot k's samples are order[seg[k]:seg[k + 1]]; N past the last class
        slot           [N] each sample's slot (its label's rank among the distinct labels)
        sorted_labels  [N] labels[order]
        sorted_slot    [N] slot[order]: 0, 0, 1, 1, 1, 2, ...

    all int64. The fused backends compute the same with one op (torch.ops.vtreid.class_slots, the Triton
    slot kernels); this is their reference and the fallback past their O(N^2) size limit.
    """
    n = labels.shape[0]
    sorted_labels, order = torch.sort(labels.to(torch.int64), stable=True)
    # A sample starts a new class where its sorted label differs from the one before; the first sample
    # counts 0, so the running count is the slot.
    starts = torch.zeros(n, dtype=torch.int64, device=labels.device)
    torch.ne(sorted_labels[1:], sorted_labels[:-1], out=starts[1:])
    sorted_slot = starts.cumsum_(0)
    slot = torch.empty_like(sorted_slot).scatter_(0, order, sorted_slot)
    seg = torch.searchsorted(sorted_slot, torch.arange(n + 1, device=labels.device))
    return order, seg, slot, sorted_labels, sorted_slot


def hetero_center_loss(x: torch.Tensor, labels: torch.Tensor, modality: torch.Tensor, *, margin: float = 0.0,
                       metric: str = "sqeuclidean", strong: bool = False, reduction: str = "sum") -> torch.Tensor:
    """Hetero-Center loss (Zhu et al., eq. 2, 5, 7, 8) over the classes present in both modalities:

        L = sum_k [ D(c_k,vis, c_k,ir) (+ ||v_k,vis - v_k,ir||^2 if strong) - margin ]_+
        D = ||c_vis - c_ir||^2 (eq. 2/5)  or  1 - cos(c_vis, c_ir) (eq. 7, norms clamped at 1e-12)
        v = per-dimension population variance of the class's features of that modality (eq. 8)

    (Eq. 6 writes the same sum with a factor 1/2; eq. 2, 5 and 8 and METHODS.md have none, nor does
    this.) Classes seen in one modality only are left out, by a factor 0 (a NaN or inf feature there
    still makes the loss NaN: a diverged model does not get a finite loss); "mean" divides by the number
    of classes kept (at least 1). A batch with no class in both modalities gives 0 with zero gradient.
    x [N, D] gives a scalar, x [S, N, D] gives [S] (one loss per feature set).
    """
    centers, variances, counts, _ = _centers_and_variances(x, labels, modality)
    if x.dim() == 2:
        centers, variances = centers[None], variances[None]
    c_vis, c_ir = centers[:, :, 0], centers[:, :, 1]
    if metric == "cosine":
        dist = 1.0 - (F.normalize(c_vis, dim=-1, eps=COSINE_EPS) * F.normalize(c_ir, dim=-1, eps=COSINE_EPS)).sum(-1)
    else:
        dist = ((c_vis - c_ir) ** 2).sum(-1)
    if strong:
        dist = dist + ((variances[:, :, 0] - variances[:, :, 1]) ** 2).sum(-1)
    both = (counts > 0).all(-1)
    per_class = torch.relu(dist - margin) * both
    loss = per_class.sum(-1)
    if reduction == "mean":
        loss = loss / both.sum().clamp_min(1)
    loss = loss.to(x.dtype)
    return loss[0] if x.dim() == 2 else loss


CE_REDUCTIONS = ("mean", "sum", "none")


def normalized_logits(x: torch.Tensor, weight: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """scale * <x_i / |x_i|, w_c / |w_c|>, [N, C] (norms clamped at 1e-12 as F.normalize)."""
    acc = _accumulation_dtype(x.dtype)
    logits = scale * (F.normalize(x.to(acc), dim=1, eps=COSINE_EPS) @ F.normalize(weight.to(acc), dim=1, eps=COSINE_EPS).T)
    return logits.to(x.dtype)


def normalized_cross_entropy(x: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, *, scale: float,
                             label_smoothing: float = 0.0, reduction: str = "mean") -> torch.Tensor:
    """Cross entropy of normalized_logits: the Sphere loss (SphereReID eq. 6, s = 14; HSME's s = 5).

    loss_i = lse_i(z) - (1 - eps) z_{i, y_i} - eps / C * sum_c z_ic  (as F.cross_entropy's label_smoothing)
    Computed in float32 (float64 for float64 inputs); the result has x's dtype.
    """
    acc = _accumulation_dtype(x.dtype)
    logits = scale * (F.normalize(x.to(acc), dim=1, eps=COSINE_EPS) @ F.normalize(weight.to(acc), dim=1, eps=COSINE_EPS).T)
    loss = F.cross_entropy(logits, target.long(), label_smoothing=label_smoothing, reduction=reduction)
    return loss.to(x.dtype)
