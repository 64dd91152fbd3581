"""Triton kernels for vtreid.ops.pairwise_distance (forward and backward).

Forward (two launches): a pre-pass writes the squared row norms of x and y (float32, from the input
values) in one launch over both; then each program of the main kernel owns a [BLOCK_N, BLOCK_M] tile of
the output, streams the feature axis in BLOCK_D slices into a tl.dot accumulator (nothing else in the
inner loop), and runs the metric epilogue on the accumulator and the saved norms before the single store.
The norms are reused by the backward.

Backward (three launches):
    grad_x = a * x - B @ y,   grad_y = b * y - B^T @ x
    euclidean   B_ij = g_ij / d_ij  (0 where d_ij = 0),  a_i = sum_j B_ij,  b_j = sum_i B_ij
    sqeuclidean B_ij = 2 g_ij       (0 where d_ij = 0),  a_i = sum_j B_ij,  b_j = sum_i B_ij
    cosine      B_ij = g_ij / (n_i n_j),  a_i = [|x_i| > eps] sum_j g_ij (1 - d_ij) / n_i^2,
                b_j = [|y_j| > eps] sum_i g_ij (1 - d_ij) / n_j^2,  n = max(|row|, eps)
A coefficient pass reads grad and dist once and writes B (float32, [N, M]) and, per tile, the partial
row and column sums of a and b; the two side kernels (grad_x over [BLOCK_N, BLOCK_D] tiles of x, grad_y
over tiles of y reading B through transposed strides) are then plain GEMMs on B plus the summed partials:
IEEE FMA dots for float32 inputs, and for half inputs two TF32 tensor-core dots (B = hi + lo, the input
exact in TF32: _dot_2xtf32), ~2^-20 relative per product where a single TF32 dot would give 2^-10.
The earlier design rebuilt B from grad and dist in every D slice of both sides: 2 x D / BLOCK_D reads of
two N x M matrices (~8 GB at 8192^2 x 2048) where this reads them once and B from L2.

Autotune keys are bucketed sizes (kernels/_launch.bucket); configs whose grid would leave SMs idle at a
shape are pruned when another config fills one wave (``prune_to_waves``).

These functions compute; dispatch, checks and autograd live in vtreid/ops/pairwise_distance.py.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import (INTERPRET, SM_86_89, autotune, bucket, cdiv, configs_union, next_power_of_2, not_on, num_sms,
                      on_device_of, prune_to_waves)

METRIC_CODES = {"euclidean": 0, "sqeuclidean": 1, "cosine": 2}

def _cfg(bn, bm, bd, warps, stages, group=8):
    """GROUP tile rows share their y tiles in L2 (the forward's grouped launch order)."""
    return triton.Config({"BLOCK_N": bn, "BLOCK_M": bm, "BLOCK_D": bd, "GROUP": group}, num_warps=warps,
                         num_stages=stages)


# Configs per input precision: float32 runs IEEE FMA dots (no TF32); half inputs run tensor-core dots. Each
# list holds only configs that compile without register spills on sm_90 for every metric with Triton 3.9
# (pinned) and 3.6 (the GPU image's), as the ops launch them: contiguous features, whose unit stride Triton
# specializes so that the loads are vectorized and pipelined through shared memory (cp.async, num_stages
# deep). scripts/compile_triton.py compiles each list with its dtypes. The small tiles give one wave at
# training sizes (256 x 256 -> 256 programs); the large ones are for 8192^2 x 2048: 128 x 256 x 64 with
# 8 warps is the tile of Triton's own Hopper GEMM configs (185-213 registers, 144 KB of shared memory in 3
# stages). Spilling and left out: 256 x 128 (360-780 bytes). Until Step 14 the table compiled a feature
# stride that was a runtime value, which the ops never launch: no vectorized loads, no pipelining, and
# 128 x 128 x 64 and 128 x 256 "spilled".
_FWD_BY_DTYPE = {
    # sm_80's ptxas spills the two IEEE tiles marked not_on(80) (8-32 bytes at 255 registers); 64 x 32 x 64
    # spills 8 bytes on sm_100 and sm_120 too
    "fp32": [_cfg(128, 128, 32, 8, 3), _cfg(128, 64, 32, 8, 3), not_on(_cfg(64, 32, 64, 4, 3), 80, 100, 120),
             _cfg(32, 16, 128, 4, 3), not_on(_cfg(16, 16, 128, 2, 3), 80)],
    # 128 x 256 spills in its epilogue on sm_100 (56-88 bytes: tcgen05 accumulates in tensor memory, the
    # epilogue holds the tile in registers) and on sm_120 (344-496 bytes: mma.sync, 99 KB of shared memory)
    "half": [not_on(_cfg(128, 256, 64, 8, 3), 100, 120), _cfg(128, 128, 64, 8, 4),
             not_on(_cfg(128, 256, 32, 8, 4), 100, 120), _cfg(128, 128, 32, 8, 3),
             _cfg(64, 128, 32, 4, 4), _cfg(128, 64, 32, 8, 3), _cfg(64, 32, 64, 4, 3),
             _cfg(32, 16, 128, 4, 3), _cfg(16, 16, 128, 2, 3)],
}
_FWD_INTERPRETER = {"BLOCK_N": 32, "BLOCK_M": 32, "BLOCK_D": 32, "GROUP": 4}


def _bcfg(bn, bk, bd, warps, stages):
    return triton.Config({"BLOCK_N": bn, "BLOCK_K": bk, "BLOCK_D": bd}, num_warps=warps, num_stages=stages)


_BWD_BY_DTYPE = {
    # sm_80's ptxas gives the two larger float32 tiles 32 registers and a 3.3-6.2 KB stack of spills
    # (sm_86 and sm_90 compile the same PTX at 80-255 registers): not_on(80)
    "fp32": [not_on(_bcfg(64, 64, 128, 8, 3), 80), not_on(_bcfg(32, 64, 64, 4, 3), 80), _bcfg(16, 64, 64, 4, 3),
             _bcfg(16, 32, 128, 4, 3)],
    # Half inputs multiply B (float32) by the widened input as two TF32 tensor-core GEMMs (_dot_2xtf32):
    # wgmma on sm_90 from BLOCK_N 64, mma.sync below. Both launches (the x side reads the coefficients by
    # rows, the y side by columns) compile without spills on sm_90. Spilling and left out: 128 x 32 x 128
    # with 4 warps (104-152 bytes, x side), 128 x 64 x 256 (104-208 bytes, x side). The 16- and 32-row
    # tiles are for the training shape (256 x 2048: 256 programs of 16 x 128), the 128-row ones for
    # 8192^2 x 2048.
    # The marked ones spill 8-40 bytes on the architectures named.
    "half": [_bcfg(128, 32, 128, 8, 3), _bcfg(128, 64, 64, 8, 3), not_on(_bcfg(128, 32, 64, 8, 3), 120),
             not_on(_bcfg(64, 32, 128, 4, 3), 80, 87, *SM_86_89, 120),
             not_on(_bcfg(64, 32, 64, 4, 4), 100), _bcfg(32, 32, 128, 8, 3), _bcfg(16, 32, 64, 4, 3),
             _bcfg(16, 32, 128, 8, 3)],
}
_BWD_INTERPRETER = {"BLOCK_N": 32, "BLOCK_K": 32, "BLOCK_D": 32}


#: Tiles of the norm pre-pass and of the coefficient pass (memory-bound, not tuned): the largest that still
#: gives every SM a program, down to one row (norms) or 16 x 16 (coefficients).
NORM_BLOCK_R, NORM_BLOCK_D = 16, 128
COEF_BLOCKS = ((32, 64), (32, 32), (16, 32), (16, 16))


def forward_grid(n: int, m: int, meta: dict) -> tuple[int]:
    """Programs of the forward main kernel: one per [BLOCK_N, BLOCK_M] output tile."""
    return (cdiv(n, meta["BLOCK_N"]) * cdiv(m, meta["BLOCK_M"]),)


def tile_offsets_fit_int32(t: torch.Tensor, rows: int = 128, cols: int = 256) -> bool:
    """Whether every offset within a [rows, cols] tile of ``t`` (the largest the configs use) fits in int32."""
    return (rows - 1) * abs(t.stride(0)) + (cols - 1) * abs(t.stride(1)) < 2 ** 31


def side_grid(n: int, d: int, meta: dict) -> tuple[int, int]:
    """Programs of one backward side kernel: one per [BLOCK_N, BLOCK_D] tile of the gradient."""
    return (cdiv(n, meta["BLOCK_N"]), cdiv(d, meta["BLOCK_D"]))


def norm_block(rows: int, sms: int) -> int:
    """Rows per program of the norm pre-pass over ``rows`` rows (x and y together)."""
    block = NORM_BLOCK_R
    while block > 1 and cdiv(rows, block) < sms:
        block //= 2
    return block


def coef_blocks(n: int, m: int, sms: int) -> tuple[int, int]:
    for bn, bm in COEF_BLOCKS:
        if cdiv(n, bn) * cdiv(m, bm) >= sms:
            return bn, bm
    return COEF_BLOCKS[-1]


def coef_grid(n: int, m: int, blocks: tuple[int, int]) -> tuple[int, int]:
    return (cdiv(n, blocks[0]), cdiv(m, blocks[1]))


@triton.jit
def _dot_f32(a, b, IEEE: tl.constexpr):
    # float32 operands must not go through TF32: d^2 = |x|^2 + |y|^2 - 2xy cancels, and a 1e-3
    # relative error in xy would swamp the distance of close points.
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    else:
        return tl.dot(a, b)


@triton.jit
def _dot_2xtf32(a, b, acc):
    """acc + a @ b on tensor cores at ~float32 precision, for float32 ``a`` and a ``b`` that is exact in TF32
    (widened float16 or bfloat16: 10 and 7 mantissa bits, TF32 keeps 10). a = hi + lo, hi = a with its low
    13 mantissa bits cleared (exact in TF32), lo = a - hi (exact, below one TF32 ulp of a); lo then loses
    at most one TF32 ulp of itself, so each product is good to ~2^-20 relative where one TF32 dot would be
    2^-10. Two TF32 GEMMs where tf32x3 would spend three (its hi_a * lo_b term is zero here). inf keeps
    lo = 0, NaN stays NaN."""
    hi = (a.to(tl.int32, bitcast=True) & -8192).to(tl.float32, bitcast=True)
    lo = tl.where(hi == a, 0.0, a - hi)
    acc = tl.dot(lo, b, acc, input_precision="tf32")
    return tl.dot(hi, b, acc, input_precision="tf32")


@triton.jit
def _rsqrt_mufu(x):
    # MUFU.RSQ: the seed ptxas's own expansion of sqrt.rn.f32 starts from (GPU only: inline PTX)
    return tl.inline_asm_elementwise("rsqrt.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True,
                                     pack=1)


@triton.jit
def _rsqrt_interpreted(x):
    # 1 / sqrt(x) in float64 (the interpreter's sqrt is exact), rounded to float32: the Newton step then rounds
    # every float correctly (checked exhaustively on [1, 4)); float32 1 / sqrt_rn(x) misrounds 0.6% of them
    return (1.0 / tl.sqrt(x.to(tl.float64))).to(tl.float32)


_rsqrt_seed = _rsqrt_interpreted if INTERPRET else _rsqrt_mufu


@triton.jit
def sqrt_rn_selects(x):
    """Correctly rounded float32 square root for [BN, BM] epilogues: the instructions ptxas emits for
    sqrt.rn.f32 (sm_80/sm_90: MUFU.RSQ y of x, s = x y, r = fma(-s, s, x), fma(r, y / 2, s)), with its slow
    path done by selects instead of a subroutine call. The call's convention spilled the 128 x 128 tiles
    (Step 14). The slow path's cases: x below 2^-101 (denormals included) is scaled by 2^64 and the root by
    2^-32 (exact); +-0 and inf return x; negatives and NaN give NaN."""
    bits = x.to(tl.int32, bitcast=True)
    tiny = (bits > 0) & (bits < 0x0D000000)
    xs = tl.where(tiny, x * 18446744073709551616.0, x)
    y = _rsqrt_seed(xs)
    s = xs * y
    root = tl.fma(tl.fma(-s, s, xs), y * 0.5, s)
    root = tl.where(tiny, root * 2.3283064365386962890625e-10, root)
    special = tl.where(((bits & 0x7FFFFFFF) == 0) | (bits == 0x7F800000), x, float("nan"))
    return tl.where((bits <= 0) | (bits >= 0x7F800000), special, root)


@triton.jit
def max_keep_nan(x, floor):
    """max(x, floor) with a NaN x kept, as torch's clamp_min and relu (tl.maximum alone returns the floor):
    a diverged model's NaN must reach the outputs that read it."""
    return tl.maximum(x, floor, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def inverse_norm(sq):
    """1 / max(|v|, 1e-12) from |v|^2, as F.normalize's eps; NaN stays NaN."""
    return 1.0 / max_keep_nan(tl.sqrt_rn(sq), 1e-12)


@triton.jit
def cosine_epilogue(dot, inv_x, inv_y):
    return 1.0 - dot * inv_x[:, None] * inv_y[None, :]


@triton.jit
def distance_epilogue(dot, xsq, ysq, tau, METRIC: tl.constexpr):
    """[BN, BM] distances from x.y^T and the squared row norms (float32), as reference.distance_matrix.

    Square roots are the correctly rounded tl.sqrt_rn: on a GPU tl.sqrt is the approximate one, and
    distances are compared exactly (ties, zero for identical rows). Only finite noise is flushed to 0:
    NaN and inf (a diverged model) propagate."""
    if METRIC == 2:
        return cosine_epilogue(dot, inverse_norm(xsq), inverse_norm(ysq))
    norms = xsq[:, None] + ysq[None, :]
    d2 = norms - 2.0 * dot
    d2 = tl.where((d2 <= tau * norms) & (norms < float("inf")), 0.0, d2)
    if METRIC == 0:
        return sqrt_rn_selects(d2)
    return d2


@triton.jit
def dot_and_norms(X, Y, rn, rm, mask_n, mask_m, D, stride_xn, stride_xd, stride_yn, stride_yd,
                  IEEE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """x[rn].y[rm]^T [BN, BM] and the squared norms of both row sets, streaming D in BLOCK_D slices."""
    x_rows = X + rn.to(tl.int64)[:, None] * stride_xn
    y_rows = Y + rm.to(tl.int64)[:, None] * stride_yn
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    xsq = tl.zeros((BLOCK_N,), dtype=tl.float32)
    ysq = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        rd = d0 + tl.arange(0, BLOCK_D)
        mask_d = rd < D
        rd64 = rd.to(tl.int64)  # every offset is 64-bit: a transposed view has a feature stride of N
        xt = tl.load(x_rows + rd64[None, :] * stride_xd, mask=mask_n[:, None] & mask_d[None, :], other=0.0)
        yt = tl.load(y_rows + rd64[None, :] * stride_yd, mask=mask_m[:, None] & mask_d[None, :], other=0.0)
        acc = acc + _dot_f32(xt, tl.trans(yt), IEEE)
        xf = xt.to(tl.float32)
        yf = yt.to(tl.float32)
        xsq += tl.sum(xf * xf, axis=1)
        ysq += tl.sum(yf * yf, axis=1)
    return acc, xsq, ysq


@triton.jit
def dot_tile(X, Y, rn, rm, mask_n, mask_m, D, stride_xn, stride_xd, stride_yn, stride_yd,
             IEEE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """x[rn].y[rm]^T [BN, BM] in float32, streaming D in BLOCK_D slices. Entries of rows past N (M) are
    garbage (those rows read row 0) and must be masked by the caller.

    Only the feature mask and the two pointer tiles are live across the loop: 2-D row masks, per-step
    pointer rebuilds and norm sums in the loop made most large tiles spill on sm_90 (Step 14); callers
    take the norms from a pre-pass (row_norms). Offsets are 64-bit: a transposed view has a feature
    stride of N."""
    rd = tl.arange(0, BLOCK_D)
    x_ptrs = X + tl.where(mask_n, rn, 0).to(tl.int64)[:, None] * stride_xn + rd.to(tl.int64)[None, :] * stride_xd
    y_ptrs = Y + tl.where(mask_m, rm, 0).to(tl.int64)[None, :] * stride_yn + rd.to(tl.int64)[:, None] * stride_yd
    # the slice steps too: BLOCK_D x a 32-bit stride wraps past 2^31 (a transposed gallery of 16.7M rows)
    x_step = tl.cast(stride_xd, tl.int64) * BLOCK_D
    y_step = tl.cast(stride_yd, tl.int64) * BLOCK_D
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        mask_d = rd < D - d0
        xt = tl.load(x_ptrs, mask=mask_d[None, :], other=0.0)
        yt = tl.load(y_ptrs, mask=mask_d[:, None], other=0.0)
        acc = acc + _dot_f32(xt, yt, IEEE)
        x_ptrs += x_step
        y_ptrs += y_step
    return acc


@triton.jit
def _row_norms(X, OUT, tile, N, D, stride_n, stride_d, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tile * BLOCK_R + tl.arange(0, BLOCK_R)
    mask_r = rows < N
    ptr = X + rows.to(tl.int64)[:, None] * stride_n
    acc = tl.zeros((BLOCK_R,), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        rd = d0 + tl.arange(0, BLOCK_D)
        v = tl.load(ptr + rd.to(tl.int64)[None, :] * stride_d, mask=mask_r[:, None] & (rd < D)[None, :],
                    other=0.0).to(tl.float32)
        acc += tl.sum(v * v, axis=1)
    tl.store(OUT + rows, acc, mask=mask_r)


@triton.jit
def _row_norms_kernel(X, Y, XSQ, YSQ, N, M, D, stride_xn, stride_xd, stride_yn, stride_yd,
                      BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """XSQ = |x_i|^2, YSQ = |y_j|^2 in float32; the first cdiv(N, BLOCK_R) programs take x, the rest y."""
    pid = tl.program_id(0)
    tiles_x = tl.cdiv(N, BLOCK_R)
    if pid < tiles_x:
        _row_norms(X, XSQ, pid, N, D, stride_xn, stride_xd, BLOCK_R, BLOCK_D)
    else:
        _row_norms(Y, YSQ, pid - tiles_x, M, D, stride_yn, stride_yd, BLOCK_R, BLOCK_D)


def _forward_programs(meta, args):
    return forward_grid(args["N"], args["M"], meta)[0]


@autotune(configs_union(_FWD_BY_DTYPE), _FWD_INTERPRETER, key=["N_BUCKET", "M_BUCKET", "D_BUCKET", "METRIC", "IEEE"],
          prune_configs_by={"early_config_prune": prune_to_waves(_forward_programs, _FWD_BY_DTYPE, "X")})
@triton.jit
def _pairwise_fwd_kernel(
    X, Y, OUT, XSQ, YSQ,
    N, M, D,
    stride_xn, stride_xd, stride_yn, stride_yd, stride_on, stride_om,
    tau, N_BUCKET, M_BUCKET, D_BUCKET,
    METRIC: tl.constexpr, IEEE: tl.constexpr, OFFSETS_I32: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, GROUP: tl.constexpr,
):
    # Grouped launch order: GROUP tile rows share their y tiles in L2.
    pid = tl.program_id(0)
    tiles_n = tl.cdiv(N, BLOCK_N)
    tiles_m = tl.cdiv(M, BLOCK_M)
    per_group = GROUP * tiles_m
    first_n = (pid // per_group) * GROUP
    group_rows = tl.minimum(tiles_n - first_n, GROUP)
    pid_n = first_n + (pid % per_group) % group_rows
    pid_m = (pid % per_group) // group_rows

    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_n = rn < N
    mask_m = rm < M
    # Tensor-core cosine tiles take the inverse norms before acc is live: the slow-path calls of sqrt.rn and
    # div.rn in the epilogue spilled 128 x 128 tiles. IEEE (float32) tiles keep them after the loop, where
    # they cost no registers during the FMA loop (hoisted, 64 x 32 spilled under Triton 3.6).
    HOIST: tl.constexpr = METRIC == 2 and not IEEE
    if HOIST:
        inv_x = inverse_norm(tl.load(XSQ + rn, mask=mask_n, other=0.0))
        inv_y = inverse_norm(tl.load(YSQ + rm, mask=mask_m, other=0.0))
    acc = dot_tile(X, Y, rn, rm, mask_n, mask_m, D, stride_xn, stride_xd, stride_yn, stride_yd,
                   IEEE, BLOCK_N, BLOCK_M, BLOCK_D)
    if HOIST:
        dist = cosine_epilogue(acc, inv_x, inv_y)
    else:
        xsq = tl.load(XSQ + rn, mask=mask_n, other=0.0)
        ysq = tl.load(YSQ + rm, mask=mask_m, other=0.0)
        dist = distance_epilogue(acc, xsq, ysq, tau, METRIC)
    # 64-bit pointers of the whole tile cost 128 registers at 128 x 128 (and spilled it): the tile's offsets
    # are 32-bit from its corner wherever they fit (OFFSETS_I32, decided on the host)
    if OFFSETS_I32:
        out = OUT + (pid_n * BLOCK_N).to(tl.int64) * stride_on + (pid_m * BLOCK_M).to(tl.int64) * stride_om
        out += tl.arange(0, BLOCK_N)[:, None] * stride_on + tl.arange(0, BLOCK_M)[None, :] * stride_om
    else:
        out = OUT + rn.to(tl.int64)[:, None] * stride_on + rm.to(tl.int64)[None, :] * stride_om
    tl.store(out, dist.to(OUT.dtype.element_ty), mask=mask_n[:, None] & mask_m[None, :])


@triton.jit
def _pairwise_coef_kernel(
    G, DIST, XSQ, YSQ, COEF, ROW_PART, COL_PART,
    N, M,
    stride_gn, stride_gm, stride_dn, stride_dm,
    METRIC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """COEF [N, M] = B (float32); ROW_PART [tiles_m, N] and COL_PART [tiles_n, M]: this tile's share of the
    row sums a (before the cosine 1 / n_i^2) and of the column sums b. Reads grad and dist once.
    One grid axis, row tiles outer: axis 1 stops at 65535 programs, M / 64 past 4.2M candidates."""
    tiles_m = tl.cdiv(M, BLOCK_M)
    pid_n = tl.program_id(0) // tiles_m
    pid_m = tl.program_id(0) % tiles_m
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_n = rn < N
    mask_m = rm < M
    mask = mask_n[:, None] & mask_m[None, :]
    rn64 = rn.to(tl.int64)
    rm64 = rm.to(tl.int64)  # grad and dist may be read transposed: rm * N passes 2^31 for large N x M
    g = tl.load(G + rn64[:, None] * stride_gn + rm64[None, :] * stride_gm, mask=mask, other=0.0).to(tl.float32)
    d = tl.load(DIST + rn64[:, None] * stride_dn + rm64[None, :] * stride_dm, mask=mask, other=0.0).to(tl.float32)
    # B stays float32 for every input dtype: rounded to half it would disagree with the row sums, which for
    # close pairs (large g / d, x ~ y) leaves an error of the size of the whole term, and the cosine one
    # overflows half for tiny-norm rows.
    if METRIC == 0:
        # 0 at flushed pairs only: a NaN distance passes its NaN on, as the reference's sqrt does
        coef = tl.where(d != 0.0, g / tl.where(d != 0.0, d, 1.0), 0.0)
        sums = coef
    elif METRIC == 1:
        coef = tl.where(d != 0.0, 2.0 * g, 0.0)
        sums = coef
    else:
        inv_x = inverse_norm(tl.load(XSQ + rn, mask=mask_n, other=1.0))
        inv_y = inverse_norm(tl.load(YSQ + rm, mask=mask_m, other=1.0))
        coef = g * inv_x[:, None] * inv_y[None, :]
        sums = g * (1.0 - d)
    tl.store(COEF + rn64[:, None] * M + rm64[None, :], coef, mask=mask)
    tl.store(ROW_PART + pid_m.to(tl.int64) * N + rn64, tl.sum(sums, axis=1), mask=mask_n)
    tl.store(COL_PART + pid_n.to(tl.int64) * M + rm64, tl.sum(sums, axis=0), mask=mask_m)


def _side_programs(meta, args):
    return side_grid(args["N"], args["D"], meta)[0] * side_grid(args["N"], args["D"], meta)[1]


@autotune(configs_union(_BWD_BY_DTYPE), _BWD_INTERPRETER, key=["N_BUCKET", "K_BUCKET", "D_BUCKET", "METRIC"],
          prune_configs_by={"early_config_prune": prune_to_waves(_side_programs, _BWD_BY_DTYPE, "B")})
@triton.jit
def _pairwise_bwd_kernel(
    COEF, PART, A, B, ASQ, GRAD_A,
    N, K, D, PARTS,
    stride_cn, stride_ck, stride_an, stride_ad, stride_bk, stride_bd, stride_ga_n, stride_ga_d,
    N_BUCKET, K_BUCKET, D_BUCKET,
    METRIC: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """grad_a [N, D] = a * a_rows - COEF @ b, with a = the PARTS partial sums in PART [PARTS, N]; the other
    operand b is [K, D] and COEF is read at (row, k) through (stride_cn, stride_ck), transposed for the
    second input."""
    pid_n = tl.program_id(0)
    pid_d = tl.program_id(1)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rd = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_n = rn < N
    mask_d = rd < D
    rn64 = rn.to(tl.int64)
    rd64 = rd.to(tl.int64)

    acc = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk64 = (k0 + tl.arange(0, BLOCK_K)).to(tl.int64)
        mask_k = rk64 < K
        coef = tl.load(COEF + rn64[:, None] * stride_cn + rk64[None, :] * stride_ck,
                       mask=mask_n[:, None] & mask_k[None, :], other=0.0)
        bt = tl.load(B + rk64[:, None] * stride_bk + rd64[None, :] * stride_bd,
                     mask=mask_k[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
        if B.dtype.element_ty == tl.float32:
            acc = acc + _dot_f32(coef, bt, True)
        else:
            acc = _dot_2xtf32(coef, bt, acc)

    row_coef = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for t in range(0, PARTS):  # in tile order: the same sum for every D slice and every run
        row_coef += tl.load(PART + t * N + rn64, mask=mask_n, other=0.0)
    if METRIC == 2:
        a_sq = tl.load(ASQ + rn, mask=mask_n, other=1.0)
        a_norm = tl.sqrt_rn(a_sq)
        inv_a = inverse_norm(a_sq)
        row_coef = tl.where(a_norm > 1e-12, row_coef * inv_a * inv_a, 0.0)
    at = tl.load(A + rn64[:, None] * stride_an + rd64[None, :] * stride_ad,
                 mask=mask_n[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
    grad = row_coef[:, None] * at - acc
    tl.store(GRAD_A + rn64[:, None] * stride_ga_n + rd64[None, :] * stride_ga_d,
             grad.to(GRAD_A.dtype.element_ty), mask=mask_n[:, None] & mask_d[None, :])


_pairwise_fwd_kernel.dtype_configs = _FWD_BY_DTYPE
_pairwise_bwd_kernel.dtype_configs = _BWD_BY_DTYPE


def row_norms(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(|x_i|^2 [N], |y_j|^2 [M]) in float32, one launch; y is x: computed once."""
    n, d = x.shape
    same = y is x
    m = 0 if same else y.shape[0]
    xsq = torch.empty((n,), device=x.device, dtype=torch.float32)
    ysq = xsq if same else torch.empty((m,), device=x.device, dtype=torch.float32)
    block = norm_block(n + m, num_sms(x.device))
    programs = cdiv(n, block) + cdiv(m, block)
    if programs:
        _row_norms_kernel[(programs,)](x, y, xsq, ysq, n, m, d, x.stride(0), x.stride(1), y.stride(0), y.stride(1),
                                       BLOCK_R=block, BLOCK_D=min(NORM_BLOCK_D, next_power_of_2(d)))
    return xsq, ysq


@on_device_of("x")
def forward(x: torch.Tensor, y: torch.Tensor, metric: str, tau: float):
    """(dist [N, M] in x.dtype, xsq [N] float32, ysq [M] float32)."""
    n, d = x.shape
    m = y.shape[0]
    out = torch.empty((n, m), device=x.device, dtype=x.dtype)
    if n == 0 or m == 0:
        # Nothing to pair: the norms are only ever read next to an entry of dist.
        return out, x.new_zeros((n,), dtype=torch.float32), x.new_zeros((m,), dtype=torch.float32)
    xsq, ysq = row_norms(x, y)
    _pairwise_fwd_kernel[lambda meta: forward_grid(n, m, meta)](
        x, y, out, xsq, ysq, n, m, d,
        x.stride(0), x.stride(1), y.stride(0), y.stride(1), out.stride(0), out.stride(1),
        tau, bucket(n), bucket(m), bucket(d), METRIC=METRIC_CODES[metric], IEEE=x.dtype == torch.float32,
        OFFSETS_I32=tile_offsets_fit_int32(out),
    )
    return out, xsq, ysq if y is not x else xsq.clone()


def _grad_one_side(coef, parts, a, b, asq, stride_cn, stride_ck, metric):
    n, d = a.shape
    k = b.shape[0]
    grad_a = torch.empty_like(a, memory_format=torch.contiguous_format)
    _pairwise_bwd_kernel[lambda meta: side_grid(n, d, meta)](
        coef, parts, a, b, asq, grad_a, n, k, d, parts.shape[0],
        stride_cn, stride_ck, a.stride(0), a.stride(1), b.stride(0), b.stride(1), grad_a.stride(0), grad_a.stride(1),
        bucket(n), bucket(k), bucket(d), METRIC=METRIC_CODES[metric],
    )
    return grad_a


@on_device_of("x")
def backward(grad: torch.Tensor, dist: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
             xsq: torch.Tensor, ysq: torch.Tensor, metric: str):
    """(grad_x [N, D], grad_y [M, D]) for upstream ``grad`` [N, M] (any strides: autograd may hand an
    expanded or transposed view)."""
    n, m = x.shape[0], y.shape[0]
    if n == 0 or m == 0:
        return (torch.zeros_like(x, memory_format=torch.contiguous_format),
                torch.zeros_like(y, memory_format=torch.contiguous_format))
    blocks = coef_blocks(n, m, num_sms(x.device))
    tiles_n, tiles_m = coef_grid(n, m, blocks)
    coef = torch.empty((n, m), device=x.device, dtype=torch.float32)
    row_part = torch.empty((tiles_m, n), device=x.device, dtype=torch.float32)
    col_part = torch.empty((tiles_n, m), device=x.device, dtype=torch.float32)
    _pairwise_coef_kernel[(tiles_n * tiles_m,)](
        grad, dist, xsq, ysq, coef, row_part, col_part, n, m,
        grad.stride(0), grad.stride(1), dist.stride(0), dist.stride(1),
        METRIC=METRIC_CODES[metric], BLOCK_N=blocks[0], BLOCK_M=blocks[1],
    )
    grad_x = _grad_one_side(coef, row_part, x, y, xsq, m, 1, metric)
    grad_y = _grad_one_side(coef, col_part, y, x, ysq, 1, m, metric)
    return grad_x, grad_y
