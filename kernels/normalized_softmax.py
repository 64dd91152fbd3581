"""Triton kernels for vtreid.ops.normalized_logits and vtreid.ops.normalized_cross_entropy.

z_ic = s (x_i . w_c) r_i q_c with r_i = 1 / max(|x_i|, eps), q_c = 1 / max(|w_c|, eps): the norms are
folded into the epilogue of the x.W^T tile, so no normalised copy of W is ever written.

Cross-entropy forward: one program per block of rows streams the classes in tiles (reading W once per
pass) with an online log-sum-exp; alongside it accumulates E_p[z] = sum_c p_ic z_ic and the target term
T_i = (1 - eps) z_{i,y_i} + eps / C sum_c z_ic, so loss_i = lse_i - T_i and no N x C logits exist.

Backward, with G_ic = g_i (p_ic - t_ic) (t the smoothed one-hot target):
    grad_x_i = s r_i sum_c (G_ic q_c) w_c - [|x_i| > eps] r_i^2 (sum_c G_ic z_ic) x_i,   sum_c G z = g (E_p[z] - T)
    grad_w_c = s sum_i (G_ic q_c) (r_i x_i) - [|w_c| > eps] q_c^2 (sum_i G_ic z_ic) w_c
One program per class tile recomputes its logits for a chunk of rows and writes Gq = G q (the only
N x C-shaped buffer, capped in size by the caller) and the column sums sum_i G_ic z_ic; the two
products are GEMMs on Gq.

With SAVE_DOTS (the caller asks for it when C is small, see vtreid.ops.normalized_softmax) the forward
also writes the raw x.W^T tiles to DOTS [N, C] and the backward reads them instead of recomputing.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import autotune, on_device_of
from .pairwise_distance import dot_and_norms

_FWD_CONFIGS = (
    [
        triton.Config({"BLOCK_N": 64, "BLOCK_C": 128, "BLOCK_D": 64}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_N": 32, "BLOCK_C": 128, "BLOCK_D": 64}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_N": 16, "BLOCK_C": 128, "BLOCK_D": 128}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_N": 64, "BLOCK_C": 64, "BLOCK_D": 64}, num_warps=4, num_stages=3),
    ],
    {"BLOCK_N": 16, "BLOCK_C": 256, "BLOCK_D": 32},  # the interpreter pays per tile, not per element
)
_GRAD_CONFIGS = (
    [
        triton.Config({"BLOCK_N": 64, "BLOCK_C": 128, "BLOCK_D": 64}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_N": 32, "BLOCK_C": 64, "BLOCK_D": 64}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_N": 64, "BLOCK_C": 32, "BLOCK_D": 128}, num_warps=4, num_stages=3),
    ],
    {"BLOCK_N": 16, "BLOCK_C": 256, "BLOCK_D": 32},
)

#: Largest number of N x C elements the backward holds at once (rows are processed in chunks).
MAX_CHUNK_ELEMENTS = 1 << 25


@triton.jit
def _inv_norm(sq):
    return 1.0 / tl.maximum(tl.sqrt_rn(sq), 1e-12)


@autotune(*_FWD_CONFIGS, key=["N", "C", "D"])
@triton.jit
def _nce_fwd_kernel(
    X, W, TARGET, LOSS, LSE, EZ, TZ, XSQ, WSQ, DOTS,
    N, C, D, stride_xn, stride_xd, stride_wc, stride_wd,
    scale, smoothing,
    SAVE_DOTS: tl.constexpr, IEEE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    rn = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = rn < N
    y = tl.load(TARGET + rn, mask=mask_n, other=0)
    run_max = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    run_sum = tl.zeros((BLOCK_N,), dtype=tl.float32)
    run_ez = tl.zeros((BLOCK_N,), dtype=tl.float32)
    z_target = tl.zeros((BLOCK_N,), dtype=tl.float32)
    z_total = tl.zeros((BLOCK_N,), dtype=tl.float32)
    xsq = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        rc = c0 + tl.arange(0, BLOCK_C)
        mask_c = rc < C
        dot, xsq, wsq = dot_and_norms(X, W, rn, rc, mask_n, mask_c, D, stride_xn, stride_xd, stride_wc, stride_wd,
                                      IEEE, BLOCK_N, BLOCK_C, BLOCK_D)
        if pid == 0:
            tl.store(WSQ + rc, wsq, mask=mask_c)
        if SAVE_DOTS:
            tl.store(DOTS + rn.to(tl.int64)[:, None] * C + rc[None, :], dot, mask=mask_n[:, None] & mask_c[None, :])
        z = scale * dot * _inv_norm(xsq)[:, None] * _inv_norm(wsq)[None, :]
        z_live = tl.where(mask_c[None, :], z, 0.0)
        z = tl.where(mask_c[None, :], z, float("-inf"))
        new_max = tl.maximum(run_max, tl.max(z, axis=1))
        rescale = tl.exp(run_max - new_max)
        p = tl.exp(z - new_max[:, None])
        run_sum = run_sum * rescale + tl.sum(p, axis=1)
        run_ez = run_ez * rescale + tl.sum(p * z_live, axis=1)
        run_max = new_max
        z_target += tl.sum(tl.where(rc[None, :] == y[:, None], z_live, 0.0), axis=1)
        z_total += tl.sum(z_live, axis=1)
    lse = run_max + tl.log(run_sum)
    tz = (1.0 - smoothing) * z_target + smoothing / C * z_total
    tl.store(LOSS + rn, lse - tz, mask=mask_n)
    tl.store(LSE + rn, lse, mask=mask_n)
    tl.store(EZ + rn, run_ez / run_sum, mask=mask_n)
    tl.store(TZ + rn, tz, mask=mask_n)
    tl.store(XSQ + rn, xsq, mask=mask_n)


# COL_GZ is read-modify-written (row chunks accumulate into it): the GPU autotuner runs every config
# several times on the live buffers while benchmarking, so it must restore COL_GZ after each run.
@autotune(*_GRAD_CONFIGS, key=["N", "C", "D"], restore_value=["COL_GZ"])
@triton.jit
def _nce_grad_kernel(
    X, W, TARGET, LSE, G_ROW, XSQ, WSQ, DOTS, GQ, COL_GZ,
    N, C, D, stride_xn, stride_xd, stride_wc, stride_wd, stride_gn,
    scale, smoothing,
    SAVE_DOTS: tl.constexpr, IEEE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Gq[i, c] = g_i (p_ic - t_ic) q_c for the rows of this chunk; COL_GZ[c] += sum_i G_ic z_ic."""
    pid = tl.program_id(0)
    rc = pid * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = rc < C
    inv_w = _inv_norm(tl.load(WSQ + rc, mask=mask_c, other=1.0))
    col_gz = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        rn = n0 + tl.arange(0, BLOCK_N)
        mask_n = rn < N
        if SAVE_DOTS:
            dot = tl.load(DOTS + rn.to(tl.int64)[:, None] * C + rc[None, :], mask=mask_n[:, None] & mask_c[None, :],
                          other=0.0)
            xsq = tl.load(XSQ + rn, mask=mask_n, other=1.0)
        else:
            dot, xsq, _ = dot_and_norms(X, W, rn, rc, mask_n, mask_c, D, stride_xn, stride_xd, stride_wc,
                                        stride_wd, IEEE, BLOCK_N, BLOCK_C, BLOCK_D)
        z = scale * dot * _inv_norm(xsq)[:, None] * inv_w[None, :]
        lse = tl.load(LSE + rn, mask=mask_n, other=0.0)
        g = tl.load(G_ROW + rn, mask=mask_n, other=0.0)
        y = tl.load(TARGET + rn, mask=mask_n, other=-1)
        target = tl.where(rc[None, :] == y[:, None], 1.0 - smoothing, 0.0) + smoothing / C
        live = mask_n[:, None] & mask_c[None, :]
        grad = tl.where(live, g[:, None] * (tl.exp(z - lse[:, None]) - target), 0.0)
        col_gz += tl.sum(grad * z, axis=0)
        tl.store(GQ + rn.to(tl.int64)[:, None] * stride_gn + rc[None, :], (grad * inv_w[None, :]).to(GQ.dtype.element_ty),
                 mask=live)
    prev = tl.load(COL_GZ + rc, mask=mask_c, other=0.0)
    tl.store(COL_GZ + rc, prev + col_gz, mask=mask_c)


@on_device_of("x")
def cross_entropy_forward(x, weight, target, scale: float, smoothing: float, save_dots: bool):
    """(loss [N], lse [N], ez [N], tz [N], xsq [N], wsq [C], dots), all float32; dots is x.W^T [N, C]
    when save_dots, else empty [0]."""
    n, d = x.shape
    c = weight.shape[0]
    out = [torch.empty(n, device=x.device, dtype=torch.float32) for _ in range(5)]
    wsq = torch.empty(c, device=x.device, dtype=torch.float32)
    dots = torch.empty((n, c) if save_dots else (0,), device=x.device, dtype=torch.float32)
    if n == 0:
        wsq.copy_((weight.float() ** 2).sum(1))
        return (*out, wsq, dots)

    def grid(meta):
        return (triton.cdiv(n, meta["BLOCK_N"]),)

    _nce_fwd_kernel[grid](x, weight, target, *out, wsq, dots, n, c, d, x.stride(0), x.stride(1), weight.stride(0),
                          weight.stride(1), float(scale), float(smoothing), SAVE_DOTS=save_dots,
                          IEEE=x.dtype == torch.float32)
    return (*out, wsq, dots)


def gradient_dtype(dtype: torch.dtype) -> torch.dtype:
    # bfloat16 has float32's range, so Gq can be stored in it and fed to bf16 GEMMs; float16 would
    # flush the small probabilities of a large C to zero, so those go through float32.
    return torch.bfloat16 if dtype == torch.bfloat16 else torch.float32


@on_device_of("x")
def cross_entropy_backward(grad_row, x, weight, target, lse, ez, tz, xsq, wsq, dots, scale: float,
                           smoothing: float):
    """(grad_x, grad_weight) for per-row upstream gradients grad_row [N] (float32); dots as the forward
    returned it (reused when [N, C], recomputed when empty)."""
    n, d = x.shape
    c = weight.shape[0]
    gdt = gradient_dtype(x.dtype)
    inv_x = 1.0 / xsq.sqrt().clamp_min(1e-12)
    inv_w = 1.0 / wsq.sqrt().clamp_min(1e-12)
    x_unit = (x.float() * inv_x[:, None]).to(gdt)
    w_mm = weight if weight.dtype == gdt else weight.float()
    grad_x = torch.empty((n, d), device=x.device, dtype=torch.float32)
    col_gz = torch.zeros(c, device=x.device, dtype=torch.float32)
    save_dots = dots.dim() == 2
    rows = max(1, MAX_CHUNK_ELEMENTS // max(c, 1))
    grad_w = None
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        gq = torch.empty((r1 - r0, c), device=x.device, dtype=gdt)

        def grid(meta):
            return (triton.cdiv(c, meta["BLOCK_C"]),)

        xs = x[r0:r1]
        _nce_grad_kernel[grid](xs, weight, target[r0:r1], lse[r0:r1], grad_row[r0:r1], xsq[r0:r1], wsq,
                               dots[r0:r1] if save_dots else dots, gq, col_gz,
                               r1 - r0, c, d, xs.stride(0), xs.stride(1), weight.stride(0), weight.stride(1),
                               gq.stride(0), float(scale), float(smoothing), SAVE_DOTS=save_dots,
                               IEEE=x.dtype == torch.float32)
        grad_x[r0:r1] = torch.mm(gq, w_mm).float() * (scale * inv_x[r0:r1, None])
        chunk_w = torch.mm(gq.T, x_unit[r0:r1])
        if grad_w is None:
            grad_w = chunk_w if r1 == n else chunk_w.float()  # several chunks accumulate in float32
        else:
            grad_w += chunk_w
    if grad_w is None:  # no rows
        grad_w = torch.zeros((c, d), device=x.device, dtype=gdt)
    row_gz = grad_row * (ez - tz)
    grad_x -= ((xsq.sqrt() > 1e-12) * inv_x * inv_x * row_gz)[:, None] * x.float()
    col_coef = ((wsq.sqrt() > 1e-12) * inv_w * inv_w * col_gz)[:, None].to(grad_w.dtype)
    grad_w.mul_(scale).addcmul_(col_coef, w_mm.to(grad_w.dtype), value=-1)
    return grad_x.to(x.dtype), grad_w.to(weight.dtype)
