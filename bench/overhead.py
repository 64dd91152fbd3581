"""Fixed cost per call of every op: python -m bench.overhead [--backend native|triton] [--device cpu|cuda]

At tiny shapes (N = 8, D = 16, C = 8) the kernels do almost nothing, so a call's time is its fixed cost:
argument checks, backend resolution, the autocast wrapper, torch.library dispatch and autograd. Three
providers per op, forward only and forward + backward:

    public    vtreid.ops.<op>(..., backend=<backend>)        what a training step pays
    dispatch  the registered fused op called directly        dispatcher + autograd + kernel, none of our
                                                             Python for native (autograd in C++,
                                                             csrc/autograd.cpp); custom_op + the Python
                                                             autograd formula for triton
    eager     vtreid.ops.reference                           eager PyTorch's own fixed cost

``public - dispatch`` is the overhead that is ours to cut (Step 14). For Triton it is negative: outside
torch.compile the public ops skip the custom op's dispatch (vtreid/ops/_registry.py, ``FusedOp.call``).

``--stub-kernels`` replaces every Triton kernel by a launch that runs nothing (its grid function still
runs: launchers read it), so on a CPU, under TRITON_INTERPRET=1, the Triton columns are the host cost of
our layers and launchers without the interpreter's (or Triton's own JIT launch) cost; the outputs are
uninitialised, the times are what matters. Times are the median over blocks
(torch.utils.benchmark), in microseconds, appended to bench/results/<device>-overhead.jsonl with the
harness's environment record. Compare numbers from one run on one machine only.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os

import torch
import torch.utils.benchmark as benchmark

from bench import harness

N, D, C = 8, 16, 8


def _inputs(device, requires_grad):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=g).to(device).requires_grad_(requires_grad)
    y = torch.randn(N, D, generator=g).to(device).requires_grad_(requires_grad)
    w = torch.randn(C, D, generator=g).to(device).requires_grad_(requires_grad)
    labels = torch.arange(N, device=device) % 4
    modality = (torch.arange(N, device=device) // 2 % 2).to(torch.int64)
    return x, y, w, labels, modality


def cases(backend: str):
    """{op: (public, dispatch, eager)}: each a function of the inputs returning a tensor to sum."""
    import vtreid.ops as ops
    from vtreid.ops import reference as ref
    # the modules, not the functions of the same names that vtreid.ops exports
    hm, ns, pd = (importlib.import_module(f"vtreid.ops.{m}")
                  for m in ("hard_mining", "normalized_softmax", "pairwise_distance"))

    def mining_dispatch(x, y, w, lab, mod):
        return hm.FUSED[backend].forward(x, lab, x, lab, None, None, "euclidean", "any", "any", True)[0]

    def nce_dispatch(x, y, w, lab, mod):
        return ns.FUSED[backend].forward(x, w, lab, 16.0, 0.0)[0]

    return {
        "pairwise_distance": (
            lambda x, y, w, lab, mod: ops.pairwise_distance(x, y, backend=backend),
            lambda x, y, w, lab, mod: pd.FUSED[backend].forward(x, y, "euclidean")[0],
            lambda x, y, w, lab, mod: ref.pairwise_distance(x, y, "euclidean"),
        ),
        "hard_mining": (
            lambda x, y, w, lab, mod: ops.hard_mining(x, lab, backend=backend).pos_dist,
            mining_dispatch,
            lambda x, y, w, lab, mod: ref.hard_mining(x, lab)[0],
        ),
        "normalized_cross_entropy": (
            lambda x, y, w, lab, mod: ops.normalized_cross_entropy(x, w, lab, scale=16.0, reduction="none",
                                                                   backend=backend),
            nce_dispatch,
            lambda x, y, w, lab, mod: ref.normalized_cross_entropy(x, w, lab, scale=16.0, reduction="none"),
        ),
        "hetero_center_loss": (
            lambda x, y, w, lab, mod: ops.hetero_center_loss(x, lab, mod, backend=backend),
            None,
            lambda x, y, w, lab, mod: ref.hetero_center_loss(x, lab, mod),
        ),
    }


class _NoLaunch:
    """Stands in for a Triton kernel under --stub-kernels: runs the launch's grid function with the
    kernel's first config and nothing else."""

    def __init__(self, kernel):
        self.kernel = kernel

    def __getattr__(self, name):  # launchers may read the kernel's attributes (configs, arg_names, ...)
        return getattr(self.kernel, name)

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            if callable(grid):
                configs = getattr(self.kernel, "configs", None)
                meta = dict(configs[0].kwargs) if configs else {}
                grid({**dict(zip(self.kernel.arg_names, args)), **kwargs, **meta})
        return launch


@contextlib.contextmanager
def stub_kernels():
    """Every Triton kernel of vtreid.kernels replaced by a _NoLaunch while inside; restored after."""
    modules = [importlib.import_module(f"vtreid.kernels.{m}")
               for m in ("hard_mining", "hetero_center", "normalized_softmax", "pairwise_distance")]
    saved = [(module, name, getattr(module, name)) for module in modules for name in dir(module)
             if name.startswith("_") and name.endswith("_kernel")]
    for module, name, kernel in saved:
        setattr(module, name, _NoLaunch(kernel))
    try:
        yield
    finally:
        for module, name, kernel in saved:
            setattr(module, name, kernel)


def _time(fn, args, full: bool) -> float:
    def call():
        out = fn(*args)
        if full:
            out.sum().backward()
    call()  # warm-up: autotuning, lazy imports, first-call caches
    timer = benchmark.Timer(stmt="call()", globals={"call": call})
    return timer.blocked_autorange(min_run_time=0.3).median * 1e6


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="native", choices=["native", "triton"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--out", default=None, help="JSONL to append to (default bench/results/<device>-overhead.jsonl)")
    parser.add_argument("--stub-kernels", action="store_true",
                        help="Triton kernels launch nothing: the host cost of the Triton path on a CPU (sets "
                             "TRITON_INTERPRET=1 for CPU tensors)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.stub_kernels and device.type == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before vtreid.kernels imports triton
    table = cases(args.backend)
    env = harness.environment(device)
    out = args.out or str(harness.RESULTS_DIR / f"{harness.device_slug(device)}-overhead.jsonl")
    rows = []
    stubbed = " (Triton kernels stubbed)" if args.stub_kernels else ""
    print(f"fixed cost per call, microseconds (median of blocks), backend {args.backend}{stubbed}, {env['device']}")
    print(f"{'op':28} {'mode':8} {'public':>9} {'dispatch':>9} {'ours':>9} {'eager':>9}")
    with stub_kernels() if args.stub_kernels else contextlib.nullcontext():
        for op, (public, dispatch, eager) in table.items():
            for full in (False, True):
                args_ = _inputs(device, requires_grad=full)
                t = {name: (_time(fn, args_, full) if fn is not None else float("nan"))
                     for name, fn in (("public", public), ("dispatch", dispatch), ("eager", eager))}
                mode = "full" if full else "forward"
                print(f"{op:28} {mode:8} {t['public']:9.1f} {t['dispatch']:9.1f} "
                      f"{t['public'] - t['dispatch']:9.1f} {t['eager']:9.1f}")
                rows.append({**env, "bench": "overhead", "op": op, "mode": mode, "backend": args.backend,
                             "stub_kernels": args.stub_kernels, "us_public": t["public"],
                             "us_dispatch": t["dispatch"], "us_eager": t["eager"]})
    harness.RESULTS_DIR.mkdir(exist_ok=True)
    with open(out, "a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    print(f"appended {len(rows)} records to {out}")


if __name__ == "__main__":
    main()
