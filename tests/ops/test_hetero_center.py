"""vtreid.ops.modality_centers / hetero_center_loss: every backend against vtreid.ops.reference."""
import itertools

import pytest
import torch

import vtreid.ops as ops
from vtreid.ops import hetero_center, reference
from vtreid.ops.hetero_center import FUSED, ClassSlots, class_slots

from support import (DEVICES, FUSED_BACKENDS, AtenOps, Launches, assert_matches, awkward_labels, dtypes_for,
                     raw_modality, require_backend)

OPTIONS = [dict(metric=m, strong=s, reduction=r, margin=a)
           for m, s, r, a in itertools.product(("sqeuclidean", "cosine"), (False, True), ("sum", "mean"), (0.0, 0.7))]


def batch(sets, ids, per_cell, d, device, dtype=torch.float32, seed=0, shuffle=True):
    """ids identities x 2 modalities x per_cell samples, shuffled; x is [N, D] when sets is None."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(ids).repeat_interleave(2 * per_cell)
    modality = torch.tensor([0] * per_cell + [1] * per_cell).repeat(ids)
    shape = (len(labels), d) if sets is None else (sets, len(labels), d)
    x = torch.randn(shape, generator=g)
    if shuffle:
        perm = torch.randperm(len(labels), generator=g)
        labels, modality, x = labels[perm], modality[perm], x[..., perm, :]
    return x.to(device, dtype), (labels * 7 + 3).to(device), modality.to(device)


def loss_and_grad(backend, x, labels, modality, upstream=None, **options):
    xl = x.detach().clone().requires_grad_(True)
    loss = ops.hetero_center_loss(xl, labels, modality, backend=backend, **options)
    if upstream is None:
        upstream = torch.rand_like(loss) + 0.5
    (grad,) = torch.autograd.grad((loss * upstream).sum(), xl)
    return loss.detach(), grad, upstream


def check(backend, device, dtype, x, labels, modality, **options):
    require_backend(backend, device, dtype)
    ref_loss, ref_grad, upstream = loss_and_grad("reference", x, labels, modality, **options)
    loss, grad, _ = loss_and_grad(backend, x, labels, modality, upstream, **options)
    assert_matches(loss, ref_loss, dtype, f"{backend} loss {options}")
    assert_matches(grad, ref_grad, dtype, f"{backend} grad {options}")
    assert loss.isfinite().all() and grad.isfinite().all()
    return loss, grad


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(str(v) for v in o.values()))
def test_matches_reference_single_and_six_sets(device, backend, options):
    x, labels, modality = batch(None, 4, 8, 65, device, seed=1)          # the paper's 4 x (8 + 8)
    check(backend, device, torch.float32, x, labels, modality, **options)
    x6, labels, modality = batch(6, 3, 3, 33, device, seed=2)            # TSLFN: 6 stripes at once
    check(backend, device, torch.float32, x6, labels, modality, **options)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", ("reference",) + FUSED_BACKENDS)
def test_batch_order_does_not_matter(device, backend):
    require_backend(backend, device)
    x, labels, modality = batch(2, 5, 4, 20, device, seed=3, shuffle=False)
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(9)).to(device)
    for options in OPTIONS[::3]:
        loss, grad, up = loss_and_grad(backend, x, labels, modality, **options)
        loss_p, grad_p, _ = loss_and_grad(backend, x[:, perm], labels[perm], modality[perm], up, **options)
        torch.testing.assert_close(loss_p, loss, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(grad_p, grad[:, perm], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_every_dtype(device, backend):
    for dtype in dtypes_for(device, backend):
        x, labels, modality = batch(6, 4, 4, 48, device, dtype, seed=4)
        for options in (OPTIONS[0], OPTIONS[-1]):
            check(backend, device, dtype, x, labels, modality, **options)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", ("reference",) + FUSED_BACKENDS)
def test_awkward_batches(device, backend):
    require_backend(backend, device)
    x = torch.randn(3, 8, 5, device=device)
    one_modality = torch.zeros(8, dtype=torch.long, device=device)
    for labels, modality in (
        (torch.zeros(8, dtype=torch.long, device=device), one_modality),           # one identity, one modality
        (torch.arange(8, device=device), torch.arange(8, device=device) % 2),      # singletons: never both
        (torch.tensor([4, 4, 2, 2, 9, 9, 9, 9], device=device), one_modality),     # nobody has infrared
    ):
        for options in OPTIONS[::3]:
            xl = x.clone().requires_grad_()
            loss = ops.hetero_center_loss(xl, labels, modality, backend=backend, **options)
            assert (loss == 0).all()
            loss.sum().backward()
            assert (xl.grad == 0).all()
    # a class lacking infrared is left out: the loss equals that of the batch without it
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 2, 5], device=device)
    modality = torch.tensor([0, 1, 1, 0, 0, 0, 1, 0], device=device)
    keep = labels != 5
    for options in OPTIONS:
        if options["reduction"] == "mean" or backend == "reference":
            full = ops.hetero_center_loss(x, labels, modality, backend=backend, **options)
            torch.testing.assert_close(full, ops.hetero_center_loss(x[:, keep], labels[keep], modality[keep],
                                                                    backend=backend, **options))
    if backend != "reference":
        for options in OPTIONS[::2]:
            check(backend, device, torch.float32, x, labels, modality, **options)
        check(backend, device, torch.float32, x[0], labels, modality, **OPTIONS[-1])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_deterministic(device, backend):
    require_backend(backend, device)
    x, labels, modality = batch(3, 4, 5, 40, device, seed=5)
    first = loss_and_grad(backend, x, labels, modality, torch.ones(3, device=device), metric="cosine", strong=True)
    second = loss_and_grad(backend, x, labels, modality, torch.ones(3, device=device), metric="cosine", strong=True)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_modality_centers(device, backend):
    require_backend(backend, device)
    x, labels, modality = batch(None, 4, 3, 17, device, seed=6)
    labels[0] = 1000  # a class with one visible sample only
    modality[0] = 0
    for xs in (x, torch.stack([x, 2 * x, -x])):
        ref = ops.modality_centers(xs.detach().requires_grad_(), labels, modality, backend="reference")
        xl = xs.detach().clone().requires_grad_()
        got = ops.modality_centers(xl, labels, modality, backend=backend)
        assert torch.equal(got.classes, ref.classes) and torch.equal(got.counts, ref.counts)
        assert_matches(got.centers, ref.centers, torch.float32, "centers")
        upstream = torch.randn_like(got.centers)
        (grad,) = torch.autograd.grad((got.centers * upstream).sum(), xl)
        xr = xs.detach().clone().requires_grad_()
        (ref_grad,) = torch.autograd.grad((ops.modality_centers(xr, labels, modality, backend="reference").centers
                                           * upstream).sum(), xr)
        assert_matches(grad, ref_grad, torch.float32, "grad through centers")
        assert got.counts[-1].tolist() == [1, 0] and (got.centers[..., -1, 1, :] == 0).all()
    # classes come in the labels' dtype on every backend (the fused path sorts them as int64)
    small = ops.modality_centers(x, labels.to(torch.int32), modality, backend=backend)
    assert small.classes.dtype == torch.int32 == ops.modality_centers(x, labels.to(torch.int32), modality,
                                                                      backend="reference").classes.dtype


SLOT_BACKENDS = ("reference",) + FUSED_BACKENDS


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", SLOT_BACKENDS)
def test_class_slots_layout(device, backend):
    if backend != "reference":
        require_backend(backend, device)
    labels = torch.tensor([7, 3, 7, 9, 3, 3], device=device)
    slots = class_slots(labels, backend)
    assert slots.slot.tolist() == [1, 0, 1, 2, 0, 0]
    assert slots.order.tolist() == [1, 4, 5, 0, 2, 3]
    assert slots.seg.tolist() == [0, 3, 5, 6, 6, 6, 6]
    assert slots.slot_labels.tolist() == [3, 7, 9, -1, -1, -1] and int(slots.num_classes) == 3
    assert slots.sorted_slot.tolist() == [0, 0, 0, 1, 1, 2]
    one = class_slots(torch.tensor([5], dtype=torch.int32, device=device), backend)
    assert one.seg.tolist() == [0, 1] and one.slot_labels.tolist() == [5] and int(one.num_classes) == 1
    empty = class_slots(torch.tensor([], dtype=torch.int64, device=device), backend)
    assert empty.seg.tolist() == [0] and int(empty.num_classes) == 0
    assert all(t.dtype == torch.int64 and t.device == labels.device for t in slots)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_class_slots_match_the_reference(device, backend):
    require_backend(backend, device)
    seed = int(torch.randint(0, 2**31, ()))  # fresh labels every run; the seed is in a failure's message
    # the Triton blocks' edges (32 samples, 64 candidates a step) and past them
    for case, labels in awkward_labels((2, 3, 31, 32, 33, 64, 65, 130), torch.Generator().manual_seed(seed)):
        labels = labels.to(device)
        for name, got, want in zip(ClassSlots._fields, class_slots(labels, backend),
                                   reference.class_slots(labels)):
            assert torch.equal(got, want), (seed, case, backend, name, labels.tolist(), got.tolist(), want.tolist())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_class_slots_are_one_op(device, backend, monkeypatch):
    """The fused backends' slots cost one C++ op (native) or the two slot kernels (Triton) and nothing
    else but allocations, where the reference's sort runs ~9 launches; past QUADRATIC_LIMIT samples the
    O(N^2) paths give way to the sort and agree with it."""
    require_backend(backend, device)
    from vtreid.kernels import hetero_center as kernel
    labels = torch.tensor([4, 1, 4, 4, 2, 1], device=device)
    launches = Launches(monkeypatch, kernel)
    with AtenOps(launches) as aten:
        class_slots(labels, backend)
    if backend == "triton":
        assert launches.names() == ["_slot_rank_kernel", "_slot_segments_kernel"] and aten.ops == [], aten.ops
    else:
        assert aten.ops == ["class_slots"], aten.ops
    with AtenOps(launches) as aten:
        class_slots(labels, "reference")
    assert len(aten.ops) >= 6, aten.ops
    monkeypatch.setattr(hetero_center, "QUADRATIC_LIMIT", 5)
    launches.triton.clear()
    got = class_slots(labels, backend)
    assert all(torch.equal(g, w) for g, w in zip(got, reference.class_slots(labels)))
    quadratic = backend == "triton" or device == "cuda"  # native on the CPU sorts in C++ at any size
    assert launches.triton == [] and (not quadratic or aten.ops != ["class_slots"])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_class_slots_opcheck(device, backend):
    require_backend(backend, device)
    op = hetero_center._NATIVE_SLOTS if backend == "native" else hetero_center._TRITON_SLOTS
    for labels in (torch.tensor([3, 1, 3, 0, 1]), torch.tensor([2, 2, 2], dtype=torch.int32),
                   torch.tensor([], dtype=torch.int64)):
        torch.library.opcheck(op, (labels.to(device),))


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_torch_compile_traces_the_slot_op(backend):
    """torch.compile traces the slot op and the fused pair through their fake kernels and gives the
    reference's gradient. (On CPU tensors the modality value check breaks the graph before them.)"""
    require_backend(backend, "cpu")
    x, labels, modality = batch(2, 3, 2, 9, "cpu", seed=15)
    graphs = []

    def record(gm, example_inputs):
        graphs.append(str(gm.graph))
        return gm.forward
    torch._dynamo.reset()
    fn = torch.compile(lambda t: ops.hetero_center_loss(t, labels, modality, backend=backend, strong=True).sum(),
                       backend=record)
    xc, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    fn(xc).backward()
    assert "vtreid.class_slots" in "\n".join(graphs)
    ops.hetero_center_loss(xr, labels, modality, backend="reference", strong=True).sum().backward()
    assert_matches(xc.grad, xr.grad, torch.float32, "grad under torch.compile")


def test_native_class_slots_name_a_bad_labels_argument():
    require_backend("native", "cpu")
    with pytest.raises(ValueError, match="labels must be a 1-D tensor"):
        hetero_center._NATIVE_SLOTS(torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match="labels must have dtype torch.int32 or torch.int64"):
        hetero_center._NATIVE_SLOTS(torch.zeros(3))


@pytest.mark.parametrize("backend", ("reference", "native"))
@pytest.mark.parametrize("options", OPTIONS[::2], ids=lambda o: "-".join(str(v) for v in o.values()))
def test_gradcheck_float64(backend, options):
    require_backend(backend, "cpu", torch.float64)
    x, labels, modality = batch(2, 3, 2, 4, "cpu", torch.float64, seed=7)
    x.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda t: ops.hetero_center_loss(t, labels, modality, backend=backend, **options), (x,))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_opcheck(device, backend):
    require_backend(backend, device)
    op = FUSED[backend]
    x, labels, modality = batch(3, 3, 2, 9, device, seed=8)
    slots = class_slots(labels)
    mod = modality.int()
    for metric, strong in itertools.product(("sqeuclidean", "cosine"), (False, True)):
        args = (x.requires_grad_(), slots.order, slots.seg, slots.slot, mod, metric, strong, 0.1)
        torch.library.opcheck(op.forward, args)
        with torch.no_grad():
            hinge, centers, variances, counts, stats = op.forward(*args)
        for grad_centers in (None, torch.randn_like(centers)):
            torch.library.opcheck(op.backward, (x.detach(), slots.slot, mod, hinge, centers, variances, counts, stats,
                                                torch.randn_like(hinge), grad_centers, metric, strong))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_fused_op_reads_nonzero_int32_modality_as_infrared(device, backend):
    """The registered op takes int32 modality as given (no conversion launch) and reads 0 as visible and
    any other value as infrared, as every backend does; other dtypes are converted by the op itself."""
    require_backend(backend, device)
    op = FUSED[backend]
    x, labels, modality = batch(2, 4, 3, 19, device, seed=11)
    slots = class_slots(labels)
    raw = raw_modality(modality)
    for metric, strong in (("sqeuclidean", True), ("cosine", False)):
        args = (slots.order, slots.seg, slots.slot)
        want = op.forward(x, *args, modality.int(), metric, strong, 0.1)
        for mod in (raw.int(), raw.to(torch.int8), raw.bool()):
            got = op.forward(x, *args, mod, metric, strong, 0.1)
            for g, w in zip(got, want):
                assert torch.equal(g, w), (metric, mod.dtype)
            grad_hinge = torch.linspace(0.5, 1.5, want[0].numel(), device=device).view_as(want[0])
            bwd = (x, slots.slot, mod, *got, grad_hinge, None, metric, strong)
            want_grad = op.backward(x, slots.slot, modality.int(), *want, grad_hinge, None, metric, strong)
            assert torch.equal(op.backward(*bwd), want_grad), (metric, mod.dtype)


class _PoisonedTorch:
    """torch, except that empty / empty_like return memory full of a value no output of the forward holds
    (the CPU allocator often hands back zeros, which would hide an output the kernel never writes)."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def _poison(t):
        return t.fill_(float("nan") if t.is_floating_point() else -7)

    def empty(self, *args, **kwargs):
        return self._poison(torch.empty(*args, **kwargs))

    def empty_like(self, *args, **kwargs):
        return self._poison(torch.empty_like(*args, **kwargs))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("d", [37, 150])  # one feature slice (the class done in place); three, combined
def test_triton_forward_writes_every_output(device, d, monkeypatch):
    """The Triton forward allocates its outputs (and the slices' partial sums) without filling them: the
    kernels write every slot, the empty ones past the classes included, and zero variances when not strong."""
    require_backend("triton", device)
    from vtreid.kernels import hetero_center as kernel

    x, labels, modality = batch(2, 3, 2, d, device, seed=12)
    labels[0] = 1000  # one class with one visible sample only
    slots = class_slots(labels)
    k = int(slots.num_classes)
    monkeypatch.setattr(kernel, "torch", _PoisonedTorch())
    for metric, strong in itertools.product(("sqeuclidean", "cosine"), (False, True)):
        hinge, centers, variances, counts, stats = kernel.forward(x, slots.order, slots.seg, modality.int(), metric,
                                                                  strong, 0.1)
        want = FUSED["native"].forward(x.cpu(), slots.order.cpu(), slots.seg.cpu(), slots.slot.cpu(),
                                       modality.int().cpu(), metric, strong, 0.1)
        for name, got, w in zip(("hinge", "centers", "variances", "counts", "stats"),
                                (hinge, centers, variances, counts, stats), want):
            if name == "counts":
                assert torch.equal(got.cpu(), w)
            else:
                assert_matches(got.cpu(), w, torch.float32, f"{name} {metric} strong={strong}")
            slot_axis = 0 if name == "counts" else 1
            assert (got.narrow(slot_axis, k, got.shape[slot_axis] - k) == 0).all(), f"{name} of an empty slot"
        assert strong or (variances == 0).all()


@pytest.mark.parametrize("device", DEVICES)
def test_triton_forward_feature_slices(device, monkeypatch):
    """The forward splits the features into slices (grid axis 2) and sums each class's per-slice scalars
    in slice order in a second launch: one launch when one slice holds all the features; the centres are
    bitwise the same whatever the slice width (each feature's sum is its own), the class scalars equal up
    to the order of the slices' sums, and the launch count follows the slices."""
    require_backend("triton", device)
    from vtreid.kernels import hetero_center as kernel

    x, labels, modality = batch(3, 4, 3, 200, device, seed=16)
    slots = class_slots(labels)
    args = (slots.order, slots.seg, modality.int(), "cosine", True, 0.05)
    runs = {}
    for width in (16, 64, 256):  # 13 slices (the last 8 wide), 4 (the last 8 wide), 1
        monkeypatch.setattr(kernel, "FWD_BLOCK_D", width)
        launches = Launches(monkeypatch, kernel)
        runs[width] = kernel.forward(x, *args)
        combined = ["_centers_combine_kernel"] if width < 200 else []
        assert launches.names() == ["_centers_fwd_kernel", *combined], (width, launches.names())
        monkeypatch.undo()
    want = FUSED["native"].forward(x.cpu(), slots.order.cpu(), slots.seg.cpu(), slots.slot.cpu(), *args[2:])
    for width, out in runs.items():
        for name, got, w, ref in zip(("hinge", "centers", "variances", "counts", "stats"), out, want, runs[256]):
            if name in ("centers", "variances", "counts"):
                assert torch.equal(got, ref), (width, name)
            assert_matches(got.cpu().to(w.dtype), w, torch.float32, f"{name} at slice width {width}")
    assert kernel.forward_splits(200) == (64, 4) and kernel.forward_splits(37) == (64, 1)
    assert kernel.forward_splits(1) == (16, 1) and kernel.forward_splits(17) == (32, 1)
    # past 65535 slices of 64 (grid axis 2's limit) the slices widen instead; run with a limit of 2
    assert kernel.forward_splits(64 * 65535 + 1) == (128, 32768)
    monkeypatch.setattr(kernel, "GRID_LIMITS", (2**31 - 1, 65535, 2))
    assert kernel.forward_splits(200) == (128, 2)
    wide = kernel.forward(x, *args)
    for name, got, w, ref in zip(("hinge", "centers", "variances", "counts", "stats"), wide, want, runs[256]):
        if name in ("centers", "variances", "counts"):
            assert torch.equal(got, ref), name
        assert_matches(got.cpu().to(w.dtype), w, torch.float32, f"{name} at slice width 128")


def test_triton_backward_reads_the_expanded_hinge_gradient_in_place(monkeypatch):
    """The loss sums the hinge values, so autograd hands the backward an expanded [S, N] gradient (stride 0
    along the classes): the kernel reads it with its strides, one launch and no copy, and gives bitwise
    what the contiguous copy gives."""
    require_backend("triton", "cpu")
    from vtreid.kernels import hetero_center as kernel

    x, labels, modality = batch(2, 3, 2, 8, "cpu", seed=14)
    calls, real = [], kernel.backward
    monkeypatch.setattr(kernel, "backward", lambda *args: calls.append(args) or real(*args))
    ops.hetero_center_loss(x.clone().requires_grad_(), labels, modality, backend="triton").sum().backward()
    (args,) = calls
    grad_hinge = args[8]
    assert grad_hinge.stride(1) == 0, grad_hinge.stride()
    launches = Launches(monkeypatch, kernel)
    with AtenOps(launches) as aten:
        got = real(*args)
    assert launches.names() == ["_centers_bwd_kernel"] and aten.ops == [], (launches.names(), aten.ops)
    assert torch.equal(got, real(*args[:8], grad_hinge.contiguous(), *args[9:]))


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_single_set_loss_is_a_view_of_the_fused_output(backend):
    """x [N, D] gives a scalar by squeezing the fused [1] result (a view both ways), not by indexing it,
    whose backward costs a zero fill and a copy."""
    require_backend(backend, "cpu")
    x, labels, modality = batch(None, 3, 2, 8, "cpu", seed=13)
    loss = ops.hetero_center_loss(x.requires_grad_(), labels, modality, backend=backend)
    assert loss.dim() == 0 and loss.grad_fn.name().startswith("SqueezeBackward"), loss.grad_fn.name()


def test_bad_inputs_name_the_argument():
    x = torch.randn(6, 4)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    modality = torch.tensor([0, 1, 0, 1, 0, 1])
    with pytest.raises(ValueError, match=r"x must be \[N, D\] or \[S, N, D\]"):
        ops.hetero_center_loss(x[0], labels, modality)
    with pytest.raises(TypeError, match="x must be float"):
        ops.hetero_center_loss(x.long(), labels, modality)
    with pytest.raises(ValueError, match="labels must be a 1-D tensor of length 6"):
        ops.hetero_center_loss(x, labels[:4], modality)
    with pytest.raises(TypeError, match="labels must have dtype"):
        ops.hetero_center_loss(x, labels.float(), modality)
    with pytest.raises(ValueError, match="modality must hold 0"):
        ops.hetero_center_loss(x, labels, modality + 1)
    with pytest.raises(ValueError, match="modality is on meta"):
        ops.hetero_center_loss(x, labels, modality.to("meta"))
    with pytest.raises(ValueError, match="metric"):
        ops.hetero_center_loss(x, labels, modality, metric="euclidean")
    with pytest.raises(ValueError, match="reduction"):
        ops.hetero_center_loss(x, labels, modality, reduction="none")
    with pytest.raises(TypeError, match="margin"):
        ops.hetero_center_loss(x, labels, modality, margin="0.1")
    with pytest.raises(TypeError, match="margin must be a float, got bool"):   # the reference crashed on it
        ops.hetero_center_loss(x, labels, modality, margin=True)
    for bad in (float("nan"), float("-inf")):
        with pytest.raises(ValueError, match="margin must be a finite number"):
            ops.hetero_center_loss(x, labels, modality, margin=bad)
    import numpy as np
    assert torch.equal(ops.hetero_center_loss(x, labels, modality, margin=np.float32(0.25)),
                       ops.hetero_center_loss(x, labels, modality, margin=0.25))   # np.float32 was refused
    with pytest.raises(TypeError, match="strong must be True or False, got 'no'"):   # bool("no") is True
        ops.hetero_center_loss(x, labels, modality, strong="no")
    with pytest.raises(ValueError, match="labels must be a 1-D"):
        ops.modality_centers(torch.randn(2, 6, 4), labels[:, None], modality)
