"""Shared test helpers: the device list, the backends each device can run, and the tolerance table."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from vtreid.ops import _backend


class Tol(NamedTuple):
    atol: float
    rtol: float


#: The one tolerance table. Errors of fused sums grow with the magnitude of their terms, so atol is
#: scaled by max(1, max |expected|) in assert_matches.
TOLERANCES = {
    torch.float64: Tol(1e-9, 1e-9),
    torch.float32: Tol(2e-5, 2e-5),
    torch.float16: Tol(4e-3, 4e-3),
    torch.bfloat16: Tol(3e-2, 3e-2),
}

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
FUSED_BACKENDS = ("native", "triton")
ROOT = Path(__file__).resolve().parents[1]


def compile_triton_script():
    """scripts/compile_triton.py as a module (its helpers and tables; nothing is compiled on import)."""
    spec = importlib.util.spec_from_file_location("compile_triton", ROOT / "scripts/compile_triton.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dtypes_for(device: str, backend: str = "reference"):
    """Float dtypes a backend takes on a device (bfloat16 only on GPU, float64 not in Triton)."""
    out = [torch.float32, torch.float16]
    if device == "cuda":
        out.append(torch.bfloat16)
    if backend != "triton":
        out.append(torch.float64)
    return out


def without_onednn():
    """Context: torch's own CPU convolutions and matmuls instead of oneDNN's. For CPU bfloat16 networks in
    tests: on CPUs with AMX, oneDNN's bfloat16 kernels gave NaN and wrong values depending on what ran
    before in the process (vtreid.train.cpu_has_amx), so such a test passed or failed by its order."""
    return torch.backends.mkldnn.flags(enabled=False)


def require_backend(backend: str, device: str, dtype: torch.dtype | None = None) -> None:
    """Skip (with the reason) when ``backend`` cannot run here; CI asserts availability separately
    (tests/ops/test_backend.py::test_required_backends_are_available), so a skip cannot hide a
    backend that should have been built."""
    ok, why = _backend.availability(backend, torch.device(device), dtype)
    if not ok:
        pytest.skip(f"{backend} unavailable on {device}: {why}")


def assert_matches(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str,
                   scale: torch.Tensor | None = None) -> None:
    """|actual - expected| <= atol * scale + rtol * |expected| elementwise, with the dtype's tolerance.

    ``scale`` (broadcast against expected; default: the largest |expected|, at least 1) is the size of
    the terms a fused sum adds up; pass it per row when a result cancels to ~0 from large terms."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    tol = TOLERANCES[dtype]
    act, exp = actual.double(), expected.double()
    if scale is None:
        finite = exp[exp.isfinite()]
        scale = torch.tensor(max(1.0, finite.abs().max().item()) if finite.numel() else 1.0)
    scale = scale.double().to(exp.device).clamp_min(1.0)
    same_special = (act == exp) | (act.isnan() & exp.isnan())  # equal infinities, NaN where expected
    err = (act - exp).abs()
    bound = tol.atol * scale + tol.rtol * exp.abs()
    bad = ~(same_special | (err <= bound))
    if bad.any():
        idx = bad.nonzero()[0].tolist()
        raise AssertionError(f"{what}: {int(bad.sum())} of {bad.numel()} elements out of tolerance "
                             f"{tol}; first at {idx}: actual {act[tuple(idx)].item()!r}, "
                             f"expected {exp[tuple(idx)].item()!r}, max error {err[bad].max().item():.3e}")


# --- the pairwise backward of close pairs (tests/ops/test_pairwise_distance.py, tests/cuda_emu) -----------

def close_pairs(dtype: torch.dtype, gen: torch.Generator, n: int = 37, m: int = 40, d: int = 64):
    """(x [n, d], y [m, d]) where y's first n rows are x's at distance ~0.1 (norms ~8): the backward's
    coefficients B_ij = g / d_ij are large, and a_i x_i - sum_j B_ij y_j cancels them."""
    x = torch.randn(n, d, generator=gen)
    y = torch.randn(m, d, generator=gen)
    y[:n] = x + 0.0125 * torch.randn(n, d, generator=gen)
    return x.to(dtype), y.to(dtype)


def side_gradient_float64(grad: torch.Tensor, dist: torch.Tensor, a: torch.Tensor, b: torch.Tensor, metric: str):
    """(grad_a, size): grad_a of sum_ij g_ij dist(a_i, b_j) = a_i a - B b in float64 with the formulas of
    kernels/pairwise_distance.py, for the given distances (the rounded ones a backward reads), so that a
    kernel's own rounding is the only difference; size: the magnitude of the terms each entry sums."""
    g, d, a, b = grad.double(), dist.double(), a.double(), b.double()
    if metric == "cosine":
        na, nb = a.norm(dim=1).clamp_min(1e-12), b.norm(dim=1).clamp_min(1e-12)
        coef = g / (na[:, None] * nb[None, :])
        row = (g * (1 - d)).sum(1) / na ** 2 * (a.norm(dim=1) > 1e-12)
    else:
        coef = torch.where(d > 0, g / d.clamp_min(1e-300) if metric == "euclidean" else 2 * g, 0.0)
        row = coef.sum(1)
    return row[:, None] * a - coef @ b, coef.abs() @ b.abs() + row.abs()[:, None] * a.abs()


def assert_half_gradient_within_rounding(got: torch.Tensor, want: torch.Tensor, size: torch.Tensor) -> None:
    """|got - want| <= 1.1 ulp(want) + 4e-6 size: the half output's rounding plus float32-sized error on the
    terms (a B that entered the GEMM with TF32's 10 bits misses this many times over)."""
    ulp = 2.0 ** -(11 if got.dtype == torch.float16 else 8)
    err = (got.double() - want).abs()
    bound = 1.1 * ulp * want.abs() + 4e-6 * size
    assert (err <= bound).all(), f"{got.dtype}: max error / bound {(err / bound).max():.2f}"


def awkward_labels(sizes, gen: torch.Generator) -> list[tuple[str, torch.Tensor]]:
    """(name, labels) for the class-slot tests: one or two samples; per size in ``sizes`` (a kernel's
    block edges) random labels with ties, one class, all distinct, descending; the int64 and int32
    extremes, wide int32 values with ties, and a strided view."""
    cases = [("one", torch.tensor([4])), ("two-equal", torch.tensor([9, 9])), ("pair", torch.tensor([9, -9]))]
    for n in sizes:
        cases += [(f"random-{n}", torch.randint(-4, 6, (n,), generator=gen)),
                  (f"one-class-{n}", torch.full((n,), 6)),
                  (f"distinct-{n}", torch.randperm(n, generator=gen) * 5 - n),
                  (f"descending-{n}", torch.arange(n, 0, -1) // 3)]
    return cases + [
        ("int64-extremes", torch.tensor([2**63 - 1, -2**63, 0, 2**63 - 1, -2**63, -1])),
        ("int32-extremes", torch.tensor([2**31 - 1, -2**31, 0, -2**31, 2**31 - 1], dtype=torch.int32)),
        ("int32-wide", torch.randint(-2**31, 2**31 - 1, (300,), generator=gen, dtype=torch.int32) // 2**28),
        ("strided", torch.randint(-4, 6, (70,), generator=gen)[::2])]


def raw_modality(modality: torch.Tensor) -> torch.Tensor:
    """int64 modality with 0 where ``modality`` is visible and, where infrared, values other than 1
    (3, -1, 7, 2^31 - 1 in turn): every backend reads any non-zero value as infrared."""
    values = torch.tensor([3, -1, 7, 2**31 - 1])[torch.arange(len(modality)) % 4].to(modality.device)
    return torch.where(modality == 0, 0, values)


# --- the launches and aten ops a launcher really runs (Triton interpreter) ------------------------------

class Launches:
    """Records every Triton launch of a kernels/ module (name, grid) while installed, the kernels still
    running; AtenOps counts the aten ops run outside those launches (the interpreter's own tensor work
    inside a launch is not counted)."""

    def __init__(self, monkeypatch, module):
        self.triton, self.inside = [], 0
        for name, obj in vars(module).items():
            if name.endswith("_kernel"):
                target = obj.fn if hasattr(obj, "configs") else obj  # an autotuner launches its function
                monkeypatch.setattr(target, "run", self._wrap(name, target.run), raising=False)

    def _wrap(self, name, real):
        def run(*args, grid, **kwargs):
            self.triton.append((name, tuple(grid(kwargs)) if callable(grid) else tuple(grid)))
            self.inside += 1
            try:
                return real(*args, grid=grid, **kwargs)
            finally:
                self.inside -= 1
        return run

    def names(self):
        return [name for name, _ in self.triton]

    def grid(self, name):
        return [grid for n, grid in self.triton if n == name][-1]


class AtenOps(TorchDispatchMode):
    """The aten ops a launcher runs itself: on a GPU each one that is not an allocation or a view is a launch."""
    FREE = {"empty", "empty_strided", "view", "select", "slice", "alias", "detach", "as_strided", "expand", "t"}

    def __init__(self, launches: Launches):
        super().__init__()
        self.launches, self.ops = launches, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.launches.inside and func.overloadpacket.__name__ not in self.FREE:
            self.ops.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


# --- every Triton launch of the ops, recorded instead of run ------------------------------------------

class Launch(NamedTuple):
    name: str       # the kernel
    programs: int   # of its grid, for the config in ``meta``
    meta: dict      # one GPU config the kernel's early_config_prune keeps for this launch ({} if untuned)
    args: dict      # the launch's arguments by name


class _Recorder:
    """Stands in for a kernel: records a Launch for every config the kernel's early_config_prune keeps for
    this launch (the GPU configs, not the interpreter's). Nothing runs."""

    def __init__(self, name, kernel, out):
        self.name, self.kernel, self.out = name, kernel, out

    def __getattr__(self, attr):  # launchers may read attributes of the kernel (configs, arg_names, ...)
        return getattr(self.kernel, attr)

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            nargs = dict(zip(self.kernel.arg_names, args))
            configs = list(getattr(self.kernel, "gpu_configs", []))
            prune = getattr(self.kernel, "early_config_prune", None)
            if configs and prune:
                configs = prune(configs, nargs, **kwargs)
            for meta in [c.kwargs for c in configs] or [{}]:
                g = grid({**nargs, **kwargs, **meta}) if callable(grid) else grid
                programs = 1
                for count in g:
                    programs *= count
                self.out.append(Launch(self.name, programs, meta, {**nargs, **kwargs}))
        return launch


def record_launches(monkeypatch) -> list[Launch]:
    """Replace every Triton kernel of vtreid.kernels by a recorder; the list fills as the launchers run."""
    from vtreid.kernels import hard_mining, hetero_center, normalized_softmax, pairwise_distance
    out = []
    for module in (pairwise_distance, hard_mining, hetero_center, normalized_softmax):
        for name in dir(module):
            if name.startswith("_") and name.endswith("_kernel"):
                monkeypatch.setattr(module, name, _Recorder(name, getattr(module, name), out))
    return out


def launch_every_op(n: int, m: int, d: int, c: int, dtype: torch.dtype) -> None:
    """Every op family's forward and backward launchers once, on contiguous inputs as training makes them:
    n anchors against m candidates (the same tensor when m == n) of d features, c classes."""
    from vtreid.kernels import hard_mining as k_mining
    from vtreid.kernels import hetero_center as k_center
    from vtreid.kernels import normalized_softmax as k_nce
    from vtreid.kernels import pairwise_distance as k_pair
    x = torch.zeros(n, d, dtype=dtype)
    y = x if m == n else torch.zeros(m, d, dtype=dtype)
    labels, labels_y = torch.arange(n) // 4, torch.arange(m) // 4
    mod, mod_y = (torch.arange(n) % 2).to(torch.int32), (torch.arange(m) % 2).to(torch.int32)
    dist = torch.zeros(n, m, dtype=dtype)
    k_pair.forward(x, y, "euclidean", 0.0)
    k_pair.backward(dist, dist, x, y, torch.ones(n), torch.ones(m), "euclidean")
    k_mining.forward(x, labels, y, labels_y, mod, mod_y, "euclidean", "any", "cross", y is x, 0.0)
    idx = torch.arange(n) % m
    grad = torch.ones(n, dtype=dtype)  # the distances' gradient comes in the features' dtype
    k_mining.backward(grad, grad, x, y, idx, idx, torch.ones(n), torch.ones(n), torch.ones(n), torch.ones(m),
                      "euclidean")
    order, seg, slot, _, _ = k_center.class_slots(labels)
    out = k_center.forward(x[None], order, seg, mod, "sqeuclidean", False, 0.0)
    k_center.backward(x[None], slot, mod, out[0], out[1], out[2], out[3], out[4], torch.ones(1, n), None,
                      "sqeuclidean", False)
    w = torch.zeros(c, d, dtype=dtype)
    target = labels % c
    fwd = k_nce.cross_entropy_forward(x, w, target, 14.0, 0.0, True)
    k_nce.cross_entropy_backward(torch.ones(n), x, w, target, *fwd[1:], 14.0, 0.0)


def write_rand_perm(path, present: dict, ids: int, first) -> Path:
    """A rand_perm_cam.mat in the official layout (a 6 x 1 cell of 1 x ids cells of [10, images] 1-based image
    numbers) for the (identity, camera) -> image count ``present``: trial t's permutation starts with image
    first(pid, cam, n, t) (past n: a file that does not fit the images)."""
    scipy_io = pytest.importorskip("scipy.io")
    import numpy as np
    cells = np.empty((6, 1), dtype=object)
    for cam in range(1, 7):
        per_id = np.empty((1, ids), dtype=object)
        for pid in range(1, ids + 1):
            n = present.get((pid, cam), 0)
            rows = []
            for t in range(1, 11):
                head = first(pid, cam, n, t) if n else None
                rows.append([head] + [k for k in range(1, n + 1) if k != head] if n else [])
            per_id[0, pid - 1] = np.array(rows, dtype=np.uint16).reshape(10, -1 if n else 0)
        cells[cam - 1, 0] = per_id
    scipy_io.savemat(path, {"rand_perm_cam": cells})
    return Path(path)


def write_sysu_rand_perm(root: Path, first=lambda n, trial: n) -> Path:
    """write_rand_perm for the SYSU-MM01 folder ``root``, into its exp/: first(n, t) picks trial t's head."""
    present = {(int(folder.name), int(folder.parent.name[3:])): len(list(folder.glob("*.jpg")))
               for folder in root.glob("cam*/*") if folder.name.isdigit()}
    ids = max(pid for pid, _ in present)
    return write_rand_perm(root / "exp" / "rand_perm_cam.mat", present, ids, lambda pid, cam, n, t: first(n, t))
