"""Where one op call's time goes: python -m bench.profile [--ops ...] [--backends ...] [--dtypes ...] [--device cuda]

For each op family at its bench target shape (the ``--quick`` case of bench/<family>.py: the training
shapes) and each provider, forward + backward is run ``--iters`` times under torch.profiler after a
warm-up, and one line per (op, dtype, provider) says, per call:

    wall_us     host wall time of the loop / iters, synchronised once at the end: what a step pays when
                the host is the bottleneck (it is, where wall_us >> device_us)
    device_us   GPU kernel time (the profiler's CUDA kernel events; none on a CPU)
    launches    GPU kernels launched (memcpy / memset included)
    aten_ops    ATen ops dispatched (each a launch or an allocation on the host's side)
    top         the ops and kernels that cost most host time (self CPU, us per call)

This is the question the first H100 run left open: Triton's hetero-center loss took 1.36 ms against
native's 0.40 ms, and native's bfloat16 1.72 ms against its float32 0.40 ms, at shapes whose kernels
should take microseconds. Records are appended to --out (default bench/results/<device>-profile.jsonl)
with the harness's environment record.
"""
from __future__ import annotations

import argparse
import importlib
import json
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from bench import harness

#: op -> (bench module, extra arguments of its cases() besides device and quick)
FAMILIES = {"pairwise_distance": ("pairwise_distance", {}), "hard_mining": ("hard_mining", {"large": False}),
            "hetero_center_loss": ("hetero_center", {}), "normalized_cross_entropy": ("normalized_softmax", {})}
PROVIDERS = ("reference", "native", "triton")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def profile_call(fn, device: torch.device, iters: int, top: int = 8) -> dict:
    """Per-call numbers (module docstring) of ``fn`` called ``iters`` times after 3 warm-up calls."""
    for _ in range(3):
        fn()
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    _synchronize(device)
    wall = (time.perf_counter() - start) / iters
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(iters):
            fn()
        _synchronize(device)
    host, device_us, launches, aten = defaultdict(float), 0.0, 0, 0
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            device_us += event.device_time_total
            launches += 1
        else:
            host[event.name] += event.self_cpu_time_total
            aten += event.name.startswith("aten::")
    ranked = sorted(host.items(), key=lambda item: -item[1])[:top]
    return {"wall_us": wall * 1e6, "device_us": device_us / iters if device.type == "cuda" else None,
            "launches": launches / iters if device.type == "cuda" else None, "aten_ops": aten / iters,
            "top": [[name, round(us / iters, 1)] for name, us in ranked]}


def run(ops, providers, dtypes, device: torch.device, iters: int, out=None) -> list[dict]:
    env = harness.environment(device)
    records = []
    for op in ops:
        name, extra = FAMILIES[op]
        module = importlib.import_module(f"bench.{name}")
        case = module.cases(device, True, **extra)[0]
        for dtype in dtypes:
            for provider in harness.select(module.providers(), providers):  # the family's own list
                ok, why = provider.available(device, dtype)
                if not ok:
                    print(f"{op:26s} {str(dtype)[6:]:9s} {provider.name:9s} skipped: {why}")
                    continue
                inputs = module.make_inputs(case, dtype, device, True)
                call = harness.mode_callable(provider.build(inputs), inputs, "full")
                got = profile_call(call, device, iters)
                record = {"op": op, "case": case, "dtype": str(dtype)[6:], "mode": "full", "provider": provider.name,
                          "iters": iters, **got, **env}
                records.append(record)
                device_text = "-" if got["device_us"] is None else f"{got['device_us']:.1f}"
                launch_text = "-" if got["launches"] is None else f"{got['launches']:.1f}"
                print(f"{op:26s} {record['dtype']:9s} {provider.name:9s} wall {got['wall_us']:9.1f} us  device "
                      f"{device_text:>8s} us  launches {launch_text:>5s}  aten ops {got['aten_ops']:6.1f}")
                print("    top: " + ", ".join(f"{n} {us}" for n, us in got["top"]))
    if out is not None:
        with open(out, "a") as f:
            for record in records:
                f.write(json.dumps(record) + "\n")
    return records


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", nargs="+", choices=sorted(FAMILIES), default=sorted(FAMILIES))
    parser.add_argument("--backends", nargs="+", choices=PROVIDERS, default=list(PROVIDERS))
    parser.add_argument("--dtypes", nargs="+", default=None, help="default: float32 (and bfloat16 on CUDA)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--out", default=None, help="JSONL to append to (default bench/results/<device>-profile.jsonl)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtypes = harness.parse_dtypes(args.dtypes, [torch.float32] + ([torch.bfloat16] if device.type == "cuda" else []))
    out = args.out or str(harness.RESULTS_DIR / f"{harness.device_slug(device)}-profile.jsonl")
    run(args.ops, args.backends, dtypes, device, args.iters, out)
    print(f"appended to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
