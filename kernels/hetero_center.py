"""Triton kernels for vtreid.ops.modality_centers and vtreid.ops.hetero_center_loss.

The ops layer gives every sample a class slot (samples stably sorted by label; ``order[seg[k]:seg[k+1]]``
are the samples of slot k in batch order), so centres come out right for any batch order and every
sum runs in a fixed order: results are bitwise reproducible, with no atomics.

Forward: one program per (feature set s, slot k) walks its samples once per BLOCK_D slice of the
features, accumulating the visible and infrared sums (and, for the strong constraint, a second walk
for the squared deviations: the two-pass variance), and folds the slice into the per-class scalars:
||c_vis - c_ir||^2, c_vis.c_ir, |c_vis|^2, |c_ir|^2, ||v_vis - v_ir||^2. It writes the centres,
variances, the counts and the class's hinge value [D + V - margin]_+. A class seen in one modality only
is left out as the reference's mask leaves it, by a factor 0: its hinge is 0, or NaN when its features
are not finite (a diverged model does not get a finite loss), and it passes no gradient.

Backward: one program per (set, sample, feature slice); with g the class's upstream gradient
(0 when its hinge is inactive) and m the sample's modality, o the other:
    grad_x = g * (dD/dc_m + strong * 2 (v_m - v_o) * 2 (x - c_m)) / n_m + grad_centres[m] / n_m
    sqeuclidean dD/dc_m = 2 (c_m - c_o)
    cosine      dD/dc_m = -(c_o / (|c_m| |c_o|) - [|c_m| > eps] cos c_m / |c_m|^2)

The class slots themselves (``class_slots``) come from two O(N^2) kernels instead of a stable sort and ~8
more ATen launches: ``_slot_rank_kernel`` gives sample i its stable sorted position
#{j: l_j < l_i} + #{j < i: l_j = l_i} (scattering ``order`` and the sorted labels), then
``_slot_segments_kernel`` numbers the classes along the sorted labels (slot = boundaries at or before the
position) and writes ``seg``: position p starts slot k where its label differs from p - 1's, and the
slots past the last class end at N.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import cdiv, next_power_of_2, on_device_of
from .pairwise_distance import inverse_norm, max_keep_nan

METRIC_CODES = {"sqeuclidean": 1, "cosine": 2}


@triton.jit
def _centers_fwd_kernel(
    X, ORDER, SEG, MOD, HINGE, CENTERS, VARS, COUNTS, STATS,
    N, D, stride_xs, stride_xn, stride_xd, margin,
    METRIC: tl.constexpr, STRONG: tl.constexpr, BLOCK_D: tl.constexpr,
):
    k = tl.program_id(0)  # class slots on grid axis 0 (up to 2^31 - 1; axes 1 and 2 stop at 65535)
    s = tl.program_id(1)
    start = tl.load(SEG + k)
    end = tl.load(SEG + k + 1)
    n_vis = 0.0
    n_ir = 0.0
    for p in range(start, end):
        m = (tl.load(MOD + tl.load(ORDER + p)) != 0).to(tl.float32)  # any non-zero value is infrared
        n_ir += m
        n_vis += 1.0 - m
    inv_vis = 1.0 / tl.maximum(n_vis, 1.0)
    inv_ir = 1.0 / tl.maximum(n_ir, 1.0)

    x_set = X + s.to(tl.int64) * stride_xs
    out_base = (s.to(tl.int64) * N + k) * 2 * D
    diff_sq = 0.0
    dot = 0.0
    vis_sq = 0.0
    ir_sq = 0.0
    var_diff_sq = 0.0
    for d0 in range(0, D, BLOCK_D):
        rd = d0 + tl.arange(0, BLOCK_D)
        mask_d = rd < D
        sum_vis = tl.zeros((BLOCK_D,), dtype=tl.float32)
        sum_ir = tl.zeros((BLOCK_D,), dtype=tl.float32)
        for p in range(start, end):
            j = tl.load(ORDER + p)
            w_ir = (tl.load(MOD + j) != 0).to(tl.float32)
            row = tl.load(x_set + j * stride_xn + rd.to(tl.int64) * stride_xd, mask=mask_d, other=0.0).to(tl.float32)
            sum_ir += row * w_ir
            sum_vis += row * (1.0 - w_ir)
        c_vis = sum_vis * inv_vis
        c_ir = sum_ir * inv_ir
        tl.store(CENTERS + out_base + rd, c_vis, mask=mask_d)
        tl.store(CENTERS + out_base + D + rd, c_ir, mask=mask_d)
        diff = c_vis - c_ir
        diff_sq += tl.sum(diff * diff, axis=0)
        dot += tl.sum(c_vis * c_ir, axis=0)
        vis_sq += tl.sum(c_vis * c_vis, axis=0)
        ir_sq += tl.sum(c_ir * c_ir, axis=0)
        if STRONG:
            dev_vis = tl.zeros((BLOCK_D,), dtype=tl.float32)
            dev_ir = tl.zeros((BLOCK_D,), dtype=tl.float32)
            for p in range(start, end):
                j = tl.load(ORDER + p)
                w_ir = (tl.load(MOD + j) != 0).to(tl.float32)
                row = tl.load(x_set + j * stride_xn + rd.to(tl.int64) * stride_xd, mask=mask_d, other=0.0).to(tl.float32)
                dv = row - c_vis
                di = row - c_ir
                dev_ir += di * di * w_ir
                dev_vis += dv * dv * (1.0 - w_ir)
            v_vis = dev_vis * inv_vis
            v_ir = dev_ir * inv_ir
            tl.store(VARS + out_base + rd, v_vis, mask=mask_d)
            tl.store(VARS + out_base + D + rd, v_ir, mask=mask_d)
            vd = v_vis - v_ir
            var_diff_sq += tl.sum(vd * vd, axis=0)
        else:
            zero = tl.zeros((BLOCK_D,), dtype=tl.float32)
            tl.store(VARS + out_base + rd, zero, mask=mask_d)
            tl.store(VARS + out_base + D + rd, zero, mask=mask_d)
    if s == 0:
        tl.store(COUNTS + 2 * k, n_vis.to(tl.int64))
        tl.store(COUNTS + 2 * k + 1, n_ir.to(tl.int64))
    if METRIC == 2:
        inv = 1.0 / (max_keep_nan(tl.sqrt_rn(vis_sq), 1e-12) * max_keep_nan(tl.sqrt_rn(ir_sq), 1e-12))
        dist = 1.0 - dot * inv
    else:
        dist = diff_sq
    both = (n_vis > 0.0) & (n_ir > 0.0)
    hinge = max_keep_nan(dist + var_diff_sq - margin, 0.0)
    tl.store(HINGE + s.to(tl.int64) * N + k, tl.where(both, hinge, hinge * 0.0))
    stats = STATS + (s.to(tl.int64) * N + k) * 5
    tl.store(stats, diff_sq)
    tl.store(stats + 1, dot)
    tl.store(stats + 2, vis_sq)
    tl.store(stats + 3, ir_sq)
    tl.store(stats + 4, var_diff_sq)


# The hinge gradient's strides depend on how the caller reduces the loss (an expanded scalar: (0, 0); a
# vector per set: (1, 0); a full [S, N] tensor: (N, 1)). Left unspecialized, one compiled kernel serves
# every pattern instead of a JIT recompile per pattern; they index one scalar load per program.
_BWD_UNSPECIALIZED = ("stride_hs", "stride_hn")


@triton.jit(do_not_specialize=_BWD_UNSPECIALIZED)
def _centers_bwd_kernel(
    X, SLOT, MOD, HINGE, CENTERS, VARS, COUNTS, STATS, G_HINGE, G_CENTERS, GRAD_X,
    N, D, stride_xs, stride_xn, stride_xd, stride_hs, stride_hn, stride_gs, stride_gk, stride_gm,
    METRIC: tl.constexpr, STRONG: tl.constexpr, HAS_G_CENTERS: tl.constexpr, BLOCK_D: tl.constexpr,
):
    j = tl.program_id(0)  # samples on grid axis 0 (axes 1 and 2 stop at 65535)
    s = tl.program_id(1)
    rd = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = rd < D
    k = tl.load(SLOT + j)
    m = (tl.load(MOD + j) != 0).to(tl.int32)  # any non-zero value is infrared: never an index past 1
    n_m = tl.load(COUNTS + 2 * k + m).to(tl.float32)
    inv_n = 1.0 / tl.maximum(n_m, 1.0)
    # The hinge passes gradient where it is active or NaN, as relu, and only for a class seen in both
    # modalities (the sample's own has n_m >= 1; a one-modality class's hinge is 0 or NaN, times 0).
    h = tl.load(HINGE + s.to(tl.int64) * N + k)
    passes = (h != 0.0) & (tl.load(COUNTS + 2 * k + 1 - m) > 0)
    # G_HINGE with its strides: the sum's gradient arrives expanded (stride 0 along the classes).
    g = tl.where(passes, tl.load(G_HINGE + s.to(tl.int64) * stride_hs + k * stride_hn).to(tl.float32), 0.0)
    base = (s.to(tl.int64) * N + k) * 2 * D
    c_m = tl.load(CENTERS + base + m * D + rd, mask=mask_d, other=0.0)
    c_o = tl.load(CENTERS + base + (1 - m) * D + rd, mask=mask_d, other=0.0)
    if METRIC == 2:
        stats = STATS + (s.to(tl.int64) * N + k) * 5
        dot = tl.load(stats + 1)
        sq_m = tl.load(stats + 2 + m)
        sq_o = tl.load(stats + 3 - m)
        norm_m = tl.sqrt_rn(sq_m)
        inv_m = inverse_norm(sq_m)
        inv_o = inverse_norm(sq_o)
        cos = dot * inv_m * inv_o
        own = tl.where(norm_m > 1e-12, cos * inv_m * inv_m, 0.0)
        d_center = own * c_m - c_o * inv_m * inv_o
    else:
        d_center = 2.0 * (c_m - c_o)
    grad = g * d_center
    if STRONG:
        v_m = tl.load(VARS + base + m * D + rd, mask=mask_d, other=0.0)
        v_o = tl.load(VARS + base + (1 - m) * D + rd, mask=mask_d, other=0.0)
        x = tl.load(X + s.to(tl.int64) * stride_xs + j.to(tl.int64) * stride_xn + rd.to(tl.int64) * stride_xd, mask=mask_d,
                    other=0.0).to(tl.float32)
        grad += g * 4.0 * (v_m - v_o) * (x - c_m)
    if HAS_G_CENTERS:
        grad += tl.load(G_CENTERS + s.to(tl.int64) * stride_gs + k * stride_gk + m * stride_gm + rd, mask=mask_d,
                        other=0.0).to(tl.float32)
    out = GRAD_X + (s.to(tl.int64) * N + j) * D + rd
    tl.store(out, (grad * inv_n).to(GRAD_X.dtype.element_ty), mask=mask_d)


def _block_d(d: int) -> int:
    return min(256, next_power_of_2(d))


@on_device_of("x")
def forward(x, order, seg, modality, metric: str, strong: bool, margin: float):
    """x [S, N, D] -> (hinge [S, N], centers [S, N, 2, D], variances (zeros unless strong), counts [N, 2] int64,
    stats [S, N, 5]); float32 except counts. Slot k's hinge is [D + V - margin]_+ when both modalities are
    present, else that times 0 (0, or NaN for non-finite features); stats: ||c_vis - c_ir||^2, c_vis.c_ir, |c_vis|^2, |c_ir|^2, ||v_vis - v_ir||^2."""
    s, n, d = x.shape
    # The kernel writes every slot, empty ones included, so nothing is filled first; counts are written by
    # the first feature set's programs, so they need zeros only when there is none.
    hinge = torch.empty((s, n), device=x.device, dtype=torch.float32)
    centers = torch.empty((s, n, 2, d), device=x.device, dtype=torch.float32)
    variances = torch.empty_like(centers)
    counts = (torch.empty if s else torch.zeros)((n, 2), device=x.device, dtype=torch.int64)
    stats = torch.empty((s, n, 5), device=x.device, dtype=torch.float32)
    if s and n:
        _centers_fwd_kernel[(n, s)](x, order, seg, modality, hinge, centers, variances, counts, stats, n, d,
                                    x.stride(0), x.stride(1), x.stride(2), float(margin),
                                    METRIC=METRIC_CODES[metric], STRONG=strong, BLOCK_D=_block_d(d))
    return hinge, centers, variances, counts, stats


@on_device_of("x")
def backward(x, slot, modality, hinge, centers, variances, counts, stats, grad_hinge, grad_centers, metric: str,
             strong: bool):
    """grad_x [S, N, D] from the upstream gradients of the hinge values [S, N] and of the centres."""
    s, n, d = x.shape
    grad_x = torch.empty((s, n, d), device=x.device, dtype=x.dtype)
    if s and n:
        gc = grad_centers.contiguous() if grad_centers is not None else centers
        block_d = _block_d(d)
        _centers_bwd_kernel[(n, s, cdiv(d, block_d))](
            x, slot, modality, hinge, centers, variances, counts, stats, grad_hinge, gc, grad_x,
            n, d, x.stride(0), x.stride(1), x.stride(2), grad_hinge.stride(0), grad_hinge.stride(1),
            gc.stride(0), gc.stride(1), gc.stride(2),
            METRIC=METRIC_CODES[metric], STRONG=strong, HAS_G_CENTERS=grad_centers is not None, BLOCK_D=block_d)
    return grad_x


_centers_bwd_kernel.unspecialized = _BWD_UNSPECIALIZED  # for the launch-spec test (tests/kernels)


# --- class slots ------------------------------------------------------------------------------------

@triton.jit
def _slot_rank_kernel(LABELS, ORDER, SORTED_LABELS, N, BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr):
    ri = tl.program_id(0) * BLOCK_I + tl.arange(0, BLOCK_I)
    mask_i = ri < N
    li = tl.load(LABELS + ri, mask=mask_i, other=0).to(tl.int64)
    less = tl.zeros((BLOCK_I,), dtype=tl.int32)
    for j0 in range(0, N, BLOCK_J):
        rj = j0 + tl.arange(0, BLOCK_J)
        mask_j = rj < N
        lj = tl.load(LABELS + rj, mask=mask_j, other=0).to(tl.int64)
        below = (lj[None, :] < li[:, None]) & mask_j[None, :]
        # an equal label earlier in the batch comes first: the stable order (rj < ri < N masks itself)
        tie_before = (lj[None, :] == li[:, None]) & (rj[None, :] < ri[:, None])
        less += tl.sum((below | tie_before).to(tl.int32), axis=1)
    tl.store(ORDER + less, ri.to(tl.int64), mask=mask_i)
    tl.store(SORTED_LABELS + less, li, mask=mask_i)


@triton.jit
def _slot_segments_kernel(ORDER, SORTED_LABELS, SEG, SLOT, SORTED_SLOT, N, BLOCK_P: tl.constexpr,
                          BLOCK_Q: tl.constexpr):
    rp = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_p = rp < N
    slot = tl.zeros((BLOCK_P,), dtype=tl.int32)
    boundaries = 0  # in the whole batch: the number of classes - 1
    for q0 in range(0, N, BLOCK_Q):
        rq = q0 + tl.arange(0, BLOCK_Q)
        mask_q = (rq >= 1) & (rq < N)
        here = tl.load(SORTED_LABELS + rq, mask=mask_q, other=0)
        before = tl.load(SORTED_LABELS + rq - 1, mask=mask_q, other=0)
        starts = (here != before) & mask_q
        boundaries += tl.sum(starts.to(tl.int32), axis=0)
        slot += tl.sum((starts[None, :] & (rq[None, :] <= rp[:, None])).to(tl.int32), axis=1)
    here = tl.load(SORTED_LABELS + rp, mask=mask_p, other=0)
    before = tl.load(SORTED_LABELS + rp - 1, mask=mask_p & (rp >= 1), other=0)
    first = mask_p & ((rp == 0) | (here != before))
    slot64 = slot.to(tl.int64)
    tl.store(SORTED_SLOT + rp, slot64, mask=mask_p)
    tl.store(SLOT + tl.load(ORDER + rp, mask=mask_p, other=0), slot64, mask=mask_p)
    tl.store(SEG + slot, rp.to(tl.int64), mask=first)
    # slots boundaries + 1 .. N are empty: they start and end at N (seg[0] is written by position 0)
    tl.store(SEG + rp + 1, tl.zeros((BLOCK_P,), dtype=tl.int64) + N,
             mask=mask_p & (rp + 1 > boundaries))


#: Rows per program of the slot kernels and candidates per step. At N = 256 that is 8 programs: the whole
#: job is 2 x 65536 comparisons, microseconds however it is spread (tests/kernels/test_launch_waves.py).
_SLOT_BLOCK_I = 32
_SLOT_BLOCK_J = 64


@on_device_of("labels")
def class_slots(labels):
    """labels [N] int32/int64 -> order [N], seg [N + 1], slot [N], sorted_labels [N], sorted_slot [N], all
    int64, exactly as vtreid.ops.reference.class_slots (a stable sort by label) gives them."""
    labels = labels.contiguous()  # read with unit stride (a no-op for the ops' labels)
    n = labels.shape[0]
    i64 = dict(device=labels.device, dtype=torch.int64)
    order, slot = torch.empty(n, **i64), torch.empty(n, **i64)
    sorted_labels, sorted_slot = torch.empty(n, **i64), torch.empty(n, **i64)
    seg = torch.empty(n + 1, **i64) if n else torch.zeros(1, **i64)
    if n:
        grid = (cdiv(n, _SLOT_BLOCK_I),)
        _slot_rank_kernel[grid](labels, order, sorted_labels, n, BLOCK_I=_SLOT_BLOCK_I, BLOCK_J=_SLOT_BLOCK_J)
        _slot_segments_kernel[grid](order, sorted_labels, seg, slot, sorted_slot, n, BLOCK_P=_SLOT_BLOCK_I,
                                    BLOCK_Q=_SLOT_BLOCK_J)
    return order, seg, slot, sorted_labels, sorted_slot
