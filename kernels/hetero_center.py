"""Triton kernels for vtreid.ops.modality_centers and vtreid.ops.hetero_center_loss.

The ops layer gives every sample a class slot (samples stably sorted by label; ``order[seg[k]:seg[k+1]]``
are the samples of slot k in batch order), so centres come out right for any batch order and every
sum runs in a fixed order: results are bitwise reproducible, with no atomics.

Forward: one program per (slot k, feature set s, BLOCK_D slice of the features) walks the slot's samples
(serially: each step waits on order[p] before its loads, so the features are split to fill the GPU, not the
walk), accumulating the visible and infrared sums and counts (and, for the strong constraint, a second walk
for the squared deviations: the two-pass variance), and folds its slice into five per-class scalars:
||c_vis - c_ir||^2, c_vis.c_ir, |c_vis|^2, |c_ir|^2, ||v_vis - v_ir||^2. It writes its slice of the centres
and variances, and the counts (first set, first slice). With one slice the program also writes the
class's hinge value [D + V - margin]_+; with more, _centers_combine_kernel sums each class's slice scalars
in slice order (bitwise reproducible) and writes the hinge. A class seen in one modality only is left out as
the reference's mask leaves it, by a factor 0: its hinge is 0, or NaN when its features are not finite (a
diverged model does not get a finite loss), and it passes no gradient.

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

from ._launch import GRID_LIMITS, cdiv, next_power_of_2, on_device_of
from .pairwise_distance import inverse_norm, max_keep_nan

METRIC_CODES = {"sqeuclidean": 1, "cosine": 2}


@triton.jit
def _class_hinge(diff_sq, dot, vis_sq, ir_sq, var_diff_sq, n_vis, n_ir, margin, METRIC: tl.constexpr):
    """[D + V - margin]_+ of a class from its five scalars; times 0 unless both modalities are present."""
    if METRIC == 2:
        inv = 1.0 / (max_keep_nan(tl.sqrt_rn(vis_sq), 1e-12) * max_keep_nan(tl.sqrt_rn(ir_sq), 1e-12))
        dist = 1.0 - dot * inv
    else:
        dist = diff_sq
    hinge = max_keep_nan(dist + var_diff_sq - margin, 0.0)
    return tl.where((n_vis > 0.0) & (n_ir > 0.0), hinge, hinge * 0.0)


@triton.jit
def _centers_fwd_kernel(
    X, ORDER, SEG, MOD, HINGE, CENTERS, VARS, COUNTS, STATS, PARTIALS,
    N, D, stride_xs, stride_xn, stride_xd, margin,
    METRIC: tl.constexpr, STRONG: tl.constexpr, SPLIT: tl.constexpr, BLOCK_D: tl.constexpr,
):
    k = tl.program_id(0)  # class slots on grid axis 0 (up to 2^31 - 1; axes 1 and 2 stop at 65535)
    s = tl.program_id(1)
    split = tl.program_id(2)
    start = tl.load(SEG + k)
    end = tl.load(SEG + k + 1)
    rd = split * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = rd < D
    x_set = X + s.to(tl.int64) * stride_xs
    # one walk gives the sums and the counts: each step waits on order[p], then the modality and the row
    n_vis = 0.0
    n_ir = 0.0
    sum_vis = tl.zeros((BLOCK_D,), dtype=tl.float32)
    sum_ir = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for p in range(start, end):
        j = tl.load(ORDER + p)
        is_ir = tl.load(MOD + j) != 0  # any non-zero value is infrared
        row = tl.load(x_set + j * stride_xn + rd.to(tl.int64) * stride_xd, mask=mask_d, other=0.0).to(tl.float32)
        # selected, not weighted by 0 / 1: a NaN or inf row stays in its own modality's centre (inf * 0 is NaN)
        sum_ir += tl.where(is_ir, row, 0.0)
        sum_vis += tl.where(is_ir, 0.0, row)
        n_ir += is_ir.to(tl.float32)
        n_vis += 1.0 - is_ir.to(tl.float32)
    c_vis = sum_vis * (1.0 / tl.maximum(n_vis, 1.0))
    c_ir = sum_ir * (1.0 / tl.maximum(n_ir, 1.0))
    out_base = (s.to(tl.int64) * N + k) * 2 * D
    tl.store(CENTERS + out_base + rd, c_vis, mask=mask_d)
    tl.store(CENTERS + out_base + D + rd, c_ir, mask=mask_d)
    diff = c_vis - c_ir
    diff_sq = tl.sum(diff * diff, axis=0)
    dot = tl.sum(c_vis * c_ir, axis=0)
    vis_sq = tl.sum(c_vis * c_vis, axis=0)
    ir_sq = tl.sum(c_ir * c_ir, axis=0)
    if STRONG:
        dev_vis = tl.zeros((BLOCK_D,), dtype=tl.float32)
        dev_ir = tl.zeros((BLOCK_D,), dtype=tl.float32)
        for p in range(start, end):
            j = tl.load(ORDER + p)
            is_ir = tl.load(MOD + j) != 0
            row = tl.load(x_set + j * stride_xn + rd.to(tl.int64) * stride_xd, mask=mask_d, other=0.0).to(tl.float32)
            dev = row - tl.where(is_ir, c_ir, c_vis)
            dev_ir += tl.where(is_ir, dev * dev, 0.0)
            dev_vis += tl.where(is_ir, 0.0, dev * dev)
        v_vis = dev_vis * (1.0 / tl.maximum(n_vis, 1.0))
        v_ir = dev_ir * (1.0 / tl.maximum(n_ir, 1.0))
        tl.store(VARS + out_base + rd, v_vis, mask=mask_d)
        tl.store(VARS + out_base + D + rd, v_ir, mask=mask_d)
        vd = v_vis - v_ir
        var_diff_sq = tl.sum(vd * vd, axis=0)
    else:
        zero = tl.zeros((BLOCK_D,), dtype=tl.float32)
        tl.store(VARS + out_base + rd, zero, mask=mask_d)
        tl.store(VARS + out_base + D + rd, zero, mask=mask_d)
        var_diff_sq = 0.0
    if (s == 0) & (split == 0):
        tl.store(COUNTS + 2 * k, n_vis.to(tl.int64))
        tl.store(COUNTS + 2 * k + 1, n_ir.to(tl.int64))
    if SPLIT:  # the class's scalars are summed over the slices by _centers_combine_kernel
        part = PARTIALS + ((s.to(tl.int64) * N + k) * tl.num_programs(2) + split) * 5
    else:  # one slice holds all the features: the class is done here
        part = STATS + (s.to(tl.int64) * N + k) * 5
        tl.store(HINGE + s.to(tl.int64) * N + k,
                 _class_hinge(diff_sq, dot, vis_sq, ir_sq, var_diff_sq, n_vis, n_ir, margin, METRIC))
    tl.store(part, diff_sq)
    tl.store(part + 1, dot)
    tl.store(part + 2, vis_sq)
    tl.store(part + 3, ir_sq)
    tl.store(part + 4, var_diff_sq)


@triton.jit
def _centers_combine_kernel(PARTIALS, COUNTS, HINGE, STATS, N, SPLITS, margin, METRIC: tl.constexpr,
                            BLOCK_K: tl.constexpr):
    rk = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    s = tl.program_id(1)
    mask = rk < N
    row = s.to(tl.int64) * N + rk
    part = PARTIALS + row * SPLITS * 5
    diff_sq = tl.zeros((BLOCK_K,), dtype=tl.float32)
    dot = tl.zeros((BLOCK_K,), dtype=tl.float32)
    vis_sq = tl.zeros((BLOCK_K,), dtype=tl.float32)
    ir_sq = tl.zeros((BLOCK_K,), dtype=tl.float32)
    var_diff_sq = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for t in range(0, SPLITS):  # in slice order: the sums do not depend on the scheduling
        diff_sq += tl.load(part + t * 5, mask=mask, other=0.0)
        dot += tl.load(part + t * 5 + 1, mask=mask, other=0.0)
        vis_sq += tl.load(part + t * 5 + 2, mask=mask, other=0.0)
        ir_sq += tl.load(part + t * 5 + 3, mask=mask, other=0.0)
        var_diff_sq += tl.load(part + t * 5 + 4, mask=mask, other=0.0)
    n_vis = tl.load(COUNTS + 2 * rk, mask=mask, other=0).to(tl.float32)
    n_ir = tl.load(COUNTS + 2 * rk + 1, mask=mask, other=0).to(tl.float32)
    tl.store(HINGE + row, _class_hinge(diff_sq, dot, vis_sq, ir_sq, var_diff_sq, n_vis, n_ir, margin, METRIC),
             mask=mask)
    stats = STATS + row * 5
    tl.store(stats, diff_sq, mask=mask)
    tl.store(stats + 1, dot, mask=mask)
    tl.store(stats + 2, vis_sq, mask=mask)
    tl.store(stats + 3, ir_sq, mask=mask)
    tl.store(stats + 4, var_diff_sq, mask=mask)


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
    # An inactive hinge (or an unused one, passed as 0) adds no term at all: not 0 * a NaN centre.
    live = h != 0.0
    passes = live & (tl.load(COUNTS + 2 * k + 1 - m) > 0)
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
    grad = tl.where(live, g * d_center, 0.0)
    if STRONG:
        v_m = tl.load(VARS + base + m * D + rd, mask=mask_d, other=0.0)
        v_o = tl.load(VARS + base + (1 - m) * D + rd, mask=mask_d, other=0.0)
        x = tl.load(X + s.to(tl.int64) * stride_xs + j.to(tl.int64) * stride_xn + rd.to(tl.int64) * stride_xd, mask=mask_d,
                    other=0.0).to(tl.float32)
        grad += tl.where(live, g * 4.0 * (v_m - v_o) * (x - c_m), 0.0)
    if HAS_G_CENTERS:
        grad += tl.load(G_CENTERS + s.to(tl.int64) * stride_gs + k * stride_gk + m * stride_gm + rd, mask=mask_d,
                        other=0.0).to(tl.float32)
    out = GRAD_X + (s.to(tl.int64) * N + j) * D + rd
    tl.store(out, (grad * inv_n).to(GRAD_X.dtype.element_ty), mask=mask_d)


def _block_d(d: int) -> int:
    return min(256, next_power_of_2(d))


#: Features per forward program. A class's walk over its samples is serial (each step waits on order[p]
#: before its loads), so the forward splits the features instead: at the HC preset's shape (6 stripes x 64
#: samples flattened, 24 classes, E = 512) 64-feature slices give 24 x 8 = 192 busy programs, where one
#: program per class gave 24 on a 132-SM GPU (tests/kernels/test_launch_waves.py counts the busy ones).
FWD_BLOCK_D = 64
FWD_WARPS = 2  # 64 threads: one feature of a slice each
_centers_fwd_kernel.launch_options = {"num_warps": FWD_WARPS, "num_stages": 3}  # for scripts/compile_triton.py
#: Classes per program of _centers_combine_kernel (it sums each class's slices in order: O(S N splits)).
COMBINE_BLOCK_K = 128


def forward_splits(d: int) -> tuple[int, int]:
    """(BLOCK_D, slices) of the forward at d features: FWD_BLOCK_D-wide slices (one narrower slice, at least
    16 wide, for d < FWD_BLOCK_D: sm_80's ptxas spills the strong cosine variant at 1), widened past
    FWD_BLOCK_D only where more slices than grid axis 2 allows would be needed."""
    block = max(min(FWD_BLOCK_D, max(16, next_power_of_2(d))), next_power_of_2(cdiv(d, GRID_LIMITS[2])))
    return block, max(1, cdiv(d, block))


@on_device_of("x")
def forward(x, order, seg, modality, metric: str, strong: bool, margin: float):
    """x [S, N, D] -> (hinge [S, N], centers [S, N, 2, D], variances (zeros unless strong), counts [N, 2] int64,
    stats [S, N, 5]); float32 except counts. Slot k's hinge is [D + V - margin]_+ when both modalities are
    present, else that times 0 (0, or NaN for non-finite features); stats: ||c_vis - c_ir||^2, c_vis.c_ir,
    |c_vis|^2, |c_ir|^2, ||v_vis - v_ir||^2. One program per (slot, set, feature slice), then, with more than
    one slice, _centers_combine_kernel sums each class's slices in slice order and writes hinge and stats."""
    s, n, d = x.shape
    # The kernels write every slot, empty ones included, so nothing is filled first; counts are written by
    # the first feature set's first-slice programs, so they need zeros only when there is no set.
    hinge = torch.empty((s, n), device=x.device, dtype=torch.float32)
    centers = torch.empty((s, n, 2, d), device=x.device, dtype=torch.float32)
    variances = torch.empty_like(centers)
    counts = (torch.empty if s else torch.zeros)((n, 2), device=x.device, dtype=torch.int64)
    stats = torch.empty((s, n, 5), device=x.device, dtype=torch.float32)
    if s and n:
        block_d, splits = forward_splits(d)
        partials = torch.empty((s, n, splits, 5), device=x.device, dtype=torch.float32) if splits > 1 else stats
        code = METRIC_CODES[metric]
        _centers_fwd_kernel[(n, s, splits)](x, order, seg, modality, hinge, centers, variances, counts, stats,
                                            partials, n, d, x.stride(0), x.stride(1), x.stride(2), float(margin),
                                            METRIC=code, STRONG=strong, SPLIT=splits > 1, BLOCK_D=block_d,
                                            num_warps=FWD_WARPS)
        if splits > 1:
            _centers_combine_kernel[(cdiv(n, COMBINE_BLOCK_K), s)](partials, counts, hinge, stats, n, splits,
                                                                   float(margin), METRIC=code,
                                                                   BLOCK_K=COMBINE_BLOCK_K)
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
