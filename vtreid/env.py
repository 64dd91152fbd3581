"""``python -m vtreid.env``: versions, the GPU if any, and which backends each device can run (and why not).

``python -m vtreid.env --check`` also runs every op family on every available backend of every device
against ``reference`` on small awkward inputs (values, indices, gradients), times it, and prints one
table; it exits 1 on a mismatch and says which backend to avoid and how.

Paste its output into bug reports and benchmark notes.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time

import torch

import vtreid.ops as ops
from vtreid.ops import _backend


def _triton_version() -> str:
    ok, why = _backend.triton_status()
    if not ok:
        return f"not installed ({why})"
    from importlib.metadata import version
    return version("triton")


def report() -> str:
    lines = [
        f"python   {sys.version.split()[0]} ({platform.platform()})",
        f"torch    {torch.__version__} (CUDA {torch.version.cuda or 'none'})",
        f"triton   {_triton_version()} (TRITON_INTERPRET={'1' if _backend.triton_interpreted() else '0'})",
    ]
    ok, why, with_cuda = _backend.native_status()
    lines.append(f"vtreid._C {'built' + (' with CUDA' if with_cuda else ' for CPU only') if ok else why}")
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            lines.append(f"gpu{i}     {props.name} (sm_{props.major}{props.minor}, "
                         f"{props.total_memory / 2**30:.0f} GiB)")
        devices.append(torch.device("cuda"))
    else:
        lines.append("gpu      none")
    for device in devices:
        lines.append(f"{device.type} backends (automatic choice: {_backend.auto_backend(device, torch.float32)}):")
        for name in _backend.BACKENDS:
            ok, why = _backend.availability(name, device, torch.float32)
            lines.append(f"  {name:<10} {'available' if ok else 'unavailable: ' + why}")
    return "\n".join(lines)


# --- the self-check ------------------------------------------------------------------------------------

OPS = ("pairwise_distance", "hard_mining", "hetero_center_loss", "normalized_cross_entropy")


def _cases(op: str, device: torch.device):
    """(inputs, kwargs) of small awkward cases: N = 1, 3, 47; D = 1, 7, 129; duplicate and zero rows;
    anchors without a positive or negative; a class seen in one modality only."""
    g = torch.Generator().manual_seed(0)

    def feats(n, d):
        x = torch.randn(n, d, generator=g)
        if n >= 3:
            x[1] = x[0]     # a duplicate row (distance exactly 0)
            x[2] = 0.0      # a zero vector
        return x.to(device)

    for n, d in ((1, 7), (3, 1), (47, 129)):
        labels = (torch.arange(n) % 5).to(device)
        modality = (torch.arange(n) % 2).to(device)
        if op == "pairwise_distance":
            for metric in ("euclidean", "sqeuclidean", "cosine"):
                yield (feats(n, d), feats(n + 2, d)), dict(metric=metric)
        elif op == "hard_mining":
            labels = labels.clone()
            labels[-1] = 99  # an anchor with no positive
            for metric in ("euclidean", "cosine"):
                yield (feats(n, d), labels), dict(metric=metric)
            yield (feats(n, d), labels), dict(metric="euclidean", anchor_modality=modality, positive="cross")
        elif op == "hetero_center_loss":
            modality = modality.clone()
            modality[labels == 1] = 0  # class 1 has no infrared sample
            for metric in ("sqeuclidean", "cosine"):
                yield (feats(n, d), labels, modality), dict(metric=metric, strong=True, margin=0.05)
        else:
            yield (feats(n, d), feats(7, d), labels % 7), dict(scale=14.0, label_smoothing=0.1)


def _outputs(op: str, inputs, kwargs, backend: str):
    """Forward values (and indices) plus the gradient of every float input, as a flat list."""
    return _run(lambda *leaves: getattr(ops, op)(*leaves, **kwargs, backend=backend), inputs)


def _run(fn, inputs):
    leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    out = fn(*leaves)
    values = list(out) if isinstance(out, tuple) else [out]
    floats = [v for v in values if v.is_floating_point()]
    loss = sum(v.float().sum() * (i + 1) for i, v in enumerate(floats))
    grads = torch.autograd.grad(loss, [t for t in leaves if t.requires_grad], allow_unused=True)
    return values + [torch.zeros(()) if gr is None else gr for gr in grads]


#: hard_mining's outputs (pos_dist, pos_index, neg_dist, neg_index, valid, grad): the index slots and which
#: candidates each may pick (the reference's positive / negative mask).
_MINED_INDEX_SLOTS = {1: 0, 3: 1}


def _reference_at_ties(inputs, kwargs, got, want):
    """The reference's outputs with a fused backend's indices, where those differ from the reference's only
    at exact ties (float64 distances equal within 1e-5 and the pick allowed by the same masks); else None.

    The cases hold exact ties (a duplicate row, a zero vector). The contract picks their lowest index, but a
    float32 computation of tied distances may round them apart: on a GPU the reference's own row norms are
    reductions whose order can depend on a row's alignment. Both fused backends once failed the CUDA check
    on one such index while agreeing with each other."""
    x, labels = inputs
    metric = kwargs.get("metric", "euclidean")
    modality = kwargs.get("anchor_modality")
    cpu = lambda t: None if t is None else t.cpu()  # noqa: E731
    dist64 = ops.reference.distance_matrix(cpu(x).double(), cpu(x).double(), metric)
    masks = ops.reference.mining_masks(cpu(labels), cpu(labels), cpu(modality), cpu(modality),
                                       kwargs.get("positive", "any"), kwargs.get("negative", "any"), True)
    scale = max(1.0, dist64[dist64.isfinite()].abs().max().item()) if dist64.isfinite().any() else 1.0
    for slot, mask in _MINED_INDEX_SLOTS.items():
        mine, ref = got[slot].cpu(), want[slot].cpu()
        rows = (mine != ref).nonzero()[:, 0]
        if len(rows) == 0:
            continue
        if (mine[rows] < 0).any() or (ref[rows] < 0).any() or not masks[mask][rows, mine[rows]].all():
            return None
        if ((dist64[rows, mine[rows]] - dist64[rows, ref[rows]]).abs() > 1e-5 * scale).any():
            return None
    pos_index, neg_index, valid = got[1], got[3], want[4]
    return _run(lambda leaf, _labels: ops.reference.mined_pairs(
        ops.reference.distance_matrix(leaf, leaf, metric), pos_index, neg_index, valid, leaf.dtype), inputs)


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same shape, dtype, NaN positions and infinities; finite values within 1e-4 (relative to the largest
    of their row, so that one row's huge gradient, a zero vector's, hides no other row's error)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if not a.is_floating_point():
        return torch.equal(a, b)
    a, b = a.double().cpu(), b.double().cpu()
    if not torch.equal(a.isnan(), b.isnan()):
        return False
    if b.numel() == 0:
        return True
    rows = b.reshape(b.shape[0] if b.dim() > 1 else 1, -1)
    scale = rows.abs().nan_to_num(0.0, 0.0, 0.0).amax(1, keepdim=True).clamp_min(1.0)
    scale = scale.expand_as(rows).reshape(b.shape)
    keep = ~b.isnan()
    a, b, scale = a[keep], b[keep], scale[keep]
    return bool(((a == b) | ((a - b).abs() <= 1e-4 * scale + 1e-4 * b.abs())).all())


def _time(fn, device: torch.device, repeat: int = 5) -> float:
    fn()  # warm-up (compiles / autotunes)
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def _timing_inputs(op: str, device: torch.device):
    n, d = (1024, 256) if device.type == "cuda" else (128, 64)
    x = torch.randn(n, d, device=device)
    labels = torch.arange(n, device=device) % 16
    if op == "pairwise_distance":
        return (x, x), {}
    if op == "hard_mining":
        return (x, labels), {}
    if op == "hetero_center_loss":
        return (x, labels, labels % 2), {}
    return (x, torch.randn(100, d, device=device), labels), dict(scale=14.0)


def check(devices=None, timing: bool = True) -> tuple[str, bool]:
    """Run every op family on every available fused backend of every device against ``reference``.

    Returns (the table, all passed)."""
    if devices is None:
        devices = [torch.device("cpu")] + ([torch.device(f"cuda:{i}") for i in range(torch.cuda.device_count())])
    rows = [f"{'device':<8} {'op':<26} {'backend':<8} {'result':<8} speed-up vs reference"]
    failures = []
    for device in devices:
        for op in OPS:
            for backend in ("native", "triton"):
                ok, why = _backend.availability(backend, device, torch.float32)
                if not ok:
                    rows.append(f"{str(device):<8} {op:<26} {backend:<8} {'n/a':<8} ({why})")
                    continue
                result, detail = "pass", ""
                try:
                    for inputs, kwargs in _cases(op, device):
                        got = _outputs(op, inputs, kwargs, backend)
                        want = _outputs(op, inputs, kwargs, "reference")
                        bad = [i for i, (a, b) in enumerate(zip(got, want)) if not _close(a, b)]
                        if op == "hard_mining" and set(bad) & set(_MINED_INDEX_SLOTS):
                            at_ties = _reference_at_ties(inputs, kwargs, got, want)
                            if at_ties is not None:
                                bad = [i for i, (a, b) in enumerate(zip(got, at_ties)) if not _close(a, b)]
                        if bad or len(got) != len(want):
                            shape = tuple(inputs[0].shape)
                            result, detail = "FAIL", f"output {bad} differs for x {shape}, {kwargs}"
                            break
                except Exception as exc:  # a crash is a failure of that backend, not of the check
                    result, detail = "FAIL", f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
                speed = ""
                if result == "pass" and timing:
                    args, kw = _timing_inputs(op, device)
                    fn = getattr(ops, op)
                    t_ref = _time(lambda: fn(*args, **kw, backend="reference"), device)
                    t_fused = _time(lambda: fn(*args, **kw, backend=backend), device)
                    speed = f"{t_ref / t_fused:.2f}x"
                if result == "FAIL":
                    failures.append((device, op, backend, detail))
                rows.append(f"{str(device):<8} {op:<26} {backend:<8} {result:<8} {speed or detail}")
    for device, op, backend, detail in failures:
        others = [b for b in ("native", "triton") if b != backend]
        rows.append(f"MISMATCH: vtreid.ops.{op} on {device} with backend {backend!r} ({detail}). Avoid it: "
                    f"set VTREID_BACKEND={others[0]} (or reference), wrap the code in "
                    f"`with vtreid.ops.use_backend('{others[0]}'):`, or pass backend='reference' to the op; "
                    f"and please report this table.")
    return "\n".join(rows), not failures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vtreid.env",
                                     description="Print versions, the GPUs and which vtreid backends each device "
                                                 "can run (paste it into bug reports).")
    parser.add_argument("--check", action="store_true",
                        help="also run every op family on every available backend of every device against "
                             "'reference' on small awkward inputs (values, indices, gradients), time it, and "
                             "print pass/fail and speed-up per op and backend; exit 1 on a mismatch")
    parser.add_argument("--no-timing", action="store_true", help="with --check: skip the timing")
    args = parser.parse_args(argv)
    print(report())
    if not args.check:
        return 0
    table, ok = check(timing=not args.no_timing)
    print()
    print(table)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
