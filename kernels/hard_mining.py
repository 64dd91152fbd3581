"""Triton kernels for vtreid.ops.hard_mining: hardest positive / negative per anchor in one streaming pass.

Forward: each program owns BLOCK_N anchors and streams the candidates in BLOCK_M tiles. A tile's
distances come from tl.dot plus the shared distance epilogue (kernels/pairwise_distance.py); label,
modality and self masks are built from the id vectors in registers and folded into a running
max/argmax (positives) and min/argmin (negatives). No N x M buffer or mask exists; ties keep the lowest
candidate index (a later tile replaces the running best only when strictly better).

Backward touches only the chosen pairs. With g_p, g_n the upstream gradients of pos_dist, neg_dist:
    grad_a_i   = alpha_i a_i + beta_p,i c_p(i) + beta_n,i c_n(i)
    contrib_pi = gamma_p,i c_p(i) + beta_p,i a_i       (to be added into grad_c[p(i)]; likewise n)
    euclidean   k = g / d (0 where d = 0 or the row is invalid): alpha = k_p + k_n, beta = -k, gamma = k
    sqeuclidean k = 2 g   (same masks)
    cosine      beta = -g / (|a| |c|),  alpha = [|a| > eps] sum g cos / |a|^2,  gamma = [|c| > eps] g cos / |c|^2
Candidate gradients are summed without float atomics, so they are bitwise reproducible: the 2N pair
contributions are stably sorted by candidate index, and one program per (candidate, feature slice)
adds its segment in order.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import autotune, on_device_of
from .pairwise_distance import distance_epilogue, dot_and_norms, METRIC_CODES

RULE_CODES = {"any": 0, "cross": 1, "same": 2}

_FWD_CONFIGS = (
    [
        triton.Config({"BLOCK_N": 128, "BLOCK_M": 128, "BLOCK_D": 32}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_N": 128, "BLOCK_M": 64, "BLOCK_D": 64}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_N": 64, "BLOCK_M": 128, "BLOCK_D": 64}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_N": 64, "BLOCK_M": 64, "BLOCK_D": 64}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_N": 32, "BLOCK_M": 64, "BLOCK_D": 64}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_N": 16, "BLOCK_M": 64, "BLOCK_D": 128}, num_warps=4, num_stages=3),
    ],
    {"BLOCK_N": 16, "BLOCK_M": 32, "BLOCK_D": 32},
)


@triton.jit
def _rule_mask(rule: tl.constexpr, am, cm):
    if rule == 1:
        return am[:, None] != cm[None, :]
    else:
        return am[:, None] == cm[None, :]


@triton.jit
def _fold_best(ok, dist, rm, big, best, best_i, FARTHEST: tl.constexpr):
    """Fold a [BN, BM] tile into the running (best, index) per row, over the entries where ``ok``.

    Larger wins when FARTHEST, else smaller; ties keep the lowest index (a later tile must be strictly
    better). A NaN distance beats every number (the lowest-index NaN wins, and nothing replaces it), as
    torch.argmax / argmin do in the reference: a NaN feature shows up in the mined distances, it is never
    hidden behind a finite one. An infinite distance is a real candidate (index set even if it equals the
    +-inf start value)."""
    nan = ok & (dist != dist)
    has_nan = tl.max(nan.to(tl.int32), axis=1) > 0
    nan_i = tl.min(tl.where(nan, rm[None, :], big), axis=1)
    num_ok = ok & (dist == dist)
    if FARTHEST:
        keyed = tl.where(num_ok, dist, float("-inf"))
        tile_best = tl.max(keyed, axis=1)
    else:
        keyed = tl.where(num_ok, dist, float("inf"))
        tile_best = tl.min(keyed, axis=1)
    tile_i = tl.min(tl.where(num_ok & (keyed == tile_best[:, None]), rm[None, :], big), axis=1)
    if FARTHEST:
        stronger = tile_best > best
    else:
        stronger = tile_best < best
    best_is_nan = best != best
    take_nan = has_nan & ~best_is_nan
    take_num = (tile_i < big) & ~best_is_nan & ((best_i < 0) | stronger)
    new_best = tl.where(take_nan, float("nan"), tl.where(take_num, tile_best, best))
    new_i = tl.where(take_nan, nan_i.to(tl.int64), tl.where(take_num, tile_i.to(tl.int64), best_i))
    return new_best, new_i


@autotune(*_FWD_CONFIGS, key=["N", "M", "D", "METRIC", "POS_RULE", "NEG_RULE", "SELF"])
@triton.jit
def _mining_fwd_kernel(
    A, C, AL, CL, AM, CM,
    POS_D, POS_I, NEG_D, NEG_I, VALID, ASQ, CSQ,
    N, M, D,
    stride_an, stride_ad, stride_cn, stride_cd,
    tau,
    METRIC: tl.constexpr, POS_RULE: tl.constexpr, NEG_RULE: tl.constexpr, SELF: tl.constexpr,
    IEEE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    rn = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = rn < N
    al = tl.load(AL + rn, mask=mask_n, other=0)
    if POS_RULE + NEG_RULE > 0:
        am = tl.load(AM + rn, mask=mask_n, other=0)

    best_pos = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    best_neg = tl.full((BLOCK_N,), float("inf"), tl.float32)
    pos_i = tl.full((BLOCK_N,), -1, tl.int64)
    neg_i = tl.full((BLOCK_N,), -1, tl.int64)
    asq = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for m0 in range(0, M, BLOCK_M):
        rm = m0 + tl.arange(0, BLOCK_M)
        mask_m = rm < M
        dot, asq, csq = dot_and_norms(A, C, rn, rm, mask_n, mask_m, D, stride_an, stride_ad, stride_cn, stride_cd,
                                      IEEE, BLOCK_N, BLOCK_M, BLOCK_D)
        dist = distance_epilogue(dot, asq, csq, tau, METRIC)
        if pid == 0:
            tl.store(CSQ + rm, csq, mask=mask_m)

        cl = tl.load(CL + rm, mask=mask_m, other=0)
        in_range = mask_n[:, None] & mask_m[None, :]
        same_id = al[:, None] == cl[None, :]
        pos_ok = same_id & in_range
        neg_ok = (al[:, None] != cl[None, :]) & in_range
        if POS_RULE + NEG_RULE > 0:
            cm = tl.load(CM + rm, mask=mask_m, other=0)
            if POS_RULE != 0:
                pos_ok = pos_ok & _rule_mask(POS_RULE, am, cm)
            if NEG_RULE != 0:
                neg_ok = neg_ok & _rule_mask(NEG_RULE, am, cm)
        if SELF:
            pos_ok = pos_ok & (rn[:, None] != rm[None, :])

        best_pos, pos_i = _fold_best(pos_ok, dist, rm, M + BLOCK_M, best_pos, pos_i, True)
        best_neg, neg_i = _fold_best(neg_ok, dist, rm, M + BLOCK_M, best_neg, neg_i, False)

    valid = (pos_i >= 0) & (neg_i >= 0)
    tl.store(POS_D + rn, tl.where(valid, best_pos, 0.0), mask=mask_n)
    tl.store(NEG_D + rn, tl.where(valid, best_neg, 0.0), mask=mask_n)
    tl.store(POS_I + rn, tl.where(valid, pos_i, -1), mask=mask_n)
    tl.store(NEG_I + rn, tl.where(valid, neg_i, -1), mask=mask_n)
    tl.store(VALID + rn, valid.to(tl.int8), mask=mask_n)
    tl.store(ASQ + rn, asq, mask=mask_n)


@triton.jit
def _pair_coefficients(g, d, idx, asq, csq, METRIC: tl.constexpr):
    """(alpha share, beta, gamma) of one chosen pair per row; zero for invalid rows (idx < 0)."""
    chosen = idx >= 0
    if METRIC == 2:
        na = tl.sqrt_rn(asq)
        nc = tl.sqrt_rn(csq)
        inv_a = 1.0 / tl.maximum(na, 1e-12)
        inv_c = 1.0 / tl.maximum(nc, 1e-12)
        gc = tl.where(chosen, g, 0.0)
        cos = 1.0 - d
        beta = -gc * inv_a * inv_c
        alpha = tl.where(na > 1e-12, gc * cos * inv_a * inv_a, 0.0)
        gamma = tl.where(nc > 1e-12, gc * cos * inv_c * inv_c, 0.0)
    else:
        live = chosen & (d > 0.0)
        if METRIC == 0:
            k = tl.where(live, g / tl.where(live, d, 1.0), 0.0)
        else:
            k = tl.where(live, 2.0 * g, 0.0)
        alpha = k
        beta = -k
        gamma = k
    return alpha, beta, gamma


@triton.jit
def _mining_pair_grad_kernel(
    GP, GN, A, C, PI, NI, PD, ND, ASQ, CSQ, GRAD_A, CONTRIB,
    N, M, D,
    stride_an, stride_ad, stride_cn, stride_cd,
    METRIC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_d = tl.program_id(1)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rd = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_n = rn < N
    mask_d = rd < D
    mask = mask_n[:, None] & mask_d[None, :]
    pi = tl.load(PI + rn, mask=mask_n, other=-1)
    ni = tl.load(NI + rn, mask=mask_n, other=-1)
    # An index outside [0, M) is treated as "no pair" (-1): never used to address memory.
    pi = tl.where(pi < M, pi, -1)
    ni = tl.where(ni < M, ni, -1)
    rd64 = rd.to(tl.int64)
    pi_safe = tl.where(pi >= 0, pi, 0)
    ni_safe = tl.where(ni >= 0, ni, 0)
    asq = tl.load(ASQ + rn, mask=mask_n, other=0.0)
    ap, bp, gp_ = _pair_coefficients(tl.load(GP + rn, mask=mask_n, other=0.0), tl.load(PD + rn, mask=mask_n, other=0.0),
                                     pi, asq, tl.load(CSQ + pi_safe, mask=mask_n & (pi >= 0), other=0.0), METRIC)
    an, bn, gn_ = _pair_coefficients(tl.load(GN + rn, mask=mask_n, other=0.0), tl.load(ND + rn, mask=mask_n, other=0.0),
                                     ni, asq, tl.load(CSQ + ni_safe, mask=mask_n & (ni >= 0), other=0.0), METRIC)

    a = tl.load(A + rn.to(tl.int64)[:, None] * stride_an + rd64[None, :] * stride_ad, mask=mask, other=0.0).to(tl.float32)
    # Invalid anchors (index -1) read no candidate row, so a non-finite row cannot leak into them.
    cp = tl.load(C + pi_safe[:, None] * stride_cn + rd64[None, :] * stride_cd, mask=mask & (pi >= 0)[:, None],
                 other=0.0).to(tl.float32)
    cn = tl.load(C + ni_safe[:, None] * stride_cn + rd64[None, :] * stride_cd, mask=mask & (ni >= 0)[:, None],
                 other=0.0).to(tl.float32)
    grad_a = (ap + an)[:, None] * a + bp[:, None] * cp + bn[:, None] * cn
    tl.store(GRAD_A + rn.to(tl.int64)[:, None] * D + rd[None, :], grad_a.to(GRAD_A.dtype.element_ty), mask=mask)
    contrib_p = gp_[:, None] * cp + bp[:, None] * a
    contrib_n = gn_[:, None] * cn + bn[:, None] * a
    tl.store(CONTRIB + rn.to(tl.int64)[:, None] * D + rd[None, :], contrib_p, mask=mask)
    tl.store(CONTRIB + (rn.to(tl.int64) + N)[:, None] * D + rd[None, :], contrib_n, mask=mask)


@triton.jit
def _segment_sum_kernel(CONTRIB, ORDER, SEG, OUT, D, BLOCK_D: tl.constexpr):
    """OUT[j] = sum over p in [SEG[j], SEG[j+1]) of CONTRIB[ORDER[p]], in that order."""
    j = tl.program_id(0)
    rd = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = rd < D
    start = tl.load(SEG + j)
    end = tl.load(SEG + j + 1)
    acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for p in range(start, end):
        row = tl.load(ORDER + p)
        acc += tl.load(CONTRIB + row * D + rd, mask=mask_d, other=0.0)
    tl.store(OUT + j.to(tl.int64) * D + rd, acc.to(OUT.dtype.element_ty), mask=mask_d)


@on_device_of("anchors")
def forward(anchors, anchor_labels, candidates, candidate_labels, anchor_modality, candidate_modality,
            metric: str, positive: str, negative: str, self_mining: bool, tau: float):
    """(pos_dist f32, pos_index i64, neg_dist f32, neg_index i64, valid bool, asq f32 [N], csq f32 [M])."""
    n, d = anchors.shape
    m = candidates.shape[0]
    dev = anchors.device
    pos_d = torch.empty(n, device=dev, dtype=torch.float32)
    neg_d = torch.empty(n, device=dev, dtype=torch.float32)
    pos_i = torch.empty(n, device=dev, dtype=torch.int64)
    neg_i = torch.empty(n, device=dev, dtype=torch.int64)
    valid = torch.empty(n, device=dev, dtype=torch.int8)
    asq = torch.zeros(n, device=dev, dtype=torch.float32)
    csq = torch.zeros(m, device=dev, dtype=torch.float32)
    if n == 0:
        return pos_d, pos_i, neg_d, neg_i, valid.bool(), asq, csq
    if m == 0:  # nothing to mine: every anchor is invalid
        return (pos_d.zero_(), pos_i.fill_(-1), neg_d.zero_(), neg_i.fill_(-1), valid.zero_().bool(),
                (anchors.float() ** 2).sum(1), csq)
    am = anchor_modality if anchor_modality is not None else anchor_labels
    cm = candidate_modality if candidate_modality is not None else candidate_labels

    def grid(meta):
        return (triton.cdiv(n, meta["BLOCK_N"]),)

    _mining_fwd_kernel[grid](
        anchors, candidates, anchor_labels, candidate_labels, am, cm,
        pos_d, pos_i, neg_d, neg_i, valid, asq, csq,
        n, m, d, anchors.stride(0), anchors.stride(1), candidates.stride(0), candidates.stride(1), tau,
        METRIC=METRIC_CODES[metric], POS_RULE=RULE_CODES[positive], NEG_RULE=RULE_CODES[negative],
        SELF=self_mining, IEEE=anchors.dtype == torch.float32,
    )
    return pos_d, pos_i, neg_d, neg_i, valid.bool(), asq, csq


def segment_layout(pos_index: torch.Tensor, neg_index: torch.Tensor, m: int):
    """(order, seg): pair rows (pos 0..N-1, neg N..2N-1) stably sorted by candidate, and the CSR
    offsets seg[M + 1] of each candidate's segment. Invalid pairs (-1) sort past the last segment.
    Device ops only: no host synchronisation."""
    idx = torch.cat([pos_index, neg_index])
    idx = torch.where(idx < 0, torch.full_like(idx, m), idx)
    sorted_idx, order = torch.sort(idx, stable=True)
    seg = torch.searchsorted(sorted_idx, torch.arange(m + 1, device=idx.device, dtype=idx.dtype))
    return order, seg


@on_device_of("anchors")
def backward(grad_pos, grad_neg, anchors, candidates, pos_index, neg_index, pos_dist, neg_dist, asq, csq,
             metric: str):
    n, d = anchors.shape
    m = candidates.shape[0]
    grad_a = torch.empty((n, d), device=anchors.device, dtype=anchors.dtype)
    grad_c = torch.zeros((m, d), device=candidates.device, dtype=candidates.dtype)
    if n == 0 or m == 0:
        return grad_a.zero_(), grad_c
    contrib = torch.empty((2 * n, d), device=anchors.device, dtype=torch.float32)
    block_n, block_d = 16, min(128, triton.next_power_of_2(d))
    _mining_pair_grad_kernel[(triton.cdiv(n, block_n), triton.cdiv(d, block_d))](
        grad_pos.float().contiguous(), grad_neg.float().contiguous(), anchors, candidates, pos_index, neg_index,
        pos_dist, neg_dist, asq, csq, grad_a, contrib, n, m, d,
        anchors.stride(0), anchors.stride(1), candidates.stride(0), candidates.stride(1),
        METRIC=METRIC_CODES[metric], BLOCK_N=block_n, BLOCK_D=block_d,
    )
    order, seg = segment_layout(pos_index, neg_index, m)
    _segment_sum_kernel[(m, triton.cdiv(d, block_d))](contrib, order, seg, grad_c, d, BLOCK_D=block_d)
    return grad_a, grad_c
