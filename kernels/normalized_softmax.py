"""Triton kernels for vtreid.ops.normalized_logits and vtreid.ops.normalized_cross_entropy.

z_ic = s (x_i . w_c) r_i q_c with r_i = 1 / max(|x_i|, eps), q_c = 1 / max(|w_c|, eps): the squared norms
come from a pre-pass (pairwise_distance.row_norms, one launch over x and W) and are folded into the
epilogue of the x.W^T tile, so no normalised copy of W is ever written and the feature loop holds only
the dot (norm sums in that loop made most configs spill on sm_90).

Cross-entropy forward, split over classes. The grid is (row blocks, class splits); split k of S owns the
class tiles [k T / S, (k + 1) T / S) (T = cdiv(C, BLOCK_C): never empty while S <= T) and runs an online
log-sum-exp over them, writing per (split, row) its partial state

    m_k = max_{c in k} z_c,   l_k = sum_{c in k} exp(z_c - m_k),   e_k = sum_{c in k} exp(z_c - m_k) z_c,
    y_k = z_{y} if y in k else 0,   a_k = sum_{c in k} z_c.

The combine kernel merges the splits of a row in split order (deterministic, no atomics), with
M = max_k m_k and w_k = exp(m_k - M) (w_k = 0 for an empty split, m_k = -inf, so -inf - -inf never
makes a NaN; a two-pass merge, so M is finite whenever one split holds a class):

    lse = M + log sum_k w_k l_k,   E_p[z] = sum_k w_k e_k / sum_k w_k l_k,
    T = (1 - eps) sum_k y_k + eps / C sum_k a_k,   loss = lse - T.

No N x C logits exist. The split count S = splits_for(row blocks, T, SMs) gives one wave of programs;
FWD_SPLITS (module attribute) or the ``splits`` keyword forces it (tests).

Backward, with G_ic = g_i (p_ic - t_ic) (t the smoothed one-hot target):
    grad_x_i = s sum_c (G_ic r_i q_c) w_c - [|x_i| > eps] r_i^2 (sum_c G_ic z_ic) x_i,   sum_c G z = g (E_p[z] - T)
    grad_w_c = s sum_i (G_ic r_i q_c) x_i - [|w_c| > eps] q_c^2 (sum_i G_ic z_ic) w_c
three GEMM-equivalents: the grad kernel, on a (class tiles, row splits) grid, recomputes (or reads) its
logits and writes Gq = G r q (the only N x C-shaped buffer, capped in size by processing rows in chunks)
and per row split the partial column sums sum_i G_ic z_ic; then grad_x = s Gq W and grad_w = s Gq^T x,
each finished by an epilogue (_nce_epilogue_kernel) that computes its projection coefficient where it
is used (_projection_coef: from the row statistics, or the partial column sums added in split order).
No other elementwise launch: eager glue there cost ~45 aten calls per backward, host time that bounded
the small training shapes. For float32 and bfloat16 the GEMMs are cuBLAS in the input dtype. float16
cannot hold Gq (the small probabilities of a large C flush to zero), so Gq stays float32 and
_gq_mm_kernel multiplies it with W or x read in float16 (exact in TF32), its epilogue fused, writing the
float16 gradient: no float32 copy of W or x and no float32 [C, D] gradient.

With SAVE_DOTS (the caller asks for it when C is small, see vtreid.ops.normalized_softmax) the forward
also writes the raw x.W^T tiles to DOTS [N, C] and the backward reads them instead of recomputing.

Autotune keys are size buckets (kernels/_launch.bucket). The configs hold large tiles (large C: fewer
reloads of x and W tiles) and small ones (the training shapes N = 256, C = 395, where a large tile
gives 16 programs for 132 SMs), per input precision (_FWD_BY_DTYPE, _GRAD_BY_DTYPE: every config
compiles without spills on sm_90); ``_waves`` keeps the launch's precision and drops, per shape, the
configs whose grid does not fill one wave when another config's does. forward_grid / grad_grid are the
grids as pure functions.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import (INTERPRET, GRID_LIMITS, autotune, bucket, cdiv, configs_union, most_splits, not_on, num_sms,
                      on_device_of, prune_to_waves, splits_for)
from .pairwise_distance import dot_tile, inverse_norm, row_norms

def _cfg(bn, bc, bd, warps, stages):
    return triton.Config({"BLOCK_N": bn, "BLOCK_C": bc, "BLOCK_D": bd}, num_warps=warps, num_stages=stages)


# Configs per input precision (float32: IEEE FMA dots; float16 / bfloat16: tensor-core dots). Each list
# holds only configs that compile without register spills on sm_90 for both SAVE_DOTS values and every
# dtype of the list, with Triton 3.9 (pinned) and 3.6 (the GPU image's), as the ops launch them
# (contiguous rows: pipelined, vectorized loads): scripts/compile_triton.py compiles each list with its
# own dtypes. The large tiles
# are for large C (fewer reloads of the x and W tiles), the small ones give one wave at the training
# shapes N = 256, C = 395.
_FWD_BY_DTYPE = {
    # FMA dots hold a K slice of every operand row in registers: BLOCK_D 32 at most (16 x 32 x 64 spilled
    # 8 bytes under Triton 3.6); 32 x 64 takes 16 (with 32 it spilled 16 bytes with SAVE_DOTS under 3.9)
    "fp32": [_cfg(64, 32, 32, 8, 3), _cfg(32, 64, 16, 8, 3), _cfg(32, 32, 32, 4, 3),
             # one wave at N = 256, C = 395: 16 x 9 = 144, 8 x 17 = 136 programs
             _cfg(16, 32, 32, 4, 3), _cfg(32, 16, 32, 4, 3)],
    # 64 x 128 x 32 (wgmma) is the largest tile without spills with SAVE_DOTS: 128 x 128 and 64 x 256 spill
    # 360-424 bytes there (the DOTS store's layout conversion)
    # (sm_100 spills it 32 bytes in half of its variants: not_on(100))
    "half": [not_on(_cfg(64, 128, 32, 8, 3), 100), _cfg(32, 256, 16, 8, 3), _cfg(64, 64, 32, 8, 3),
             _cfg(32, 128, 32, 8, 3), _cfg(16, 32, 64, 4, 3), _cfg(32, 16, 64, 4, 3)],
}
_GRAD_BY_DTYPE = {
    # smaller BLOCK_D than the forward: 32 x 16 x 128 sat at 255 registers on sm_90 and 64 x 64 x 32
    # (8 warps) spilled on sm_80, so neither is one ptxas update away from spilling on sm_90
    # (sm_100 spills the three marked 8 bytes in one of their two variants; 64 x 64 x 16 under Triton 3.6
    # since Gq carries r_i)
    "fp32": [not_on(_cfg(64, 64, 16, 8, 3), 100), not_on(_cfg(32, 64, 32, 8, 3), 100), _cfg(64, 32, 32, 8, 3),
             # one wave at N = 256, C = 395: 13 x 11 = 143, 25 x 6 = 150 programs
             _cfg(16, 32, 32, 4, 3), _cfg(16, 32, 64, 4, 2), not_on(_cfg(32, 16, 32, 4, 3), 100)],
    "half": [not_on(_cfg(64, 64, 64, 8, 3), 80, 120),  # 8 bytes of spills there
             _cfg(32, 64, 32, 4, 3), _cfg(16, 32, 128, 4, 3), _cfg(32, 16, 128, 4, 3)],
}
_FWD_CONFIGS = (configs_union(_FWD_BY_DTYPE), {"BLOCK_N": 16, "BLOCK_C": 256, "BLOCK_D": 32})  # interpreter: per tile
_GRAD_CONFIGS = (configs_union(_GRAD_BY_DTYPE), {"BLOCK_N": 16, "BLOCK_C": 256, "BLOCK_D": 32})

#: Largest number of N x C elements the backward holds at once (rows are processed in chunks).
MAX_CHUNK_ELEMENTS = 1 << 25

#: Forced class-split count of the forward (None: splits_for); tests set it.
FWD_SPLITS: int | None = None
#: Forced row-split count of the grad kernel (None: splits_for); tests set it.
GRAD_SPLITS: int | None = None

#: Rows per program of the combine kernel.
COMBINE_BLOCK = 128
#: Tiles of _gq_mm_kernel (not autotuned: fixed so that grad_x at N = 256, D = 2048 has 256 programs).
#: 8 warps: with 4, sm_80 spilled 8-16 bytes (half under Triton 3.9, float32 under 3.6); with 8 neither
#: sm_80 nor sm_90 spills under either.
MM_META = {"BLOCK_M": 32, "BLOCK_K": 32, "BLOCK_D": 64} if not INTERPRET else \
    {"BLOCK_M": 32, "BLOCK_K": 64, "BLOCK_D": 64}
MM_WARPS, MM_STAGES = 8, 3
#: Tiles of _nce_epilogue_kernel (elementwise; 16 x 16 = 256 programs for grad_x at N = 256, D = 2048).
EPILOGUE_META = {"BLOCK_M": 16, "BLOCK_D": 128}


def _forced(value, limit: int) -> int:
    return max(1, min(int(value), limit))


def forward_grid(n: int, c: int, meta: dict, sms: int, splits: int | None = None) -> tuple[int, int]:
    """Grid of _nce_fwd_kernel: (row blocks, class splits).

    row blocks = max(1, cdiv(n, BLOCK_N)) (one block at n = 0, which still writes |w|^2);
    class splits = splits_for(row blocks, cdiv(c, BLOCK_C), sms), or ``splits`` clamped to [1, 65535]
    (a forced count above the tile count leaves empty splits, which the combine must and does ignore)."""
    blocks = max(1, cdiv(n, meta["BLOCK_N"]))
    tiles = cdiv(c, meta["BLOCK_C"])
    s = splits_for(blocks, tiles, sms) if splits is None else _forced(splits, GRID_LIMITS[1])
    return blocks, s


def grad_grid(n: int, c: int, meta: dict, sms: int, splits: int | None = None) -> tuple[int, int]:
    """Grid of _nce_grad_kernel for a chunk of n rows: (class tiles, row splits).

    class tiles = cdiv(c, BLOCK_C); row splits = splits_for(class tiles, max(1, cdiv(n, BLOCK_N)), sms), or
    ``splits`` clamped to [1, 65535]. Each program writes its [rows, BLOCK_C] block of Gq and its partial
    column sums."""
    tiles = cdiv(c, meta["BLOCK_C"])
    row_tiles = max(1, cdiv(n, meta["BLOCK_N"]))
    s = splits_for(tiles, row_tiles, sms) if splits is None else _forced(splits, GRID_LIMITS[1])
    return tiles, s


def _waves(grid_fn, by_dtype):
    """early_config_prune: the configs of the launch's precision (by X's dtype), then those whose grid
    fills every SM once when at least one does (at large sizes all do and the tuner picks among all);
    otherwise all of that precision (kernels/_launch.prune_to_waves)."""
    def programs(meta, args):
        return _programs(grid_fn(args["N"], args["C"], meta, num_sms(args["X"].device)))
    return prune_to_waves(programs, by_dtype, "X")


def _programs(grid) -> int:
    out = 1
    for g in grid:
        out *= g
    return out


@autotune(*_FWD_CONFIGS, key=["N_BUCKET", "C_BUCKET", "D_BUCKET", "SAVE_DOTS", "IEEE"],
          prune_configs_by={"early_config_prune": _waves(forward_grid, _FWD_BY_DTYPE)})
@triton.jit
def _nce_fwd_kernel(
    X, W, TARGET, PART, XSQ, WSQ, DOTS,
    N, C, D, stride_xn, stride_xd, stride_wc, stride_wd, stride_part,
    scale, N_BUCKET, C_BUCKET, D_BUCKET,
    SAVE_DOTS: tl.constexpr, IEEE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """PART[k, s, i] (k = max, sum, E-sum, target z, total z) of split s for row i, from the squared norms
    XSQ [N] and WSQ [C] of the pre-pass; DOTS when SAVE_DOTS."""
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    splits = tl.num_programs(1)
    tiles = tl.cdiv(C, BLOCK_C)
    # int64 products: split count x tiles passes 2^31 with many forced splits of a large C
    t0 = ((pid_s.to(tl.int64) * tiles) // splits).to(tl.int32)
    t1 = (((pid_s + 1).to(tl.int64) * tiles) // splits).to(tl.int32)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = rn < N
    y = tl.load(TARGET + rn, mask=mask_n, other=0)
    row_scale = scale * inverse_norm(tl.load(XSQ + rn, mask=mask_n, other=1.0))
    run_max = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    run_sum = tl.zeros((BLOCK_N,), dtype=tl.float32)
    run_ez = tl.zeros((BLOCK_N,), dtype=tl.float32)
    z_target = tl.zeros((BLOCK_N,), dtype=tl.float32)
    z_total = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for t in range(t0, t1):
        rc = t * BLOCK_C + tl.arange(0, BLOCK_C)
        mask_c = rc < C
        dot = dot_tile(X, W, rn, rc, mask_n, mask_c, D, stride_xn, stride_xd, stride_wc, stride_wd,
                        IEEE, BLOCK_N, BLOCK_C, BLOCK_D)
        if SAVE_DOTS:
            tl.store(DOTS + rn.to(tl.int64)[:, None] * C + rc[None, :], dot, mask=mask_n[:, None] & mask_c[None, :])
        z = dot * row_scale[:, None] * inverse_norm(tl.load(WSQ + rc, mask=mask_c, other=1.0))[None, :]
        # rows past N hold garbage (row 0's dots) but reduce only into their own, unstored, row
        z_live = tl.where(mask_c[None, :], z, 0.0)
        z = tl.where(mask_c[None, :], z, float("-inf"))
        new_max = tl.maximum(run_max, tl.max(z, axis=1))  # a tile holds at least one class: finite
        rescale = tl.exp(run_max - new_max)
        p = tl.exp(z - new_max[:, None])
        run_sum = run_sum * rescale + tl.sum(p, axis=1)
        run_ez = run_ez * rescale + tl.sum(p * z_live, axis=1)
        run_max = new_max
        z_target += tl.sum(tl.where(rc[None, :] == y[:, None], z_live, 0.0), axis=1)
        z_total += tl.sum(z_live, axis=1)
    row = PART + pid_s.to(tl.int64) * N + rn
    tl.store(row, run_max, mask=mask_n)
    tl.store(row + stride_part, run_sum, mask=mask_n)
    tl.store(row + 2 * stride_part, run_ez, mask=mask_n)
    tl.store(row + 3 * stride_part, z_target, mask=mask_n)
    tl.store(row + 4 * stride_part, z_total, mask=mask_n)


@triton.jit
def _nce_combine_kernel(PART, LOSS, LSE, EZ, TZ, N, C, SPLITS, stride_part, smoothing, BLOCK_R: tl.constexpr):
    """Merges the SPLITS partial states of each row in split order (formulas in the module docstring)."""
    rn = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    mask = rn < N
    first = PART + rn.to(tl.int64)
    row = first  # pointers step by N: 64-bit offsets without 64-bit loop counters
    top = tl.full((BLOCK_R,), float("-inf"), tl.float32)
    for _ in range(0, SPLITS):
        top = tl.maximum(top, tl.load(row, mask=mask, other=0.0))  # rows past N: a finite dummy
        row += N
    total = tl.zeros((BLOCK_R,), dtype=tl.float32)
    ez = tl.zeros((BLOCK_R,), dtype=tl.float32)
    z_target = tl.zeros((BLOCK_R,), dtype=tl.float32)
    z_total = tl.zeros((BLOCK_R,), dtype=tl.float32)
    row = first
    for _ in range(0, SPLITS):
        m = tl.load(row, mask=mask, other=0.0)
        # An empty split (m = -inf, sums 0) weighs 0. exp(m - top) is 0 for it already while top is
        # finite; the guard keeps exp(-inf - -inf) = NaN out should a row have no non-empty split.
        empty = m == float("-inf")
        weight = tl.where(empty, 0.0, tl.exp(tl.where(empty, top, m) - top))
        total += weight * tl.load(row + stride_part, mask=mask, other=1.0)
        ez += weight * tl.load(row + 2 * stride_part, mask=mask, other=0.0)
        z_target += tl.load(row + 3 * stride_part, mask=mask, other=0.0)
        z_total += tl.load(row + 4 * stride_part, mask=mask, other=0.0)
        row += N
    lse = top + tl.log(total)
    tz = (1.0 - smoothing) * z_target + smoothing / C * z_total
    tl.store(LOSS + rn, lse - tz, mask=mask)
    tl.store(LSE + rn, lse, mask=mask)
    tl.store(EZ + rn, ez / total, mask=mask)
    tl.store(TZ + rn, tz, mask=mask)


@autotune(*_GRAD_CONFIGS, key=["N_BUCKET", "C_BUCKET", "D_BUCKET", "SAVE_DOTS", "IEEE"],
          prune_configs_by={"early_config_prune": _waves(grad_grid, _GRAD_BY_DTYPE)})
@triton.jit
def _nce_grad_kernel(
    X, W, TARGET, LSE, G_ROW, XSQ, WSQ, DOTS, GQ, COL_PART,
    N, C, D, stride_xn, stride_xd, stride_wc, stride_wd, stride_gn,
    scale, smoothing, N_BUCKET, C_BUCKET, D_BUCKET,
    SAVE_DOTS: tl.constexpr, IEEE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Gq[i, c] = g_i (p_ic - t_ic) r_i q_c for the rows of this row split; COL_PART[split, c] = the split's
    sum_i G_ic z_ic (written, never accumulated: autotuning may rerun it on the live buffers)."""
    pid_c = tl.program_id(0)
    pid_s = tl.program_id(1)
    splits = tl.num_programs(1)
    row_tiles = tl.cdiv(N, BLOCK_N)
    t0 = ((pid_s.to(tl.int64) * row_tiles) // splits).to(tl.int32)  # int64 products, as above
    t1 = (((pid_s + 1).to(tl.int64) * row_tiles) // splits).to(tl.int32)
    rc = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = rc < C
    inv_w = inverse_norm(tl.load(WSQ + rc, mask=mask_c, other=1.0))
    col_gz = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for t in range(t0, t1):
        rn = t * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = rn < N
        if SAVE_DOTS:
            dot = tl.load(DOTS + rn.to(tl.int64)[:, None] * C + rc[None, :], mask=mask_n[:, None] & mask_c[None, :],
                          other=0.0)
        else:
            dot = dot_tile(X, W, rn, rc, mask_n, mask_c, D, stride_xn, stride_xd, stride_wc, stride_wd,
                            IEEE, BLOCK_N, BLOCK_C, BLOCK_D)
        inv_x = inverse_norm(tl.load(XSQ + rn, mask=mask_n, other=1.0))
        z = scale * dot * inv_x[:, None] * inv_w[None, :]
        lse = tl.load(LSE + rn, mask=mask_n, other=0.0)
        g = tl.load(G_ROW + rn, mask=mask_n, other=0.0)
        y = tl.load(TARGET + rn, mask=mask_n, other=-1)
        target = tl.where(rc[None, :] == y[:, None], 1.0 - smoothing, 0.0) + smoothing / C
        live = mask_n[:, None] & mask_c[None, :]
        grad = tl.where(live, g[:, None] * (tl.exp(z - lse[:, None]) - target), 0.0)
        # dead entries' z is garbage (rows past N and classes past C read row 0, maybe non-finite): 0 * NaN
        col_gz += tl.sum(tl.where(live, grad * z, 0.0), axis=0)
        # Gq carries r_i too: grad_w = s Gq^T x then needs no unit copy of x. (Folding r_i into g instead,
        # with G z = s x.w Gq, spilled other configs: registers here are one multiply from spilling.)
        gq = grad * inv_x[:, None] * inv_w[None, :]
        tl.store(GQ + rn.to(tl.int64)[:, None] * stride_gn + rc[None, :], gq.to(GQ.dtype.element_ty), mask=live)
    tl.store(COL_PART + pid_s.to(tl.int64) * C + rc, col_gz, mask=mask_c)


@triton.jit
def _projection_coef(NSQ, G_ROW, EZ, TZ, COL_PART, n_parts, stride_part, rm, mask_m, FROM_PARTS: tl.constexpr):
    """[|v_m| > eps] r_m^2 sum G z for rows v_m (r_m = 1 / max(|v_m|, eps), from the squared norms NSQ): the
    coefficient of v_m in its gradient's projection term. For x rows sum_c G_ic z_ic = g_i (E_p[z] - T_i);
    for W rows (FROM_PARTS) the grad kernel's n_parts partial column sums, added in split order."""
    nsq = tl.load(NSQ + rm, mask=mask_m, other=1.0)
    if FROM_PARTS:
        gz = tl.zeros(rm.shape, dtype=tl.float32)
        part = COL_PART + rm  # pointers step by stride_part: 64-bit offsets without 64-bit loop counters
        for _ in range(0, n_parts):
            gz += tl.load(part, mask=mask_m, other=0.0)
            part += stride_part
    else:
        gz = tl.load(G_ROW + rm, mask=mask_m, other=0.0) * (
            tl.load(EZ + rm, mask=mask_m, other=0.0) - tl.load(TZ + rm, mask=mask_m, other=0.0))
    inv = inverse_norm(nsq)
    # a product, not tl.where: a NaN norm keeps its row NaN, as eager's bool * coefficient does
    return (tl.sqrt_rn(nsq) > 1e-12).to(tl.float32) * inv * inv * gz


# The partial-sum count and stride are 0 in the launches that read no partial sums: left unspecialized,
# both launches share one compile instead of two that differ in an unread argument.
_COEF_UNSPECIALIZED = ("n_parts", "stride_part")


@triton.jit(do_not_specialize=_COEF_UNSPECIALIZED)
def _nce_epilogue_kernel(
    IN, E, OUT, NSQ, G_ROW, EZ, TZ, COL_PART, n_parts, stride_part,
    M, D, stride_im, stride_em, stride_ed, stride_om, scale,
    FROM_PARTS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """OUT[m, d] = scale IN[m, d] - coef_m E[m, d] (coef: _projection_coef), OUT in its own dtype: the
    gradient from the GEMM product IN (Gq W or Gq^T x, unit feature stride) and the features E. OUT may
    be IN (each element is read before it is written, by the same program)."""
    pid = tl.program_id(0)
    tiles_d = tl.cdiv(D, BLOCK_D)
    rm = (pid // tiles_d) * BLOCK_M + tl.arange(0, BLOCK_M)
    rd = (pid % tiles_d) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_m = rm < M
    mask = mask_m[:, None] & (rd < D)[None, :]
    rm64 = rm.to(tl.int64)
    coef = _projection_coef(NSQ, G_ROW, EZ, TZ, COL_PART, n_parts, stride_part, rm, mask_m, FROM_PARTS)
    product = tl.load(IN + rm64[:, None] * stride_im + rd[None, :], mask=mask, other=0.0).to(tl.float32)
    e = tl.load(E + rm64[:, None] * stride_em + rd.to(tl.int64)[None, :] * stride_ed, mask=mask,
                other=0.0).to(tl.float32)
    out = scale * product - coef[:, None] * e
    tl.store(OUT + rm64[:, None] * stride_om + rd[None, :], out.to(OUT.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=_COEF_UNSPECIALIZED)
def _gq_mm_kernel(
    A, B, E, OUT, NSQ, G_ROW, EZ, TZ, COL_PART, n_parts, stride_part,
    M, K, D, stride_am, stride_ak, stride_bk, stride_bd, stride_em, stride_ed, stride_om,
    stride_od, scale,
    ACCUMULATE: tl.constexpr, HAS_E: tl.constexpr, FROM_PARTS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """OUT[m, d] = (OUT[m, d] if ACCUMULATE) + scale sum_k A[m, k] B[k, d] (- coef_m E[m, d] if HAS_E,
    coef: _projection_coef), A float32 (Gq or its transpose), B and E read in their own dtype.

    float16 B converts to float32 exactly and is multiplied in TF32 (10 mantissa bits, as float16 has):
    the float16 path's GEMMs without a float32 copy of W. One program per [BLOCK_M, BLOCK_D] tile, K in
    order: deterministic."""
    pid = tl.program_id(0)
    tiles_d = tl.cdiv(D, BLOCK_D)
    rm = (pid // tiles_d) * BLOCK_M + tl.arange(0, BLOCK_M)
    rd = (pid % tiles_d) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_m = rm < M
    mask_d = rd < D
    rm64 = rm.to(tl.int64)
    rd64 = rd.to(tl.int64)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = (k0 + tl.arange(0, BLOCK_K)).to(tl.int64)
        mask_k = rk < K
        a = tl.load(A + rm64[:, None] * stride_am + rk[None, :] * stride_ak, mask=mask_m[:, None] & mask_k[None, :],
                    other=0.0).to(tl.float32)
        b = tl.load(B + rk[:, None] * stride_bk + rd64[None, :] * stride_bd, mask=mask_k[:, None] & mask_d[None, :],
                    other=0.0).to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision="tf32")
    acc = acc * scale
    mask = mask_m[:, None] & mask_d[None, :]
    out = OUT + rm64[:, None] * stride_om + rd64[None, :] * stride_od
    if ACCUMULATE:
        acc += tl.load(out, mask=mask, other=0.0).to(tl.float32)
    if HAS_E:
        e = tl.load(E + rm64[:, None] * stride_em + rd64[None, :] * stride_ed, mask=mask, other=0.0).to(tl.float32)
        coef = _projection_coef(NSQ, G_ROW, EZ, TZ, COL_PART, n_parts, stride_part, rm, mask_m, FROM_PARTS)
        acc -= coef[:, None] * e
    tl.store(out, acc.to(OUT.dtype.element_ty), mask=mask)


_nce_fwd_kernel.dtype_configs = _FWD_BY_DTYPE
_nce_grad_kernel.dtype_configs = _GRAD_BY_DTYPE
_gq_mm_kernel.launch_options = {"num_warps": MM_WARPS, "num_stages": MM_STAGES}  # for scripts/compile_triton.py
_gq_mm_kernel.unspecialized = _nce_epilogue_kernel.unspecialized = _COEF_UNSPECIALIZED  # for tests/kernels


def mm_grid(m: int, d: int, meta: dict) -> tuple[int]:
    """Grid of _gq_mm_kernel and _nce_epilogue_kernel: one program per [BLOCK_M, BLOCK_D] tile of the
    [m, d] output."""
    return (cdiv(m, meta["BLOCK_M"]) * cdiv(d, meta["BLOCK_D"]),)


def row_coefficients(xsq, grad_row, ez, tz):
    """The coefficient arguments of the epilogues (NSQ ... stride_part, FROM_PARTS) for x rows."""
    return (xsq, grad_row, ez, tz, xsq, 0, 0), False


def column_coefficients(wsq, col_part, parts: int):
    """... for W rows: their norms and the first ``parts`` rows of the partial column sums."""
    return (wsq, wsq, wsq, wsq, col_part, parts, col_part.stride(0)), True


def _gq_mm(a, b, out, scale, e=None, coefficients=None, accumulate=False):
    m, k = a.shape
    d = b.shape[1]
    if m == 0 or d == 0:
        return
    coef, from_parts = coefficients or ((out, out, out, out, out, 0, 0), False)  # unread without e

    def grid(meta):
        return mm_grid(m, d, meta)
    _gq_mm_kernel[grid](a, b, e if e is not None else b, out, *coef, m, k, d,
                        a.stride(0), a.stride(1), b.stride(0), b.stride(1), e.stride(0) if e is not None else 0,
                        e.stride(1) if e is not None else 0, out.stride(0), out.stride(1), float(scale),
                        ACCUMULATE=accumulate, HAS_E=e is not None, FROM_PARTS=from_parts,
                        num_warps=MM_WARPS, num_stages=MM_STAGES, **MM_META)


def _epilogue(product, e, out, scale, coefficients):
    """out = scale * product - coef * e (_nce_epilogue_kernel); out may be product."""
    m, d = product.shape
    if m and d:
        coef, from_parts = coefficients

        def grid(meta):
            return mm_grid(m, d, meta)
        _nce_epilogue_kernel[grid](product, e, out, *coef, m, d, product.stride(0), e.stride(0), e.stride(1),
                                   out.stride(0), float(scale), FROM_PARTS=from_parts, **EPILOGUE_META)
    return out


@on_device_of("x")
def cross_entropy_forward(x, weight, target, scale: float, smoothing: float, save_dots: bool,
                          splits: int | None = None):
    """(loss [N], lse [N], ez [N], tz [N], xsq [N], wsq [C], dots), all float32; dots is x.W^T [N, C]
    when save_dots, else empty [0]. ``splits`` (default FWD_SPLITS) forces the class-split count."""
    n, d = x.shape
    c = weight.shape[0]
    splits = FWD_SPLITS if splits is None else splits
    sms = num_sms(x.device)
    out = [torch.empty(n, device=x.device, dtype=torch.float32) for _ in range(4)]
    xsq, wsq = row_norms(x, weight)  # pre-pass: no norm sums in the kernel's feature loop
    dots = torch.empty((n, c) if save_dots else (0,), device=x.device, dtype=torch.float32)
    if n == 0:
        return (*out, xsq, wsq, dots)
    # The split count depends on the config the autotuner picks: size the partial states for the most
    # any config can launch, and let the grid function report the launched one (its last call is the
    # real launch, after any benchmarking).
    most = most_splits(forward_grid, _nce_fwd_kernel, _FWD_CONFIGS, n, c, sms=sms, splits=splits)
    part = torch.empty((5, most, n), device=x.device, dtype=torch.float32)
    launched = {}

    def grid(meta):
        launched["grid"] = forward_grid(n, c, meta, sms, splits)
        return launched["grid"]

    _nce_fwd_kernel[grid](x, weight, target, part, xsq, wsq, dots, n, c, d, x.stride(0), x.stride(1),
                          weight.stride(0), weight.stride(1), part.stride(0), float(scale), bucket(n), bucket(c),
                          bucket(d), SAVE_DOTS=save_dots, IEEE=x.dtype == torch.float32)
    _nce_combine_kernel[(cdiv(n, COMBINE_BLOCK),)](part, out[0], out[1], out[2], out[3], n, c, launched["grid"][1],
                                                          part.stride(0), float(smoothing), BLOCK_R=COMBINE_BLOCK)
    return (*out, xsq, wsq, dots)


def gradient_dtype(dtype: torch.dtype) -> torch.dtype:
    # bfloat16 has float32's range, so Gq can be stored in it and fed to bf16 GEMMs; float16 would
    # flush the small probabilities of a large C to zero, so those go through float32.
    return torch.bfloat16 if dtype == torch.bfloat16 else torch.float32


@on_device_of("x")
def cross_entropy_backward(grad_row, x, weight, target, lse, ez, tz, xsq, wsq, dots, scale: float,
                           smoothing: float, splits: int | None = None):
    """(grad_x, grad_weight) for per-row upstream gradients grad_row [N] (float32); dots as the forward
    returned it (reused when [N, C], recomputed when empty). ``splits`` (default GRAD_SPLITS) forces the
    grad kernel's row-split count.

    Launches per row chunk: the grad kernel and the two GEMMs, plus one epilogue per gradient for
    float32 and bfloat16 (float16: fused into _gq_mm_kernel). No other elementwise work: r_i is folded
    into Gq and the projection coefficients are computed where they are used (_projection_coef). Only
    several chunks (N x C above MAX_CHUNK_ELEMENTS) add a float32 accumulation of grad_w."""
    n, d = x.shape
    c = weight.shape[0]
    splits = GRAD_SPLITS if splits is None else splits
    sms = num_sms(x.device)
    gdt = gradient_dtype(x.dtype)
    half = x.dtype == torch.float16  # Gq float32 against float16 operands: _gq_mm_kernel
    save_dots = dots.dim() == 2
    rows = max(1, MAX_CHUNK_ELEMENTS // max(c, 1))
    chunks = [(r0, min(n, r0 + rows)) for r0 in range(0, n, rows)]
    if not chunks:
        return torch.empty((0, d), device=x.device, dtype=x.dtype), \
            torch.zeros((c, d), device=x.device, dtype=weight.dtype)
    one = len(chunks) == 1
    most = [most_splits(grad_grid, _nce_grad_kernel, _GRAD_CONFIGS, r1 - r0, c, sms=sms, splits=splits)
            for r0, r1 in chunks]
    # One buffer of partial column sums for every chunk, each chunk's rows right after the rows the previous
    # chunks' launches wrote: rows [0, first) are all written by a real launch. (Autotuning benchmarks configs
    # with more splits on the same buffer; their rows past the winner's are never read.)
    col_part = torch.empty((sum(most), c), device=x.device, dtype=torch.float32)
    grad_x = None if one and not half else torch.empty((n, d), device=x.device, dtype=x.dtype)
    acc_w = None
    first = 0
    for index, (r0, r1) in enumerate(chunks):
        last = index == len(chunks) - 1
        rows_of = (lambda t: t) if one else (lambda t: t[r0:r1])  # one chunk: no slicing views to make
        gq = torch.empty((r1 - r0, c), device=x.device, dtype=gdt)
        part = col_part if one else col_part[first:first + most[index]]  # room for any config's splits
        launched = {}

        def grid(meta):
            launched["grid"] = grad_grid(r1 - r0, c, meta, sms, splits)
            return launched["grid"]

        xs = rows_of(x)
        _nce_grad_kernel[grid](xs, weight, rows_of(target), rows_of(lse), rows_of(grad_row), rows_of(xsq), wsq,
                               rows_of(dots) if save_dots else dots, gq, part,
                               r1 - r0, c, d, xs.stride(0), xs.stride(1), weight.stride(0), weight.stride(1),
                               gq.stride(0), float(scale), float(smoothing), bucket(r1 - r0), bucket(c), bucket(d),
                               SAVE_DOTS=save_dots, IEEE=x.dtype == torch.float32)
        first += launched["grid"][1]   # the split count of the launch that counts (the last, after any tuning)
        x_rows = row_coefficients(rows_of(xsq), rows_of(grad_row), rows_of(ez), rows_of(tz))
        if half:
            _gq_mm(gq, weight, rows_of(grad_x), scale, e=xs, coefficients=x_rows)
            if acc_w is None:
                acc_w = torch.empty((c, d), device=x.device, dtype=weight.dtype if one else torch.float32)
            _gq_mm(gq.t(), xs, acc_w, scale, e=weight if last else None, accumulate=index > 0,
                   coefficients=column_coefficients(wsq, col_part, first))
            continue
        product = torch.mm(gq, weight)
        if grad_x is None:  # one chunk: the product becomes the gradient in place
            grad_x = _epilogue(product, xs, product, scale, x_rows)
        else:
            _epilogue(product, xs, grad_x[r0:r1], scale, x_rows)
        chunk_w = torch.mm(gq.t(), xs)
        if acc_w is None:
            acc_w = chunk_w if one else chunk_w.float()  # several chunks accumulate in float32
        else:
            acc_w += chunk_w
    if half:
        return grad_x, acc_w if one else acc_w.to(weight.dtype)
    # mixed dtypes: W is read in its dtype, never copied to the product's
    grad_w = _epilogue(acc_w, weight, acc_w if one else torch.empty((c, d), device=x.device, dtype=weight.dtype),
                       scale, column_coefficients(wsq, col_part, first))
    return grad_x, grad_w
