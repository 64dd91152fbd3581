"""Triton kernels for vtreid.ops.hard_mining: hardest positive / negative per anchor in one streaming pass.

Forward: the grid is (anchor blocks, splits). Program (b, s) owns BLOCK_N anchors and streams the s-th
of ``splits`` contiguous, balanced ranges of BLOCK_M candidate tiles (at the training shapes the anchors
alone give 2-16 programs; the splits fill the GPU, see forward_grid). A tile's distances come from tl.dot
plus the shared distance epilogue (kernels/pairwise_distance.py); label, modality and self masks are
built from the id vectors in registers and folded into a running max/argmax (positives) and min/argmin
(negatives). No N x M buffer or mask exists. With one split the program writes the result; otherwise
each writes its (best, index) pair per anchor to row s of small [splits, N] buffers and
_mining_combine_kernel folds the rows in split order (then writes row 0). Tiles and splits are both
folded in candidate order with one rule (_merge_best), so the result does not depend on the split count:
ties keep the lowest index, the lowest-index NaN beats every number, +-inf are real candidates, an
anchor without a positive or a negative is invalid (index -1, distance 0).

Backward touches only the chosen pairs. With g_p, g_n the upstream gradients of pos_dist, neg_dist:
    grad_a_i = alpha_i a_i + beta_p,i c_p(i) + beta_n,i c_n(i)
    grad_c   = diag(gamma_sum) c + B^T a,   B_ij = [p(i)=j] beta_p,i + [n(i)=j] beta_n,i,
               gamma_sum_j = sum_i [p(i)=j] gamma_p,i + [n(i)=j] gamma_n,i
    euclidean   k = g / d (0 where d = 0 or the row is invalid): alpha = k_p + k_n, beta = -k, gamma = k
    sqeuclidean k = 2 g   (same masks)
    cosine      beta = -g / (|a| |c|),  alpha = [|a| > eps] sum g cos / |a|^2,  gamma = [|c| > eps] g cos / |c|^2
Two launches: _mining_pair_grad_kernel writes grad_a and the per-anchor (beta, gamma); then
_candidate_grad_kernel, one program per (candidate block, feature slice), scans the anchors' chosen indices
in anchor order, builds B's [candidates, anchors] tile in registers and accumulates tile @ a (IEEE
float32). No float atomics, no sort and no per-pair buffer: bitwise reproducible.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._launch import (GRID_LIMITS, SM_86_89, autotune, bucket, cdiv, configs_union, most_splits, next_power_of_2,
                      not_on, num_sms, on_device_of, prune_to_waves, splits_for)
from ._launch import configs_for as _configs_for
from .pairwise_distance import METRIC_CODES, distance_epilogue, dot_and_norms, inverse_norm

RULE_CODES = {"any": 0, "cross": 1, "same": 2}

#: Forces the forward's split count (None: splits_for fills the GPU). Tests set it to check that 1, 2 and
#: many splits give the same result; forward(..., splits=) overrides it per call.
SPLITS: int | None = None


def _cfg(bn, bm, bd, warps, stages):
    return triton.Config({"BLOCK_N": bn, "BLOCK_M": bm, "BLOCK_D": bd}, num_warps=warps, num_stages=stages)


# Configs per input precision (_launch.prune_to_waves keeps the launch's list, then those that
# fill a wave when any does). The 16-row tiles give the training shapes (N = M = 256) a full wave through
# the candidate splits (forward_grid); the 64 x 64 ones feed fp16/bf16 tensor cores at large N, where the
# anchor blocks alone fill the GPU. float32 stays IEEE (no TF32; the distances cancel), and an IEEE dot is
# FMA with BLOCK_D-long slices per thread, so float32 keeps BLOCK_D <= 64. Every config compiles for sm_90
# without spills for its dtypes and every metric, as the ops launch it (contiguous features: pipelined,
# vectorized loads), with Triton 3.9 and 3.6 (the GPU image's). 128 x 128 spills 24-96 bytes: the fused
# fold keeps several [BLOCK_N, BLOCK_M] tiles live. (Until Step 14 the spill table compiled a runtime
# feature stride, under which 64 x 128 and 128 x 64 spilled too, and 32 x 32 with 4 warps.) 16 x 16 x 64
# is half only: in float32 (FMA) it spills 8 bytes for cosine under Triton 3.6.
# The half list's small tiles differ from float32's: 16 x 16 x 32 with 2 warps and 16 x 32 x 32 with 2 stages
# compile without spills on every architecture of the compile table, where with 4 warps and 3 stages they
# spilled 8-24 bytes on sm_80, sm_86, sm_87, sm_89 or sm_120 (Triton 3.6 or 3.9); and the 16 x 16 tile is what
# fills an L40 (142 SMs) at the training shape: 256 programs, where 16 x 32 gives 128. The other marked tiles
# spill 8-64 bytes on the architectures named (on sm_100 the tcgen05 tiles' epilogues; 32 x 32 x 32 float32 8
# bytes there).
_FWD_BY_DTYPE = {"fp32": [_cfg(16, 16, 32, 4, 3), _cfg(16, 32, 32, 4, 3), not_on(_cfg(32, 32, 32, 8, 3), 100)],
                 "half": [_cfg(16, 16, 32, 2, 3), _cfg(16, 32, 32, 4, 2), _cfg(32, 32, 32, 8, 3),
                          not_on(_cfg(16, 16, 64, 4, 3), 80, 87, *SM_86_89), _cfg(64, 128, 32, 8, 2),
                          not_on(_cfg(128, 64, 32, 8, 2), 100), not_on(_cfg(64, 64, 32, 8, 2), 100, 120),
                          not_on(_cfg(64, 64, 64, 8, 2), 80, 87, *SM_86_89, 100)]}
_FWD_CONFIGS = (configs_union(_FWD_BY_DTYPE), {"BLOCK_N": 16, "BLOCK_M": 32, "BLOCK_D": 32})

COMBINE_BLOCK = 128  # anchors per program of _mining_combine_kernel
# _candidate_grad_kernel's tile: candidates per program and anchors per step (fixed: the kernel is not tuned).
CAND_BLOCK = tl.constexpr(32)
ANCHOR_CHUNK = tl.constexpr(32)


@triton.jit
def _rule_mask(rule: tl.constexpr, am, cm):
    # modality 0 is visible and any other value infrared: int32 modality is taken as given
    if rule == 1:
        return (am[:, None] != 0) != (cm[None, :] != 0)
    else:
        return (am[:, None] != 0) == (cm[None, :] != 0)


@triton.jit
def _merge_best(best, best_i, cand, cand_i, FARTHEST: tl.constexpr):
    """Merge one (value, index) per row, index < 0 meaning none, into the running (best, index).

    Every candidate index comes after every index already merged (tiles and splits are merged in
    candidate order), so: larger wins when FARTHEST, else smaller; on a tie the running best stays
    (lowest index). A NaN beats every number and nothing replaces it (the lowest-index NaN wins), as
    torch.argmax / argmin do in the reference: a NaN feature shows up in the mined distances, it is never
    hidden behind a finite one. An infinite value is a real candidate (taken even if it equals the
    +-inf start value)."""
    has = cand_i >= 0
    cand_nan = has & (cand != cand)
    best_is_nan = best != best
    if FARTHEST:
        stronger = cand > best
    else:
        stronger = cand < best
    take = (cand_nan & ~best_is_nan) | (has & ~cand_nan & ~best_is_nan & ((best_i < 0) | stronger))
    return tl.where(take, cand, best), tl.where(take, cand_i.to(tl.int64), best_i)


@triton.jit
def _fold_best(ok, dist, rm, big, best, best_i, FARTHEST: tl.constexpr):
    """Fold a [BN, BM] tile into the running (best, index) per row, over the entries where ``ok``: the
    tile's own best (its lowest-index NaN if it has one, else its lowest-index extreme) merged by
    _merge_best."""
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
    cand = tl.where(has_nan, float("nan"), tile_best)
    cand_i = tl.where(has_nan, nan_i, tl.where(tile_i < big, tile_i, -1))
    return _merge_best(best, best_i, cand, cand_i, FARTHEST)


@triton.jit
def _store_mined(POS_D, POS_I, NEG_D, NEG_I, VALID, POS_OUT, NEG_OUT, rn, mask_n, best_pos, pos_i, best_neg, neg_i):
    """The public result of a row: invalid rows (no positive or no negative) get distance 0, index -1. The
    distances go out twice: float32 (saved for the backward) and in the features' dtype (POS_OUT / NEG_OUT)."""
    valid = (pos_i >= 0) & (neg_i >= 0)
    pos = tl.where(valid, best_pos, 0.0)
    neg = tl.where(valid, best_neg, 0.0)
    tl.store(POS_D + rn, pos, mask=mask_n)
    tl.store(NEG_D + rn, neg, mask=mask_n)
    tl.store(POS_OUT + rn, pos.to(POS_OUT.dtype.element_ty), mask=mask_n)
    tl.store(NEG_OUT + rn, neg.to(NEG_OUT.dtype.element_ty), mask=mask_n)
    tl.store(POS_I + rn, tl.where(valid, pos_i, -1), mask=mask_n)
    tl.store(NEG_I + rn, tl.where(valid, neg_i, -1), mask=mask_n)
    tl.store(VALID + rn, valid.to(tl.int8), mask=mask_n)


def _forward_programs(meta, args):
    return math.prod(forward_grid(args["N"], args["M"], args["D"], meta, num_sms(args["A"].device)))


@autotune(*_FWD_CONFIGS, key=["N_BUCKET", "M_BUCKET", "D_BUCKET", "METRIC", "POS_RULE", "NEG_RULE", "SELF", "IEEE"],
          prune_configs_by={"early_config_prune": prune_to_waves(_forward_programs, _FWD_BY_DTYPE, "A")})
@triton.jit
def _mining_fwd_kernel(
    A, C, AL, CL, AM, CM,
    POS_D, POS_I, NEG_D, NEG_I, VALID, ASQ, CSQ, POS_OUT, NEG_OUT,
    N, M, D,
    stride_an, stride_ad, stride_cn, stride_cd,
    tau, N_BUCKET, M_BUCKET, D_BUCKET,
    METRIC: tl.constexpr, POS_RULE: tl.constexpr, NEG_RULE: tl.constexpr, SELF: tl.constexpr,
    IEEE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """POS_D / POS_I / NEG_D / NEG_I are [splits, N]: the result itself with one split, else row s holds
    split s's raw (best, index) per anchor (index -1: none) for _mining_combine_kernel, which then writes
    POS_OUT / NEG_OUT [N] (the distances in the features' dtype)."""
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    splits = tl.num_programs(1)
    tiles = tl.cdiv(M, BLOCK_M)
    # Balanced contiguous ranges: none is empty when splits <= tiles, so every candidate tile, and the
    # csq of its rows, has exactly one owner per anchor block.
    t_begin = ((pid_s.to(tl.int64) * tiles) // splits).to(tl.int32)
    t_end = (((pid_s + 1).to(tl.int64) * tiles) // splits).to(tl.int32)

    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = rn < N
    al = tl.load(AL + rn, mask=mask_n, other=0)
    if POS_RULE + NEG_RULE > 0:
        am = tl.load(AM + rn, mask=mask_n, other=0)

    best_pos = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    best_neg = tl.full((BLOCK_N,), float("inf"), tl.float32)
    pos_i = tl.full((BLOCK_N,), -1, tl.int64)
    neg_i = tl.full((BLOCK_N,), -1, tl.int64)
    asq = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for t in range(t_begin, t_end):
        rm = t * BLOCK_M + tl.arange(0, BLOCK_M)
        mask_m = rm < M
        dot, asq, csq = dot_and_norms(A, C, rn, rm, mask_n, mask_m, D, stride_an, stride_ad, stride_cn, stride_cd,
                                      IEEE, BLOCK_N, BLOCK_M, BLOCK_D)
        dist = distance_epilogue(dot, asq, csq, tau, METRIC)
        if pid_n == 0:
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

    if pid_s == 0:  # every split computes the same anchor norms; one writes them
        tl.store(ASQ + rn, asq, mask=mask_n)
    if splits == 1:
        _store_mined(POS_D, POS_I, NEG_D, NEG_I, VALID, POS_OUT, NEG_OUT, rn, mask_n, best_pos, pos_i, best_neg,
                     neg_i)
    else:
        row = pid_s.to(tl.int64) * N + rn
        tl.store(POS_D + row, best_pos, mask=mask_n)
        tl.store(POS_I + row, pos_i, mask=mask_n)
        tl.store(NEG_D + row, best_neg, mask=mask_n)
        tl.store(NEG_I + row, neg_i, mask=mask_n)


_mining_fwd_kernel.dtype_configs = _FWD_BY_DTYPE


@triton.jit
def _mining_combine_kernel(POS_D, POS_I, NEG_D, NEG_I, VALID, POS_OUT, NEG_OUT, N, splits, BLOCK_N: tl.constexpr):
    """Fold the [splits, N] partial results in split order (= candidate order) and write the result to
    row 0. A program reads all rows of its anchors before it writes, and owns those anchors alone."""
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = rn < N
    best_pos = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    best_neg = tl.full((BLOCK_N,), float("inf"), tl.float32)
    pos_i = tl.full((BLOCK_N,), -1, tl.int64)
    neg_i = tl.full((BLOCK_N,), -1, tl.int64)
    row = rn.to(tl.int64)
    for _ in range(0, splits):
        best_pos, pos_i = _merge_best(best_pos, pos_i, tl.load(POS_D + row, mask=mask_n, other=0.0),
                                      tl.load(POS_I + row, mask=mask_n, other=-1), True)
        best_neg, neg_i = _merge_best(best_neg, neg_i, tl.load(NEG_D + row, mask=mask_n, other=0.0),
                                      tl.load(NEG_I + row, mask=mask_n, other=-1), False)
        row += N
    _store_mined(POS_D, POS_I, NEG_D, NEG_I, VALID, POS_OUT, NEG_OUT, rn, mask_n, best_pos, pos_i, best_neg, neg_i)


@triton.jit
def _pair_coefficients(g, d, idx, asq, csq, METRIC: tl.constexpr):
    """(alpha share, beta, gamma) of one chosen pair per row; zero for invalid rows (idx < 0)."""
    chosen = idx >= 0
    if METRIC == 2:
        na = tl.sqrt_rn(asq)
        nc = tl.sqrt_rn(csq)
        inv_a = inverse_norm(asq)
        inv_c = inverse_norm(csq)
        gc = tl.where(chosen, g, 0.0)
        cos = 1.0 - d
        beta = -gc * inv_a * inv_c
        alpha = tl.where(na > 1e-12, gc * cos * inv_a * inv_a, 0.0)
        gamma = tl.where(nc > 1e-12, gc * cos * inv_c * inv_c, 0.0)
    else:
        live = chosen & (d != 0.0)  # flushed pairs have no gradient; NaN ones pass it on
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
    GP, GN, A, C, PI, NI, PD, ND, ASQ, CSQ, GRAD_A, COEF,
    N, M, D,
    stride_gp, stride_gn, stride_an, stride_ad, stride_cn, stride_cd,
    METRIC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """grad_a [N, D], and COEF [4, N] = (beta_p, beta_n, gamma_p, gamma_n) for _candidate_grad_kernel."""
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
    rn64 = rn.to(tl.int64)
    rd64 = rd.to(tl.int64)
    pi_safe = tl.where(pi >= 0, pi, 0)
    ni_safe = tl.where(ni >= 0, ni, 0)
    asq = tl.load(ASQ + rn, mask=mask_n, other=0.0)
    g_p = tl.load(GP + rn64 * stride_gp, mask=mask_n, other=0.0).to(tl.float32)
    g_n = tl.load(GN + rn64 * stride_gn, mask=mask_n, other=0.0).to(tl.float32)
    ap, bp, gp_ = _pair_coefficients(g_p, tl.load(PD + rn, mask=mask_n, other=0.0), pi, asq,
                                     tl.load(CSQ + pi_safe, mask=mask_n & (pi >= 0), other=0.0), METRIC)
    an, bn, gn_ = _pair_coefficients(g_n, tl.load(ND + rn, mask=mask_n, other=0.0), ni, asq,
                                     tl.load(CSQ + ni_safe, mask=mask_n & (ni >= 0), other=0.0), METRIC)
    if pid_d == 0:
        tl.store(COEF + rn, bp, mask=mask_n)
        tl.store(COEF + N + rn, bn, mask=mask_n)
        tl.store(COEF + 2 * N + rn, gp_, mask=mask_n)
        tl.store(COEF + 3 * N + rn, gn_, mask=mask_n)

    a = tl.load(A + rn64[:, None] * stride_an + rd64[None, :] * stride_ad, mask=mask, other=0.0).to(tl.float32)
    # Invalid anchors (index -1) read no candidate row, so a non-finite row cannot leak into them.
    cp = tl.load(C + pi_safe[:, None] * stride_cn + rd64[None, :] * stride_cd, mask=mask & (pi >= 0)[:, None],
                 other=0.0).to(tl.float32)
    cn = tl.load(C + ni_safe[:, None] * stride_cn + rd64[None, :] * stride_cd, mask=mask & (ni >= 0)[:, None],
                 other=0.0).to(tl.float32)
    grad_a = (ap + an)[:, None] * a + bp[:, None] * cp + bn[:, None] * cn
    tl.store(GRAD_A + rn64[:, None] * D + rd64[None, :], grad_a.to(GRAD_A.dtype.element_ty), mask=mask)


@triton.jit
def _candidate_grad_kernel(A, C, PI, NI, COEF, OUT, N, M, D, stride_an, stride_ad, stride_cn, stride_cd,
                           BLOCK_D: tl.constexpr):
    """OUT[j] = grad_c[j] = gamma_sum_j c_j + sum_i B_ij a_i: each candidate's segment of pair
    contributions (the pairs that chose it), summed as a one-hot-weighted product over anchors in anchor
    order. Program (candidate block, feature slice); candidates nobody chose get exact zeros.

    A zero weight times a non-finite feature is NaN in a product, so a NaN anchor row would reach
    candidates it never chose: the product sees only the finite features, and a chunk holding a
    non-finite one adds those per anchor to the candidates that anchor chose (rare)."""
    pid_m = tl.program_id(0)
    pid_d = tl.program_id(1)
    rm = pid_m * CAND_BLOCK + tl.arange(0, CAND_BLOCK)
    rd = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_m = rm < M
    mask_d = rd < D
    rd64 = rd.to(tl.int64)
    acc = tl.zeros((CAND_BLOCK, BLOCK_D), dtype=tl.float32)
    gamma = tl.zeros((CAND_BLOCK,), dtype=tl.float32)
    hits = tl.zeros((CAND_BLOCK,), dtype=tl.int32)
    for k0 in range(0, N, ANCHOR_CHUNK):
        rk = k0 + tl.arange(0, ANCHOR_CHUNK)
        mask_k = rk < N
        # Indices outside [0, M) match no candidate row: "no pair", never an address.
        hp = (rm[:, None] == tl.load(PI + rk, mask=mask_k, other=-1)[None, :]) & mask_m[:, None]
        hn = (rm[:, None] == tl.load(NI + rk, mask=mask_k, other=-1)[None, :]) & mask_m[:, None]
        hit = (hp | hn).to(tl.int32)
        if tl.max(tl.max(hit, axis=1), axis=0) > 0:  # most chunks miss a block when M >> N
            bp = tl.load(COEF + rk, mask=mask_k, other=0.0)
            bn = tl.load(COEF + N + rk, mask=mask_k, other=0.0)
            gp = tl.load(COEF + 2 * N + rk, mask=mask_k, other=0.0)
            gn = tl.load(COEF + 3 * N + rk, mask=mask_k, other=0.0)
            w = tl.where(hp, bp[None, :], 0.0) + tl.where(hn, bn[None, :], 0.0)
            gamma += tl.sum(tl.where(hp, gp[None, :], 0.0) + tl.where(hn, gn[None, :], 0.0), axis=1)
            hits = tl.maximum(hits, tl.max(hit, axis=1))
            a = tl.load(A + rk.to(tl.int64)[:, None] * stride_an + rd64[None, :] * stride_ad,
                        mask=mask_k[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
            finite = tl.abs(a) < float("inf")
            a_fin = tl.where(finite, a, 0.0)
            if BLOCK_D >= 16:
                acc += tl.dot(w, a_fin, input_precision="ieee")
            else:  # too narrow for tl.dot (D < 16)
                acc += tl.sum(w[:, :, None] * a_fin[None, :, :], axis=1)
            if tl.min(tl.min(finite.to(tl.int32), axis=1), axis=0) == 0:
                for k in range(k0, tl.minimum(k0 + ANCHOR_CHUNK, N)):
                    kk = k + tl.zeros((1,), dtype=tl.int64)
                    row = tl.load(A + kk * stride_an + rd64 * stride_ad, mask=mask_d, other=0.0).to(tl.float32)
                    bad = (tl.abs(row) < float("inf")) == 0
                    hit_p = (rm == tl.load(PI + kk)) & mask_m
                    hit_n = (rm == tl.load(NI + kk)) & mask_m
                    acc += tl.where(hit_p[:, None] & bad[None, :], tl.load(COEF + kk)[:, None] * row[None, :], 0.0)
                    acc += tl.where(hit_n[:, None] & bad[None, :], tl.load(COEF + N + kk)[:, None] * row[None, :],
                                    0.0)
    chosen = hits > 0
    rm64 = rm.to(tl.int64)
    mask = mask_m[:, None] & mask_d[None, :]
    c = tl.load(C + rm64[:, None] * stride_cn + rd64[None, :] * stride_cd, mask=mask & chosen[:, None],
                other=0.0).to(tl.float32)
    grad = tl.where(chosen[:, None], gamma[:, None] * c, 0.0) + acc
    tl.store(OUT + rm64[:, None] * D + rd64[None, :], grad.to(OUT.dtype.element_ty), mask=mask)


def forward_grid(n: int, m: int, d: int, meta: dict, sms: int, splits: int | None = None) -> tuple[int, int]:
    """(anchor blocks, splits): the grid of _mining_fwd_kernel for config ``meta`` on a GPU with ``sms``
    SMs. splits = splits_for(cdiv(n, BLOCK_N), cdiv(m, BLOCK_M), sms) unless given, never more than the
    candidate tiles (no split is empty) nor grid axis 1's limit. ``d`` does not change it (a program
    streams the whole feature axis); it is taken so every grid function reads the same."""
    blocks = cdiv(n, meta["BLOCK_N"])
    tiles = cdiv(m, meta["BLOCK_M"])
    wanted = splits_for(blocks, tiles, sms) if splits is None else int(splits)
    return blocks, max(1, min(wanted, tiles, GRID_LIMITS[1]))


def combine_grid(n: int) -> tuple[int]:
    return (cdiv(n, COMBINE_BLOCK),)


def backward_grids(n: int, m: int, d: int) -> dict:
    """{kernel name: (grid, meta)} of the two backward launches: _mining_pair_grad_kernel on (anchor
    blocks, feature slices), _candidate_grad_kernel on (candidate blocks, feature slices)."""
    pair_d = min(64, next_power_of_2(d))  # 128 spills (sm_90, cosine)
    seg_d = 64 if d >= 16 else next_power_of_2(d)
    return {
        "_mining_pair_grad_kernel": ((cdiv(n, 16), cdiv(d, pair_d)), {"BLOCK_N": 16, "BLOCK_D": pair_d}),
        "_candidate_grad_kernel": ((cdiv(m, CAND_BLOCK.value), cdiv(d, seg_d)), {"BLOCK_D": seg_d}),
    }


def configs_for(dtype: torch.dtype) -> list:
    """The forward configs the autotuner may run for inputs of ``dtype``."""
    return _configs_for(_FWD_BY_DTYPE, dtype)


@on_device_of("anchors")
def forward(anchors, anchor_labels, candidates, candidate_labels, anchor_modality, candidate_modality,
            metric: str, positive: str, negative: str, self_mining: bool, tau: float, splits: int | None = None):
    """(pos_dist, pos_index i64, neg_dist, neg_index i64, valid bool, asq f32 [N], csq f32 [M], pos_dist f32,
    neg_dist f32): the distances in the anchors' dtype, then again in float32 for the backward.

    ``splits`` (default: the module's SPLITS, else forward_grid's choice) cuts the candidates into that
    many ranges; the result is the same for every count."""
    n, d = anchors.shape
    m = candidates.shape[0]
    dev = anchors.device
    f32 = torch.float32
    if n == 0 or m == 0:  # nothing to mine: every anchor is invalid
        return (anchors.new_zeros(n), anchors.new_full((n,), -1, dtype=torch.int64), anchors.new_zeros(n),
                anchors.new_full((n,), -1, dtype=torch.int64), anchors.new_zeros(n, dtype=torch.bool),
                (anchors.float() ** 2).sum(1), anchors.new_zeros(m, dtype=f32), anchors.new_zeros(n, dtype=f32),
                anchors.new_zeros(n, dtype=f32))
    splits = SPLITS if splits is None else splits
    sms = num_sms(dev)
    # The autotuner picks the config (and so the split count) at launch: room for the largest.
    rows = most_splits(forward_grid, _mining_fwd_kernel, _FWD_CONFIGS, n, m, d, sms=sms, splits=splits)
    pos_d = torch.empty((rows, n), device=dev, dtype=f32)
    neg_d = torch.empty((rows, n), device=dev, dtype=f32)
    pos_i = torch.empty((rows, n), device=dev, dtype=torch.int64)
    neg_i = torch.empty((rows, n), device=dev, dtype=torch.int64)
    valid = torch.empty(n, device=dev, dtype=torch.int8)
    asq = torch.empty(n, device=dev, dtype=f32)
    csq = torch.empty(m, device=dev, dtype=f32)
    pos_out = torch.empty(n, device=dev, dtype=anchors.dtype)
    neg_out = torch.empty(n, device=dev, dtype=anchors.dtype)
    am = anchor_modality if anchor_modality is not None else anchor_labels
    cm = candidate_modality if candidate_modality is not None else candidate_labels
    used = {}

    def grid(meta):
        used["grid"] = forward_grid(n, m, d, meta, sms, splits)
        return used["grid"]

    _mining_fwd_kernel[grid](
        anchors, candidates, anchor_labels, candidate_labels, am, cm,
        pos_d, pos_i, neg_d, neg_i, valid, asq, csq, pos_out, neg_out,
        n, m, d, anchors.stride(0), anchors.stride(1), candidates.stride(0), candidates.stride(1), tau,
        bucket(n), bucket(m), bucket(d),
        METRIC=METRIC_CODES[metric], POS_RULE=RULE_CODES[positive], NEG_RULE=RULE_CODES[negative],
        SELF=self_mining, IEEE=anchors.dtype == torch.float32,
    )
    if used["grid"][1] > 1:
        _mining_combine_kernel[combine_grid(n)](pos_d, pos_i, neg_d, neg_i, valid, pos_out, neg_out, n,
                                                used["grid"][1], BLOCK_N=COMBINE_BLOCK)
    # int8 0/1 read as bool: a view, not a conversion launch.
    return pos_out, pos_i[0], neg_out, neg_i[0], valid.view(torch.bool), asq, csq, pos_d[0], neg_d[0]


@on_device_of("anchors")
def backward(grad_pos, grad_neg, anchors, candidates, pos_index, neg_index, pos_dist, neg_dist, asq, csq,
             metric: str):
    """(grad_anchors, grad_candidates) in two launches; grads of any float dtype and strides (an expanded
    scalar grad is read in place); pos_dist / neg_dist: the forward's float32 distances."""
    n, d = anchors.shape
    m = candidates.shape[0]
    grad_a = torch.empty((n, d), device=anchors.device, dtype=anchors.dtype)
    grad_c = torch.empty((m, d), device=candidates.device, dtype=candidates.dtype)
    if n == 0 or m == 0:
        return grad_a.zero_(), grad_c.zero_()
    coef = torch.empty((4, n), device=anchors.device, dtype=torch.float32)
    (grid1, meta1), (grid2, meta2) = backward_grids(n, m, d).values()
    _mining_pair_grad_kernel[grid1](
        grad_pos, grad_neg, anchors, candidates, pos_index, neg_index, pos_dist, neg_dist, asq, csq, grad_a, coef,
        n, m, d, grad_pos.stride(0), grad_neg.stride(0),
        anchors.stride(0), anchors.stride(1), candidates.stride(0), candidates.stride(1),
        METRIC=METRIC_CODES[metric], **meta1,
    )
    _candidate_grad_kernel[grid2](
        anchors, candidates, pos_index, neg_index, coef, grad_c, n, m, d,
        anchors.stride(0), anchors.stride(1), candidates.stride(0), candidates.stride(1), **meta2,
    )
    return grad_a, grad_c
