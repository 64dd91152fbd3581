"""Triton kernels for vtreid.ops.pairwise_distance (forward and backward), one fused kernel per pass.

Forward: each program owns a [BLOCK_N, BLOCK_M] tile of the output. It streams the feature axis in
BLOCK_D slices, accumulating x.y^T with tl.dot and, from the same registers, the squared row norms of
both operands; the metric epilogue runs on the accumulator before the single store. The programs in
the first tile column / row also write the squared norms, which the backward reuses.

Backward (one launch per input; the second launch reads grad and dist transposed through strides):
    grad_x = a * x - B @ y
    euclidean   B_ij = g_ij / d_ij  (0 where d_ij = 0),  a_i = sum_j B_ij
    sqeuclidean B_ij = 2 g_ij       (0 where d_ij = 0),  a_i = sum_j B_ij
    cosine      B_ij = g_ij / (n_i n_j),  a_i = [|x_i| > eps] sum_j g_ij (1 - d_ij) / n_i^2,
                n = max(|row|, eps)
Each program owns [BLOCK_N, BLOCK_D] of grad_x and loops over the other operand's rows, building the
B tile in registers from grad, dist and the saved norms (no N x M intermediate in memory).

These functions compute; dispatch, checks and autograd live in vtreid/ops/pairwise_distance.py.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import autotune, on_device_of

METRIC_CODES = {"euclidean": 0, "sqeuclidean": 1, "cosine": 2}

_FWD_CONFIGS = (
    [
        triton.Config({"BLOCK_N": 128, "BLOCK_M": 128, "BLOCK_D": 32, "GROUP": 8}, num_warps=8, num_stages=4),
        triton.Config({"BLOCK_N": 128, "BLOCK_M": 128, "BLOCK_D": 64, "GROUP": 8}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_N": 128, "BLOCK_M": 64, "BLOCK_D": 64, "GROUP": 8}, num_warps=4, num_stages=4),
        triton.Config({"BLOCK_N": 64, "BLOCK_M": 64, "BLOCK_D": 64, "GROUP": 8}, num_warps=4, num_stages=4),
        triton.Config({"BLOCK_N": 64, "BLOCK_M": 32, "BLOCK_D": 64, "GROUP": 8}, num_warps=4, num_stages=3),
    ],
    {"BLOCK_N": 32, "BLOCK_M": 32, "BLOCK_D": 32, "GROUP": 4},
)

_BWD_CONFIGS = (
    [
        triton.Config({"BLOCK_N": 64, "BLOCK_K": 64, "BLOCK_D": 128}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_N": 64, "BLOCK_K": 32, "BLOCK_D": 128}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_N": 32, "BLOCK_K": 64, "BLOCK_D": 64}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_N": 16, "BLOCK_K": 64, "BLOCK_D": 64}, num_warps=4, num_stages=3),
    ],
    {"BLOCK_N": 32, "BLOCK_K": 32, "BLOCK_D": 32},
)


@triton.jit
def _dot_f32(a, b, IEEE: tl.constexpr):
    # float32 operands must not go through TF32: d^2 = |x|^2 + |y|^2 - 2xy cancels, and a 1e-3
    # relative error in xy would swamp the distance of close points.
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    else:
        return tl.dot(a, b)


@triton.jit
def distance_epilogue(dot, xsq, ysq, tau, METRIC: tl.constexpr):
    """[BN, BM] distances from x.y^T and the squared row norms (float32), as reference.distance_matrix.

    Square roots are the correctly rounded tl.sqrt_rn: on a GPU tl.sqrt is the approximate one, and
    distances are compared exactly (ties, zero for identical rows). Only finite noise is flushed to 0:
    NaN and inf (a diverged model) propagate."""
    if METRIC == 2:
        inv_x = 1.0 / tl.maximum(tl.sqrt_rn(xsq), 1e-12)
        inv_y = 1.0 / tl.maximum(tl.sqrt_rn(ysq), 1e-12)
        return 1.0 - dot * inv_x[:, None] * inv_y[None, :]
    norms = xsq[:, None] + ysq[None, :]
    d2 = norms - 2.0 * dot
    d2 = tl.where((d2 <= tau * norms) & (norms < float("inf")), 0.0, d2)
    if METRIC == 0:
        return tl.sqrt_rn(d2)
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


@autotune(*_FWD_CONFIGS, key=["N", "M", "D", "METRIC"])
@triton.jit
def _pairwise_fwd_kernel(
    X, Y, OUT, XSQ, YSQ,
    N, M, D,
    stride_xn, stride_xd, stride_yn, stride_yd, stride_on, stride_om,
    tau,
    METRIC: tl.constexpr, IEEE: tl.constexpr,
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
    acc, xsq, ysq = dot_and_norms(X, Y, rn, rm, mask_n, mask_m, D, stride_xn, stride_xd, stride_yn, stride_yd,
                                  IEEE, BLOCK_N, BLOCK_M, BLOCK_D)

    dist = distance_epilogue(acc, xsq, ysq, tau, METRIC)
    out = OUT + rn.to(tl.int64)[:, None] * stride_on + rm.to(tl.int64)[None, :] * stride_om
    tl.store(out, dist.to(OUT.dtype.element_ty), mask=mask_n[:, None] & mask_m[None, :])
    if pid_m == 0:
        tl.store(XSQ + rn, xsq, mask=mask_n)
    if pid_n == 0:
        tl.store(YSQ + rm, ysq, mask=mask_m)


@autotune(*_BWD_CONFIGS, key=["N", "K", "D", "METRIC"])
@triton.jit
def _pairwise_bwd_kernel(
    G, DIST, A, B, ASQ, BSQ, GRAD_A,
    N, K, D,
    stride_gn, stride_gk, stride_dn, stride_dk,
    stride_an, stride_ad, stride_bk, stride_bd, stride_ga_n, stride_ga_d,
    METRIC: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """grad_a[N, D] of sum_ij g_ij dist(a_i, b_j); the other operand b is [K, D]."""
    pid_n = tl.program_id(0)
    pid_d = tl.program_id(1)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rd = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_n = rn < N
    mask_d = rd < D
    rn64 = rn.to(tl.int64)
    rd64 = rd.to(tl.int64)

    if METRIC == 2:
        asq = tl.load(ASQ + rn, mask=mask_n, other=1.0)
        a_norm = tl.sqrt_rn(asq)
        inv_a = 1.0 / tl.maximum(a_norm, 1e-12)

    acc = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    row_coef = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        rk64 = rk.to(tl.int64)  # the transposed side reads grad and dist at rk * N: past 2^31 for large N x M
        mask_k = rk < K
        mask_nk = mask_n[:, None] & mask_k[None, :]
        g = tl.load(G + rn64[:, None] * stride_gn + rk64[None, :] * stride_gk, mask=mask_nk, other=0.0).to(tl.float32)
        d = tl.load(DIST + rn64[:, None] * stride_dn + rk64[None, :] * stride_dk, mask=mask_nk, other=0.0).to(tl.float32)
        if METRIC == 0:
            coef = tl.where(d > 0.0, g / tl.where(d > 0.0, d, 1.0), 0.0)
            row_coef += tl.sum(coef, axis=1)
        elif METRIC == 1:
            coef = tl.where(d > 0.0, 2.0 * g, 0.0)
            row_coef += tl.sum(coef, axis=1)
        else:
            bsq = tl.load(BSQ + rk, mask=mask_k, other=1.0)
            inv_b = 1.0 / tl.maximum(tl.sqrt_rn(bsq), 1e-12)
            coef = g * inv_a[:, None] * inv_b[None, :]
            row_coef += tl.sum(g * (1.0 - d), axis=1)
        bt = tl.load(B + rk64[:, None] * stride_bk + rd64[None, :] * stride_bd,
                     mask=mask_k[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
        # The coefficients stay float32 (and the product IEEE float32) for every input dtype: rounded to
        # half they disagree with row_coef, which for close pairs (large g / d, a ~ b) leaves an error of
        # the size of the whole term, and the cosine one overflows half for tiny-norm rows.
        acc = acc + _dot_f32(coef, bt, True)

    if METRIC == 2:
        row_coef = tl.where(a_norm > 1e-12, row_coef * inv_a * inv_a, 0.0)
    at = tl.load(A + rn64[:, None] * stride_an + rd64[None, :] * stride_ad,
                 mask=mask_n[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
    grad = row_coef[:, None] * at - acc
    tl.store(GRAD_A + rn64[:, None] * stride_ga_n + rd64[None, :] * stride_ga_d,
             grad.to(GRAD_A.dtype.element_ty), mask=mask_n[:, None] & mask_d[None, :])


@on_device_of("x")
def forward(x: torch.Tensor, y: torch.Tensor, metric: str, tau: float):
    """(dist [N, M] in x.dtype, xsq [N] float32, ysq [M] float32)."""
    n, d = x.shape
    m = y.shape[0]
    out = torch.empty((n, m), device=x.device, dtype=x.dtype)
    if n == 0 or m == 0:
        # Nothing to pair: the norms are only ever read next to an entry of dist.
        return out, x.new_zeros((n,), dtype=torch.float32), x.new_zeros((m,), dtype=torch.float32)
    xsq = torch.empty((n,), device=x.device, dtype=torch.float32)
    ysq = torch.empty((m,), device=x.device, dtype=torch.float32)

    def grid(meta):
        return (triton.cdiv(n, meta["BLOCK_N"]) * triton.cdiv(m, meta["BLOCK_M"]),)

    _pairwise_fwd_kernel[grid](
        x, y, out, xsq, ysq, n, m, d,
        x.stride(0), x.stride(1), y.stride(0), y.stride(1), out.stride(0), out.stride(1),
        tau, METRIC=METRIC_CODES[metric], IEEE=x.dtype == torch.float32,
    )
    return out, xsq, ysq


@on_device_of("a")
def _grad_one_side(g, dist, a, b, asq, bsq, metric, transposed):
    n, d = a.shape
    k = b.shape[0]
    grad_a = torch.empty_like(a, memory_format=torch.contiguous_format)
    if n == 0:
        return grad_a
    if k == 0:
        return grad_a.zero_()
    sgn, sgk = (g.stride(1), g.stride(0)) if transposed else (g.stride(0), g.stride(1))
    sdn, sdk = (dist.stride(1), dist.stride(0)) if transposed else (dist.stride(0), dist.stride(1))

    def grid(meta):
        return (triton.cdiv(n, meta["BLOCK_N"]), triton.cdiv(d, meta["BLOCK_D"]))

    _pairwise_bwd_kernel[grid](
        g, dist, a, b, asq, bsq, grad_a, n, k, d,
        sgn, sgk, sdn, sdk,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), grad_a.stride(0), grad_a.stride(1),
        METRIC=METRIC_CODES[metric],
    )
    return grad_a


def backward(grad: torch.Tensor, dist: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
             xsq: torch.Tensor, ysq: torch.Tensor, metric: str):
    """(grad_x [N, D], grad_y [M, D]) for upstream ``grad`` [N, M]."""
    grad_x = _grad_one_side(grad, dist, x, y, xsq, ysq, metric, transposed=False)
    grad_y = _grad_one_side(grad, dist, y, x, ysq, xsq, metric, transposed=True)
    return grad_x, grad_y
