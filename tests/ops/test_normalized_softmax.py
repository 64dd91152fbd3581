"""vtreid.ops.normalized_logits / normalized_cross_entropy: every backend against vtreid.ops.reference."""
import itertools

import pytest
import torch

import vtreid.ops as ops
from vtreid.ops.normalized_softmax import FUSED

from support import DEVICES, FUSED_BACKENDS, assert_matches, dtypes_for, require_backend

SETTINGS = list(itertools.product((0.0, 0.1), ("mean", "sum", "none")))


def ce_and_grads(backend, x, w, target, upstream=None, **kw):
    xl = x.detach().clone().requires_grad_(True)
    wl = w.detach().clone().requires_grad_(True)
    loss = ops.normalized_cross_entropy(xl, wl, target, backend=backend, **kw)
    if upstream is None:
        upstream = torch.rand_like(loss) + 0.5
    gx, gw = torch.autograd.grad((loss * upstream).sum(), (xl, wl))
    return loss.detach(), gx, gw, upstream


def grad_scales(x, w):
    """Gradients of a zero row are (1/eps)-sized sums; compare each row relative to its own terms."""
    sx = 1.0 / x.double().norm(dim=1).clamp_min(1e-12)
    sw = 1.0 / w.double().norm(dim=1).clamp_min(1e-12)
    return (sx * 10)[:, None], (sw * 10)[:, None]


def check(backend, device, dtype, x, w, target, **kw):
    require_backend(backend, device, dtype)
    ref = ce_and_grads("reference", x, w, target, **kw)
    got = ce_and_grads(backend, x, w, target, ref[3], **kw)
    sx, sw = grad_scales(x, w)
    assert_matches(got[0], ref[0], dtype, f"{backend} loss {kw}")
    assert_matches(got[1], ref[1], dtype, f"{backend} grad x {kw}", sx)
    assert_matches(got[2], ref[2], dtype, f"{backend} grad weight {kw}", sw)
    assert got[0].isfinite().all() and got[1].isfinite().all() and got[2].isfinite().all()


def problem(n, c, d, device, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g).to(device, dtype)
    w = torch.randn(c, d, generator=g).to(device, dtype)
    target = torch.randint(0, c, (n,), generator=g).to(device)
    return x, w, target


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("smoothing,reduction", SETTINGS)
@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 3, 7), (47, 11, 129), (130, 395, 33)],
                         ids=lambda s: "x".join(map(str, s)))
def test_matches_reference(device, backend, smoothing, reduction, shape):
    x, w, target = problem(*shape, device, seed=sum(shape))
    check(backend, device, torch.float32, x, w, target, scale=14.0, label_smoothing=smoothing, reduction=reduction)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_many_classes(device, backend):
    """More classes than one native chunk (8192) and than many Triton class tiles, up to C = 100000."""
    x, w, target = problem(3, 9000, 5, device, seed=1)
    check(backend, device, torch.float32, x, w, target, scale=14.0, label_smoothing=0.1, reduction="sum")
    x, w, target = problem(2, 100000, 4, device, seed=2)
    check(backend, device, torch.float32, x, w, target, scale=14.0, label_smoothing=0.1, reduction="mean")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_zero_rows_and_scales(device, backend):
    x, w, target = problem(20, 17, 9, device, seed=2)
    x[3] = 0.0
    w[5] = 0.0
    target[0] = 5
    for scale in (1.0, 5.0, 14.0, 64.0):
        check(backend, device, torch.float32, x, w, target, scale=scale, label_smoothing=0.1, reduction="sum")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_every_dtype(device, backend):
    for dtype in dtypes_for(device, backend):
        x, w, target = problem(33, 206, 64, device, dtype, seed=3)
        check(backend, device, dtype, x, w, target, scale=14.0, label_smoothing=0.1, reduction="mean")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_non_contiguous(device, backend):
    x, w, target = problem(40, 30, 64, device, seed=4)
    check(backend, device, torch.float32, x[::2, ::2], w.t().contiguous().t()[:, :32], target[::2], scale=5.0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_deterministic(device, backend):
    require_backend(backend, device)
    x, w, target = problem(50, 300, 40, device, seed=5)
    first = ce_and_grads(backend, x, w, target, torch.ones(()), scale=14.0)
    second = ce_and_grads(backend, x, w, target, torch.ones(()), scale=14.0)
    assert all(torch.equal(a, b) for a, b in zip(first[:3], second[:3]))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_normalized_logits(device, backend):
    require_backend(backend, device)
    x, w, _ = problem(37, 23, 65, device, seed=6)
    x[2] = 0.0
    for scale in (1.0, 14.0):
        xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
        ref = ops.normalized_logits(xr, wr, scale=scale, backend="reference")
        xl, wl = x.clone().requires_grad_(), w.clone().requires_grad_()
        got = ops.normalized_logits(xl, wl, scale=scale, backend=backend)
        assert_matches(got, ref, torch.float32, "logits")
        upstream = torch.randn_like(ref)
        (ref * upstream).sum().backward()
        (got * upstream).sum().backward()
        sx, sw = grad_scales(x, w)
        assert_matches(xl.grad, xr.grad, torch.float32, "grad x", sx * scale)
        assert_matches(wl.grad, wr.grad, torch.float32, "grad weight", sw * scale)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_half_logits_round_once(backend):
    """The fused logits were 1 - d with d a float16 distance, rounded near 1 to 2^-11 first: a cosine of
    1e-4 came out as 0. They must keep the reference's relative precision."""
    require_backend(backend, "cpu", torch.float16)
    cos = torch.tensor([1e-4, 0.02, -3e-3, 0.5, -0.999])
    x = torch.tensor([[1.0, 0.0]])
    w = torch.stack([cos, (1 - cos.square()).sqrt()], dim=1)
    for scale in (1.0, 14.0):
        ref = ops.normalized_logits(x.half(), w.half(), scale=scale, backend="reference")
        got = ops.normalized_logits(x.half(), w.half(), scale=scale, backend=backend)
        assert got.dtype == torch.float16
        torch.testing.assert_close(got.float(), ref.float(), rtol=2 ** -10, atol=1e-7)


@pytest.mark.parametrize("backend", ("reference", "native"))
@pytest.mark.parametrize("smoothing,reduction", SETTINGS[::2])
def test_gradcheck_float64(backend, smoothing, reduction):
    require_backend(backend, "cpu", torch.float64)
    x, w, target = problem(5, 7, 4, "cpu", torch.float64, seed=7)
    x.requires_grad_()
    w.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: ops.normalized_cross_entropy(
        a, b, target, scale=5.0, label_smoothing=smoothing, reduction=reduction, backend=backend), (x, w))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_opcheck(device, backend):
    require_backend(backend, device)
    op = FUSED[backend]
    x, w, target = problem(9, 13, 17, device, seed=8)
    for smoothing in (0.0, 0.2):
        args = (x.requires_grad_(), w.requires_grad_(), target, 14.0, smoothing)
        torch.library.opcheck(op.forward, args)
        with torch.no_grad():
            out = op.forward(*args)
        torch.library.opcheck(op.backward, (torch.rand_like(out[0]), x.detach(), w.detach(), target, *out[1:], 14.0,
                                            smoothing))



@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_saved_dots_backward_equals_recomputed(device, backend):
    """At C <= SAVED_DOTS_MAX_CLASSES the forward keeps x.W^T and the backward reuses it; feeding the
    backward an empty dots makes it recompute. Both must give the same gradients."""
    require_backend(backend, device)
    op = FUSED[backend]
    x, w, target = problem(11, 23, 40, device, seed=9)
    with torch.no_grad():
        out = op.forward(x, w, target, 14.0, 0.1)
    dots = out[6]
    assert dots.shape == (11, 23)
    torch.testing.assert_close(dots, (x @ w.T).to(dots.dtype), rtol=1e-5, atol=1e-4)
    grad = torch.rand_like(out[0])
    saved = op.backward(grad, x, w, target, *out[1:], 14.0, 0.1)
    recomputed = op.backward(grad, x, w, target, *out[1:6], dots.new_empty(0), 14.0, 0.1)
    for a, b in zip(saved, recomputed):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)



@pytest.mark.parametrize("classes", (5, 37))
def test_triton_backward_in_row_chunks(monkeypatch, classes):
    """The Triton backward caps its N x C buffer by processing rows in chunks (and then sums grad_w in
    float32); shrink the cap so a small problem takes several chunks, with the saved x.W^T sliced."""
    require_backend("triton", "cpu")
    from vtreid.kernels import normalized_softmax as kernel
    monkeypatch.setattr(kernel, "MAX_CHUNK_ELEMENTS", 4 * classes)
    x, w, target = problem(13, classes, 9, "cpu", seed=11)
    check("triton", "cpu", torch.float32, x, w, target, scale=14.0, label_smoothing=0.1, reduction="none")

@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_dots_are_not_kept_above_the_class_limit(backend):
    from vtreid.ops.normalized_softmax import SAVED_DOTS_MAX_CLASSES
    require_backend(backend, "cpu")
    x, w, target = problem(3, SAVED_DOTS_MAX_CLASSES + 1, 8, "cpu", seed=10)
    with torch.no_grad():
        out = FUSED[backend].forward(x, w, target, 14.0, 0.0)
    assert out[6].shape == (0,)

# ATen ops that launch no kernel on a GPU: allocations, views and no-op conversions.
_NO_LAUNCH = {"aten::empty", "aten::empty_strided", "aten::empty_like", "aten::as_strided", "aten::to", "aten::view",
              "aten::t", "aten::transpose", "aten::narrow", "aten::slice", "aten::expand", "aten::unsqueeze",
              "aten::alias", "aten::detach", "aten::contiguous", "aten::select", "aten::reshape", "aten::result_type"}


def _aten_launches(fn):
    """The ATen ops fn's op runs below its own entry, leaves of the profiler's tree, GEMMs counted whole."""
    from collections import Counter

    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    ops_run = Counter()

    def walk(event):
        for child in event.cpu_children:
            if child.name == "aten::mm" or not child.cpu_children:
                ops_run[child.name] += child.name not in _NO_LAUNCH
            else:
                walk(child)
    for event in prof.events():
        if event.name.startswith("vtreid::normalized_ce_"):
            walk(event)
    return +ops_run


def test_native_runs_its_gemms_and_nothing_elementwise():
    """The native driver's row passes (norms, unit rows, the final grad_x) are epilogue launches: at the
    training shape in float32 the forward runs one ATen GEMM and the backward two, no elementwise chain
    (before, 10 ATen launches in the forward and 20 in the backward). On CUDA the same driver runs."""
    require_backend("native", "cpu")
    op = FUSED["native"]
    x, w, target = problem(256, 395, 64, "cpu", seed=12)
    with torch.no_grad():
        out = op.forward(x, w, target, 14.0, 0.1)
        assert _aten_launches(lambda: op.forward(x, w, target, 14.0, 0.1)) == {"aten::mm": 1}
        grad = torch.rand_like(out[0])
        assert _aten_launches(lambda: op.backward(grad, x, w, target, *out[1:], 14.0, 0.1)) == {"aten::mm": 2}


@pytest.mark.parametrize("dtype, gemms", [(torch.float32, {"aten::mm": 2}), (torch.float16, {})])
def test_triton_backward_runs_its_gemms_and_nothing_elementwise(dtype, gemms):
    """The Triton backward's coefficients and scalings are in its kernels' epilogues: no ATen launch but
    the two cuBLAS GEMMs (float32, bfloat16; float16's are Triton kernels). Before, ~45 ATen calls of
    eager glue (norm inverses, unit rows, coefficients, the final scalings) ran around them. The kernels
    are stubbed (bench.overhead): the interpreter's own tensor copies are not launches on a GPU."""
    from bench.overhead import stub_kernels
    require_backend("triton", "cpu", dtype)
    op = FUSED["triton"]
    x, w, target = problem(40, 37, 16, "cpu", dtype, seed=13)
    with torch.no_grad():
        out = op.forward(x, w, target, 14.0, 0.1)
        grad = torch.rand_like(out[0])
        with stub_kernels():
            assert _aten_launches(lambda: op.backward(grad, x, w, target, *out[1:], 14.0, 0.1)) == gemms


def test_bad_inputs_name_the_argument():
    x, w, target = problem(6, 4, 5, "cpu")
    with pytest.raises(ValueError, match=r"target must hold class indices in \[0, 4\)"):
        ops.normalized_cross_entropy(x, w, target + 4, scale=14.0)
    with pytest.raises(ValueError, match="target must hold"):
        ops.normalized_cross_entropy(x, w, target - 10, scale=14.0)
    with pytest.raises(TypeError, match="target must be int32 or int64"):
        ops.normalized_cross_entropy(x, w, target.float(), scale=14.0)
    with pytest.raises(ValueError, match="target must be a 1-D tensor of length 6"):
        ops.normalized_cross_entropy(x, w, target[:3], scale=14.0)
    with pytest.raises(ValueError, match="scale must be a finite positive number"):
        ops.normalized_cross_entropy(x, w, target, scale=0.0)
    for bad in (float("inf"), float("nan")):   # every loss inf or NaN otherwise
        with pytest.raises(ValueError, match="scale must be a finite positive number"):
            ops.normalized_cross_entropy(x, w, target, scale=bad)
    with pytest.raises(TypeError, match="scale must be a float"):
        ops.normalized_cross_entropy(x, w, target, scale="14")
    # a finite scale whose logits overflow float32 gave NaN on every backend, the reference too
    with pytest.raises(ValueError, match=r"scale must be at most 1.7e\+38 \(the logits in torch.float32 overflow"):
        ops.normalized_cross_entropy(x, w, target, scale=1e39)
    assert ops.normalized_cross_entropy(x, w, target, scale=1e38).isfinite()
    assert ops.normalized_cross_entropy(x.double(), w.double(), target, scale=1e39).isfinite()
    with pytest.raises(ValueError, match=r"scale must be at most 3.28e\+04 \(the logits in torch.float16"):
        ops.normalized_logits(x.half(), w.half(), scale=1e5)
    assert ops.normalized_logits(x.half(), w.half(), scale=3e4).isfinite().all()
    with pytest.raises(ValueError, match="label_smoothing"):
        ops.normalized_cross_entropy(x, w, target, scale=14.0, label_smoothing=1.5)
    import numpy as np   # NumPy's floats are numbers: np.float32 was refused, np.float64 taken
    assert torch.equal(ops.normalized_cross_entropy(x, w, target, scale=14.0, label_smoothing=np.float32(0.25)),
                       ops.normalized_cross_entropy(x, w, target, scale=14.0, label_smoothing=0.25))
    with pytest.raises(ValueError, match="reduction"):
        ops.normalized_cross_entropy(x, w, target, scale=14.0, reduction="avg")
    with pytest.raises(ValueError, match="x has feature dimension 5 but weight has 6"):
        ops.normalized_cross_entropy(x, torch.randn(4, 6), target, scale=14.0)
    with pytest.raises(TypeError, match="weight has dtype torch.float64"):
        ops.normalized_logits(x, w.double())
    with pytest.raises(ValueError, match="weight is on meta"):
        ops.normalized_logits(x, w.to("meta"))
    with pytest.raises(ValueError, match="at least one class"):
        ops.normalized_cross_entropy(x, torch.randn(0, 5), target, scale=14.0)
