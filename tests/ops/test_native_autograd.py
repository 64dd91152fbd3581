"""The native forwards' autograd is registered in C++ (csrc/autograd.cpp); the Triton forwards' in Python
(vtreid/ops/_registry.py). Both must save the same tensors and give the same gradients, including for the
outputs a step may leave unused."""
import importlib

import pytest
import torch

import vtreid.ops as ops
from support import require_backend

# the modules, not the functions of the same names that vtreid.ops exports
hm, hc, ns, pd = (importlib.import_module(f"vtreid.ops.{m}")
                  for m in ("hard_mining", "hetero_center", "normalized_softmax", "pairwise_distance"))

# the outputs with a gradient; the others (indices, norms, saved by-products) are non-differentiable
DIFFERENTIABLE = {"pairwise_distance": {0}, "hard_mining": {0, 2}, "hetero_center": {0, 1}, "normalized_ce": {0}}


@pytest.mark.parametrize("family", DIFFERENTIABLE)
def test_native_forward_has_its_autograd_in_cpp(family):
    """One autograd kernel per native op, the C++ one: a Python formula registered on top would replace it
    (and its fixed cost per call, bench/overhead.py, would come back)."""
    require_backend("native", "cpu")
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"vtreid::{family}_fwd", "Autograd")
    x = torch.randn(6, 4, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    if family == "pairwise_distance":
        out = pd.FUSED["native"].forward(x, x, "euclidean")
    elif family == "hard_mining":
        out = hm.FUSED["native"].forward(x, labels, x, labels, None, None, "euclidean", "any", "any", True)
    elif family == "hetero_center":
        _, out = hc._fused("native", x, labels, torch.tensor([0, 1] * 3), "sqeuclidean", False, 0.0)
    else:
        out = ns.FUSED["native"].forward(x, torch.randn(3, 4), labels, 5.0, 0.0)
    assert type(out[0].grad_fn).__name__ == "CppFunction", out[0].grad_fn
    assert [t.requires_grad for t in out] == [i in DIFFERENTIABLE[family] for i in range(len(out))]


def _hetero_center_grads(backend, x, labels, modality, upstream_hinge, upstream_centers):
    xl = x.clone().requires_grad_()
    _, (hinge, centers, *_) = hc._fused(backend, xl, labels, modality, "cosine", True, 0.1)
    terms = []
    if upstream_hinge is not None:
        terms.append((hinge * upstream_hinge).sum())
    if upstream_centers is not None:
        terms.append((centers * upstream_centers).sum())
    (grad,) = torch.autograd.grad(sum(terms), xl)
    return grad


@pytest.mark.parametrize("used", ("hinge", "centers", "both"))
def test_hetero_center_gradient_of_either_or_both_outputs_agrees_across_backends(used):
    """The C++ formula leaves an unused output's gradient undefined (no zero [S, N, 2, D] tensor to read),
    as the Python one does; with both used, both upstream gradients reach the backward op."""
    require_backend("native", "cpu")
    require_backend("triton", "cpu")
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 12, 8, generator=g, dtype=torch.float32)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 4, 5])
    modality = torch.tensor([0, 1] * 6)
    up_hinge = torch.randn(2, 12, generator=g, dtype=torch.float32) if used != "centers" else None
    up_centers = torch.randn(2, 12, 2, 8, generator=g, dtype=torch.float32) if used != "hinge" else None
    native = _hetero_center_grads("native", x, labels, modality, up_hinge, up_centers)
    triton = _hetero_center_grads("triton", x, labels, modality, up_hinge, up_centers)
    assert native.abs().sum() > 0
    torch.testing.assert_close(native, triton, rtol=1e-4, atol=1e-5)
    if used == "both":  # linear in the upstream gradients: the sum of the two one-output gradients
        parts = [_hetero_center_grads("native", x, labels, modality, up_hinge, None),
                 _hetero_center_grads("native", x, labels, modality, None, up_centers)]
        torch.testing.assert_close(native, parts[0] + parts[1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("side", ["pos", "neg"])
def test_mining_gradient_of_one_side_only(side):
    """A loss that uses one side's distances only: the other side's gradient is undefined (no outputs'
    gradients are materialized) and the backward ops get a zero of stride 0 for it, on both backends."""
    require_backend("native", "cpu")
    require_backend("triton", "cpu")
    g = torch.Generator().manual_seed(7)
    x = torch.randn(10, 6, generator=g, dtype=torch.float32)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
    slot = 0 if side == "pos" else 2
    grads = []
    for backend in ("native", "triton"):
        xl = x.clone().requires_grad_()
        dist = hm.FUSED[backend].forward(xl, labels, xl, labels, None, None, "euclidean", "any", "any", True)[slot]
        grads.append(torch.autograd.grad(dist.sum(), xl)[0])
    xl = x.clone().requires_grad_()
    want = torch.autograd.grad(hm.reference.hard_mining(xl, labels)[slot].sum(), xl)[0]
    assert want.abs().sum() > 0
    for got in grads:
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", ["native", "triton"])
def test_backward_fills_no_zero_gradient_for_unused_outputs(backend, monkeypatch):
    """The forwards return saved by-products (norms, indices, statistics) beside the differentiable outputs.
    Materialized, their gradients were zero-filled tensors: 2 (pairwise), 7 (mining) and 6 (normalized CE)
    allocations and fill launches in every backward, a fixed cost per call that the ops paid on a GPU.
    (Triton through its registered ops, whose backward op is one opaque call here; the eager path shares
    their setup_context.)"""
    require_backend(backend, "cpu", torch.float32)
    from support import AtenOps
    for module in (hm, hc, ns, pd):
        monkeypatch.setitem(module.FUSED, backend, module.FUSED[backend]._replace(call=module.FUSED[backend].forward))

    class Outside:  # AtenOps counts the ops run while no Triton launch is in progress
        inside = 0
    x, w = torch.randn(6, 4, requires_grad=True), torch.randn(3, 4, requires_grad=True)
    for family, loss in _each_op(backend, x, w).items():
        with AtenOps(Outside()) as aten:
            torch.autograd.grad(loss, [x, w], allow_unused=True)
        fills = [op for op in aten.ops if op in {"zeros", "zeros_like", "fill_", "zero_", "new_zeros", "full"}]
        assert not fills, f"{family}: {aten.ops}"


def _each_op(backend, x, w):
    """One scalar per op family of ``x`` (and ``w``, the class weights), on ``backend``."""
    import vtreid.ops as ops
    labels, modality = torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([0, 1] * 3)
    mined = ops.hard_mining(x, labels, backend=backend)
    return {"pairwise_distance": ops.pairwise_distance(x, backend=backend).square().sum(),
            "hard_mining": (mined.pos_dist - mined.neg_dist).square().sum(),
            "hetero_center": ops.hetero_center_loss(x, labels, modality, backend=backend),
            "normalized_ce": ops.normalized_cross_entropy(x, w, labels, scale=5.0, backend=backend)}


@pytest.mark.parametrize("backend", ["native", "triton"])
def test_double_backward_is_an_error_naming_the_op(backend):
    """The backward ops have no derivative. The native ones fell through PyTorch's deprecated path, which
    took their outputs for constants: second derivatives came out silently wrong (1760 for 1167)."""
    require_backend(backend, "cpu", torch.float32)
    x, w = torch.randn(6, 4, requires_grad=True), torch.randn(3, 4, requires_grad=True)
    for family, loss in _each_op(backend, x, w).items():
        (grad,) = torch.autograd.grad(loss, x, create_graph=True)
        with pytest.raises(RuntimeError, match=f"{family}.*bwd|{family}_bwd"):
            torch.autograd.grad(grad.square().sum(), x)


@pytest.mark.parametrize("backend", ["native", "triton"])
def test_backward_inside_autocast_runs_at_the_forwards_precision(backend):
    """backward() called inside torch.autocast: the native NCE backward failed (its weight gradient has no
    bfloat16 kernel) and the others ran their matrix products in bfloat16. Float32 features keep float32
    gradients (the ops under autocast take one dtype; the distances are float32 ops here)."""
    require_backend(backend, "cpu", torch.float32)
    torch.manual_seed(0)
    x, w = torch.randn(6, 40), torch.randn(3, 40)
    grads = {}
    for name, autocast in (("plain", False), ("autocast", True)):
        xs, ws = x.clone().requires_grad_(), w.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            losses = _each_op(backend, xs, ws)
            for family, loss in losses.items():
                grads[name, family] = torch.autograd.grad(loss, xs)[0]
    for family in ("pairwise_distance", "hard_mining", "hetero_center"):
        torch.testing.assert_close(grads["autocast", family], grads["plain", family], rtol=1e-5, atol=1e-5,
                                   msg=lambda s: f"{family}: {s}")
    assert grads["autocast", "normalized_ce"].isfinite().all()   # bfloat16 inputs there (as F.linear): runs


def test_triton_ops_take_the_eager_path_outside_compile_and_the_registered_op_inside():
    """Outside torch.compile the public Triton ops run a torch.autograd.Function around the launchers
    (the custom op's Python dispatch cost as much again as the formula, bench/overhead.py); torch.compile
    still traces the registered custom ops, with their fake kernels."""
    require_backend("triton", "cpu", torch.float32)
    x, w = torch.randn(6, 4, requires_grad=True), torch.randn(3, 4, requires_grad=True)
    for family, loss in _each_op("triton", x, w).items():
        names = set()
        stack = [loss.grad_fn]
        while stack:
            fn = stack.pop()
            if fn is not None:
                names.add(fn.name())
                stack.extend(next_fn for next_fn, _ in fn.next_functions)
        assert f"{family}_tritonBackward" in names, (family, names)
    graphs = []

    def record(gm, example_inputs):
        graphs.append(str(gm.graph))
        return gm.forward
    torch._dynamo.reset()
    compiled = torch.compile(lambda a, b: sum(_each_op("triton", a, b).values()), backend=record)
    compiled(x, w).backward()
    traced = "\n".join(graphs)
    for family in DIFFERENTIABLE:
        assert f"vtreid.{family}_triton_fwd" in traced, family
    assert "vtreid.class_slots_triton" in traced  # the hetero-center slots: the registered op too
    assert "tritonBackward" not in traced


@pytest.mark.parametrize("backend", ["reference", "native"])
def test_autocast_reads_the_inputs_however_they_are_passed(backend):
    """The device came from the first positional argument: a call by keyword ran without the autocast
    handling (mixed dtypes then failed the dtype check). Float64 is left alone by lower=True ops, as
    autocast leaves it; an integer input reaches the op's own check, which names it."""
    require_backend(backend, "cpu", torch.float32)
    x, w, t = torch.randn(6, 8), torch.randn(5, 8), torch.tensor([0, 1, 2, 3, 4, 0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        positional = ops.normalized_logits(x, w, backend=backend)
        keyword = ops.normalized_logits(x=x, weight=w, backend=backend)
        assert positional.dtype == keyword.dtype == torch.bfloat16
        assert torch.equal(positional, keyword)
        ce = ops.normalized_cross_entropy(x=x.bfloat16(), weight=w, target=t, scale=5.0, backend=backend)
        assert ce.isfinite()
        d = ops.pairwise_distance(x=x.bfloat16(), y=w, backend=backend)   # widest: float32, as cdist promotes
        assert d.dtype == torch.float32
        mined = ops.hard_mining(anchors=x.bfloat16(), anchor_labels=t, candidates=w, candidate_labels=t[:5],
                                backend=backend)
        assert mined.pos_dist.dtype == torch.float32
        assert ops.normalized_logits(x.double(), w.double(), backend="reference").dtype == torch.float64
        with pytest.raises(TypeError, match="x must be float32, float16, bfloat16 or float64, got torch.int64"):
            ops.pairwise_distance(x.long(), backend=backend)


def test_a_fallback_warning_points_at_the_callers_line():
    """The warning's stacklevel did not count the autocast wrapper: it named vtreid/ops/_autocast.py."""
    import warnings
    from vtreid.ops import _backend
    _backend._warned.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ops.pairwise_distance(torch.randn(3, 4).double(), backend="triton")   # float64: not on Triton
    (warning,) = [w for w in caught if "unavailable" in str(w.message)]
    assert warning.filename == __file__, warning.filename
