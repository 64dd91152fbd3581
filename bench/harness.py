"""The benchmark harness every op family's benchmark uses.

A benchmark names its providers (callables building the op from inputs), an input factory, the
shapes and dtypes; the harness times each provider in each mode and appends one JSON line per
measurement to ``bench/results/<device>.jsonl``:

    modes     forward (outputs), backward (gradients of a fixed upstream grad, forward excluded),
              full (forward + backward)
    timing    GPU: triton.testing.do_bench (median and 20/80 quantiles, ms, L2 flushed);
              CPU: torch.utils.benchmark blocked_autorange (median and 20/80 quantiles over blocks)
    memory    GPU: peak allocated bytes above the inputs (torch.cuda.max_memory_allocated); CPU: none
    metadata  device name, torch / triton / CUDA versions, git commit (and whether it was dirty)

Ratios between providers measured in one run on one device are the claims, not absolute times.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
MODES = ("forward", "backward", "full")


@dataclass
class Provider:
    name: str
    build: Callable  # (inputs: dict) -> zero-argument callable returning the op's output(s)
    available: Callable[[torch.device, torch.dtype], tuple[bool, str]] = lambda device, dtype: (True, "")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"CPU {line.split(':', 1)[1].strip()} x{os.cpu_count()}"
    except OSError:
        pass
    return f"CPU {platform.processor() or platform.machine()} x{os.cpu_count()}"


def device_slug(device: torch.device) -> str:
    name = device_name(device).lower()
    if device.type == "cpu":
        return "cpu"
    return "".join(c if c.isalnum() else "-" for c in name).strip("-").replace("--", "-")


def _git_commit() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def environment(device: torch.device) -> dict:
    try:
        from importlib.metadata import version
        triton_version = version("triton")
    except Exception:  # noqa: BLE001 - triton is optional
        triton_version = None
    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton_version,
        "commit": _git_commit(),
        "python": platform.python_version(),
    }


def _outputs_tensors(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for t in out if isinstance(t, torch.Tensor) and t.requires_grad]


def mode_callable(fn: Callable, inputs: dict, mode: str) -> Callable:
    """Wrap a provider's forward callable into the callable timed for ``mode``."""
    leaves = [t for t in inputs.values() if isinstance(t, torch.Tensor) and t.requires_grad]
    if mode == "forward":
        return fn
    if mode == "full":
        def full():
            outs = _outputs_tensors(fn())
            grads = [torch.ones_like(o) for o in outs]
            torch.autograd.backward(outs, grads)
            for leaf in leaves:
                leaf.grad = None
        return full
    outs = _outputs_tensors(fn())
    grads = [torch.ones_like(o) for o in outs]

    def backward():
        torch.autograd.backward(outs, grads, retain_graph=True)
        for leaf in leaves:
            leaf.grad = None
    return backward


def time_callable(fn: Callable, device: torch.device, min_run_time: float = 0.5) -> dict:
    if device.type == "cuda":
        import triton.testing
        med, p20, p80 = triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8])
        return {"median_ms": med, "p20_ms": p20, "p80_ms": p80}
    from torch.utils import benchmark
    fn()  # warm-up
    m = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    measurement = m.blocked_autorange(min_run_time=min_run_time)
    times = np.asarray(measurement.times) * 1e3
    return {"median_ms": float(np.median(times)), "p20_ms": float(np.quantile(times, 0.2)),
            "p80_ms": float(np.quantile(times, 0.8))}


def peak_memory(fn: Callable, device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return int(torch.cuda.max_memory_allocated(device) - base)


def run(op: str, providers: list[Provider], make_inputs: Callable, cases: list[dict], dtypes, modes,
        device: torch.device, out: Path | None = None, min_run_time: float = 0.5,
        baseline: str = "reference") -> list[dict]:
    """Time every (case, dtype, mode, provider); append JSON lines to ``out``; return the records.
    The "x ref" column is the ``baseline`` provider's time over each provider's."""
    out = out or RESULTS_DIR / f"{device_slug(device)}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    env = environment(device)
    stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    records = []
    print(f"# {op} on {env['device']} (torch {env['torch']}, triton {env['triton']}, commit {env['commit']})")
    print(f"{'shape':<36}{'dtype':<10}{'mode':<10}{'provider':<14}{'median ms':>12}{'p20':>10}{'p80':>10}"
          f"{'x ref':>8}{'peak MiB':>10}")
    for case in cases:
        for dtype in dtypes:
            for mode in modes:
                ref_ms = None
                for provider in providers:
                    ok, why = provider.available(device, dtype)
                    shape = ",".join(f"{k}={v}" for k, v in case.items())
                    if not ok:
                        print(f"{shape:<36}{str(dtype)[6:]:<10}{mode:<10}{provider.name:<14}  skipped: {why}")
                        continue
                    inputs = make_inputs(case, dtype, device, requires_grad=mode != "forward")
                    try:
                        fn = mode_callable(provider.build(inputs), inputs, mode)
                        timing = time_callable(fn, device, min_run_time)
                        memory = peak_memory(fn, device)
                    except torch.OutOfMemoryError:
                        print(f"{shape:<36}{str(dtype)[6:]:<10}{mode:<10}{provider.name:<14}  out of memory")
                        torch.cuda.empty_cache()
                        continue
                    if provider.name == baseline:
                        ref_ms = timing["median_ms"]
                    ratio = ref_ms / timing["median_ms"] if ref_ms else float("nan")
                    record = {"op": op, "case": case, "dtype": str(dtype).replace("torch.", ""), "mode": mode,
                              "provider": provider.name, **timing, "peak_bytes": memory, "time": stamp, **env}
                    records.append(record)
                    with out.open("a") as f:
                        f.write(json.dumps(record) + "\n")
                    mem = f"{memory / 2**20:10.1f}" if memory is not None else f"{'-':>10}"
                    print(f"{shape:<36}{record['dtype']:<10}{mode:<10}{provider.name:<14}"
                          f"{timing['median_ms']:12.4f}{timing['p20_ms']:10.4f}{timing['p80_ms']:10.4f}"
                          f"{ratio:8.2f}{mem}", flush=True)
                    del inputs, fn
    print(f"# appended {len(records)} records to {out}")
    return records


def common_args(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="a few shapes only (smoke run)")
    parser.add_argument("--providers", default=None, help="comma-separated subset of providers")
    parser.add_argument("--dtypes", default=None, help="comma-separated, e.g. float32,bfloat16")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--out", type=Path, default=None, help="JSON lines file (default bench/results/<device>.jsonl)")
    parser.add_argument("--min-run-time", type=float, default=0.5, help="CPU: seconds of timing per case")
    return parser


def parse_dtypes(text: str | None, default) -> list[torch.dtype]:
    if not text:
        return list(default)
    return [getattr(torch, name.strip()) for name in text.split(",")]


def select(providers: list[Provider], text: str | None) -> list[Provider]:
    if not text:
        return providers
    wanted = [p.strip() for p in text.split(",")]
    unknown = set(wanted) - {p.name for p in providers}
    if unknown:
        raise SystemExit(f"unknown providers {sorted(unknown)}; choose from {[p.name for p in providers]}")
    return [p for p in providers if p.name in wanted]


def backend_provider(name: str, op: Callable) -> Provider:
    """A provider running one vtreid backend of ``op(inputs, backend=...)``; unavailable backends are
    reported as skipped rather than silently timed as the reference fallback."""
    from vtreid.ops import _backend

    def available(device, dtype):
        return _backend.availability(name, device, dtype)

    return Provider(name, lambda inputs: (lambda: op(inputs, backend=name)), available)


def compiled_provider(reference: Callable) -> Provider:
    compiled = torch.compile(reference, dynamic=False)
    return Provider("compiled", lambda inputs: (lambda: compiled(inputs)),
                    lambda device, dtype: (True, ""))


def op_providers(reference: Callable, vtreid_op: Callable, *peers: Provider) -> list[Provider]:
    """The standard provider list: reference, compiled, triton, native, then the op's peers."""
    return [
        Provider("reference", lambda inputs: (lambda: reference(inputs))),
        compiled_provider(reference),
        backend_provider("triton", vtreid_op),
        backend_provider("native", vtreid_op),
        *peers,
    ]


def main(op: str, description: str, providers: Callable[[], list[Provider]], make_inputs: Callable,
         cases: Callable, argv=None, gpu_dtypes=(torch.float32, torch.bfloat16), extra_args: Callable | None = None,
         baseline: str = "reference"):
    """Command line shared by the benchmarks. ``cases(device, args)`` returns (cases, dtypes or None, modes
    or None, providers to drop); ``extra_args(parser)`` adds benchmark-specific options."""
    parser = common_args(description)
    if extra_args is not None:
        extra_args(parser)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    chosen = select(providers(), args.providers)
    case_list, dtypes, modes, drop = cases(device, args)
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
        drop = {*drop, "triton"}  # interpreted Triton times Python, not a kernel
    chosen = [p for p in chosen if p.name not in drop]
    default_dtypes = gpu_dtypes if device.type == "cuda" else (torch.float32,)
    run(op, chosen, make_inputs, case_list, dtypes or parse_dtypes(args.dtypes, default_dtypes),
        modes or args.modes.split(","), device, args.out, args.min_run_time, baseline)
