"""The benchmark harness every op family's benchmark uses.

A benchmark names its providers (callables building the op from inputs), an input factory, the
shapes and dtypes; the harness times each provider in each mode and appends one JSON line per
measurement to ``bench/results/<device>.jsonl``:

    modes     forward (outputs), backward (gradients of a fixed upstream grad, forward excluded),
              full (forward + backward)
    timing    GPU: cuda_quantiles (median and 20/80 quantiles, ms, L2 flushed, the device idle at the start);
              CPU: torch.utils.benchmark blocked_autorange (median and 20/80 quantiles over blocks)
    memory    GPU: peak allocated bytes above the inputs (torch.cuda.max_memory_allocated); CPU: none
    metadata  device name, torch / triton / CUDA versions, git commit (and whether it was dirty)

A provider that fails (raises) is reported as "failed" in the table and writes no record; the run goes
on with the others and exits with status 1 at the end, naming the failures.

--cuda-graph (CUDA only) captures each provider's call in a CUDA graph after three warm-up calls
(autotuning, lazy initialisation) and times its replays: the device's time without the host's (Python,
dispatch, launches), which bounded the small training shapes on the first H100 host. Modes forward and
full only (a backward alone would replay a forward captured elsewhere); no peak memory. A call that
cannot be captured (a host synchronisation, a tuner running inside it) fails as above when it is
vtreid's (a defect: Step 14 wants warmed-up steps capturable) and is reported as skipped when it is a
peer's. Its records carry "cuda_graph": true and are a run of their own; bench.goals judges the eager
runs only.

Ratios between providers measured in one run on one device are the claims, not absolute times.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch._functorch.config

from bench.goals import OURS  # vtreid's providers (the others: eager PyTorch, torch.compile, the peers)

RESULTS_DIR = Path(__file__).resolve().parent / "results"
MODES = ("forward", "backward", "full")
DTYPES = ("float32", "float16", "bfloat16", "float64")

COLUMNS = """\
The table, one row per (shape, dtype, mode, provider):
  median ms, p20, p80  time of one call in milliseconds: median and 20th / 80th percentiles
  x ref                the baseline provider's median over this row's median, in the same shape,
                       dtype and mode (reference: eager PyTorch; numpy in bench.evaluation); above 1
                       means faster than the baseline, nan when the baseline was not run
  peak MiB             GPU memory allocated at peak above the inputs, in MiB; '-' on CPU, where it is
                       not measured
modes: forward (the op's outputs), backward (gradients only, the forward excluded), full (both).
Each measurement is appended as one JSON line to --out (default bench/results/<device>.jsonl);
python -m bench.plot draws them."""


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


def _git_tree() -> str:
    """The hash of the working tree as git would store it (tracked and untracked files that are not ignored):
    two runs of the same sources have the same tree whatever commit the copy's metadata says."""
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "GIT_INDEX_FILE": str(Path(tmp) / "index")}
        try:
            subprocess.run(["git", "add", "-A"], cwd=root, env=env, capture_output=True, check=True)
            return subprocess.run(["git", "write-tree"], cwd=root, env=env, capture_output=True, text=True,
                                  check=True).stdout.strip()[:12]
        except (OSError, subprocess.CalledProcessError):
            return "unknown"


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
        "tree": _git_tree(),
        "python": platform.python_version(),
        # host-bound GPU timings depend on the host and the driver; TF32 changes float32 GEMM speed
        "host_cpu": _host_cpu(),
        "driver": _driver_version() if device.type == "cuda" else None,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32 if device.type == "cuda" else None,
    }


def _host_cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f" x{os.cpu_count()}"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} x{os.cpu_count()}"


def _driver_version() -> str | None:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, check=True, timeout=10).stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


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
        # The graph is kept to time backward alone, again and again; see no_donated_buffers.
        with no_donated_buffers():
            torch.autograd.backward(outs, grads, retain_graph=True)
        for leaf in leaves:
            leaf.grad = None
    return backward


def cuda_quantiles(fn: Callable, device: torch.device, warmup_ms: float = 25.0, rep_ms: float = 100.0,
                   sync=None, event=None) -> tuple[float, float, float]:
    """(median, 20%, 80%) in ms of one call of ``fn``, each timed alone from an idle device.

    triton.testing.do_bench's method (a 256 MB write flushes L2 before each call, CUDA events around it,
    as many calls as fit ``rep_ms``) with one change: it waits for the flush before recording the start.
    do_bench records the start right behind the flush, so the host queued the call's kernels while the
    flush ran (~60-90 us on an H100): a host-bound call measured its host time less that head start, which
    flattered the faster provider at the small training shapes. ``sync`` / ``event``: torch.cuda's
    synchronize and Event, replaceable in tests.
    """
    sync = sync or (lambda: torch.cuda.synchronize(device))
    event = event or (lambda: torch.cuda.Event(enable_timing=True))
    cache = torch.empty(256 * 2**20 // 4, dtype=torch.int32, device=device)
    fn()   # autotuning, lazy initialisation
    sync()
    start, end = event(), event()
    start.record()
    for _ in range(5):
        cache.zero_()
        fn()
    end.record()
    sync()
    estimate = max(start.elapsed_time(end) / 5, 1e-3)
    for _ in range(max(1, int(warmup_ms / estimate))):
        fn()
    times = []
    for _ in range(max(5, int(rep_ms / estimate))):
        cache.zero_()
        sync()   # the device is idle: the call's time includes the host's launching of it
        start.record()
        fn()
        end.record()
        sync()
        times.append(start.elapsed_time(end))
    median, p20, p80 = np.quantile(np.asarray(times), [0.5, 0.2, 0.8])
    return float(median), float(p20), float(p80)


def time_callable(fn: Callable, device: torch.device, min_run_time: float = 0.5) -> dict:
    if device.type == "cuda":
        med, p20, p80 = cuda_quantiles(fn, device)
        return {"median_ms": med, "p20_ms": p20, "p80_ms": p80}
    from torch.utils import benchmark
    fn()  # warm-up
    m = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    measurement = m.blocked_autorange(min_run_time=min_run_time)
    times = np.asarray(measurement.times) * 1e3
    return {"median_ms": float(np.median(times)), "p20_ms": float(np.quantile(times, 0.2)),
            "p80_ms": float(np.quantile(times, 0.8))}


def graphed(fn: Callable, device: torch.device) -> Callable:
    """``fn`` captured in a CUDA graph (torch.cuda.graph, after three warm-up calls on a side stream, as
    torch's capture recipe has it); returns the graph's replay."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


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
        baseline: str = "reference", keep: Callable[[dict, str, str], bool] | None = None,
        cuda_graph: bool = False) -> list[dict]:
    """Time every (case, dtype, mode, provider); append JSON lines to ``out``; return the records.
    The "x ref" column is the ``baseline`` provider's time over each provider's. A provider that raises
    is reported as failed and writes no record; after the last case, failures end the run with
    SystemExit(1) naming them (the records of the measurements that succeeded are kept). ``keep(case, dtype
    name, mode[, provider name])``, when given, picks which combinations of the product, and which providers
    there, are measured; ``cuda_graph``:
    each call captured and replayed (module docstring)."""
    out = out or RESULTS_DIR / f"{device_slug(device)}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    env = environment(device)
    stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    records, failures = [], []
    print(f"# {op} on {env['device']} (torch {env['torch']}, triton {env['triton']}, commit {env['commit']})"
          + (", each call a CUDA graph replay" if cuda_graph else ""))
    print(f"{'shape':<36}{'dtype':<10}{'mode':<10}{'provider':<14}{'median ms':>12}{'p20':>10}{'p80':>10}"
          f"{'x ref':>8}{'peak MiB':>10}")
    for case in cases:
        for dtype in dtypes:
            for mode in modes:
                if keep is not None and not keep(case, str(dtype).replace("torch.", ""), mode):
                    continue
                ref_ms = None
                for provider in providers:
                    if keep is not None and not keep(case, str(dtype).replace("torch.", ""), mode, provider.name):
                        continue
                    ok, why = provider.available(device, dtype)
                    if ok and cuda_graph and mode == "backward":
                        # autograd runs a backward op on its forward's stream: that forward ran outside
                        ok, why = False, "a backward alone is not captured (its forward ran outside the graph)"
                    shape = ",".join(f"{k}={v}" for k, v in case.items())
                    row = f"{shape:<36}{str(dtype)[6:]:<10}{mode:<10}{provider.name:<14}"
                    if not ok:
                        print(f"{row}  skipped: {why}")
                        continue
                    inputs = fn = None
                    try:
                        inputs = make_inputs(case, dtype, device, requires_grad=mode != "forward")
                        fn = mode_callable(provider.build(inputs), inputs, mode)
                        if cuda_graph:
                            try:
                                fn = graphed(fn, device)
                            except Exception as exc:  # noqa: BLE001 - a peer that syncs: reported, not ours to fail
                                if provider.name in OURS:
                                    raise
                                print(f"{row}  skipped: not capturable ({type(exc).__name__})")
                                inputs = fn = None
                                continue
                        timing = time_callable(fn, device, min_run_time)
                        memory = None if cuda_graph else peak_memory(fn, device)  # a replay allocates nothing
                    except torch.OutOfMemoryError:
                        print(f"{row}  out of memory")
                        if provider.name in OURS:   # the memory targets must be able to fail
                            failures.append(f"{provider.name} {mode} {str(dtype)[6:]} {shape}: out of memory")
                        inputs = fn = None
                        torch.cuda.empty_cache()
                        continue
                    except Exception as exc:  # noqa: BLE001 - report, write no record, go on with the others
                        lines = str(exc).strip().splitlines()
                        error = f"{type(exc).__name__}: {lines[0] if lines else ''}"
                        print(f"{row}  failed: {error}", flush=True)
                        failures.append(f"{provider.name} {mode} {str(dtype)[6:]} {shape}: {error}")
                        inputs = fn = None
                        continue
                    if provider.name == baseline:
                        ref_ms = timing["median_ms"]
                    ratio = ref_ms / timing["median_ms"] if ref_ms else float("nan")
                    record = {"op": op, "case": case, "dtype": str(dtype).replace("torch.", ""), "mode": mode,
                              "provider": provider.name, **timing, "peak_bytes": memory, "time": stamp, **env,
                              **({"cuda_graph": True} if cuda_graph else {})}
                    records.append(record)
                    with out.open("a") as f:
                        f.write(json.dumps(record) + "\n")
                    mem = f"{memory / 2**20:10.1f}" if memory is not None else f"{'-':>10}"
                    print(f"{row}{timing['median_ms']:12.4f}{timing['p20_ms']:10.4f}{timing['p80_ms']:10.4f}"
                          f"{ratio:8.2f}{mem}", flush=True)
                    inputs = fn = None
    print(f"# appended {len(records)} records to {out}")
    if failures:
        raise SystemExit(f"{len(failures)} measurement(s) failed and wrote no record:\n  " + "\n  ".join(failures))
    return records


def common_args(module: str, description: str, provider_names: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=description, epilog=COLUMNS,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu or cuda (default: cuda when a GPU is present, else cpu)")
    parser.add_argument("--quick", action="store_true", help="one shape only (smoke run)")
    parser.add_argument("--providers", default=None,
                        help=f"comma-separated subset of: {', '.join(provider_names)} (default: all; providers "
                             f"that cannot run on the device are reported as skipped)")
    parser.add_argument("--dtypes", default=None,
                        help=f"comma-separated subset of: {', '.join(DTYPES)} (default: float32 on CPU; "
                             f"float32,bfloat16 or the benchmark's GPU list on CUDA)")
    parser.add_argument("--modes", default=None,
                        help=f"comma-separated subset of: {', '.join(MODES)} (default: all three)")
    parser.add_argument("--out", type=Path, default=None, help="JSON lines file (default bench/results/<device>.jsonl)")
    parser.add_argument("--min-run-time", type=float, default=0.5, help="CPU: seconds of timing per case (default 0.5)")
    parser.add_argument("--cuda-graph", action="store_true",
                        help="CUDA: time each call captured in a CUDA graph and replayed (device time without the "
                             "host's); a vtreid call that cannot be captured fails, a peer's is skipped")
    parser.add_argument("--goals", action="store_true",
                        help="measure only what bench.goals judges on this device: the targets' shapes, dtypes and "
                             "modes, every provider")
    return parser


def choose(parser: argparse.ArgumentParser, what: str, text: str | None, valid) -> list[str] | None:
    """The comma-separated names of ``text`` (None when empty), each one of ``valid``; an unknown name
    is a usage error that lists the valid ones."""
    if not text:
        return None
    wanted = [w.strip() for w in text.split(",") if w.strip()]
    unknown = [w for w in wanted if w not in valid]
    if unknown or not wanted:
        parser.error(f"unknown {what} {unknown or [text]}; choose from {list(valid)}")
    return list(dict.fromkeys(wanted))


def parse_dtypes(names: list[str] | None, default) -> list[torch.dtype]:
    if not names:
        return list(default)
    return [getattr(torch, name) for name in names]


def select(providers: list[Provider], names: list[str] | None) -> list[Provider]:
    if not names:
        return providers
    return [p for p in providers if p.name in names]


def backend_provider(name: str, op: Callable) -> Provider:
    """A provider running one vtreid backend of ``op(inputs, backend=...)``; unavailable backends are
    reported as skipped rather than silently timed as the reference fallback."""
    from vtreid.ops import _backend

    def available(device, dtype):
        return _backend.availability(name, device, dtype)

    return Provider(name, lambda inputs: (lambda: op(inputs, backend=name)), available)


def no_donated_buffers():
    """The backward mode calls backward again and again on one graph (retain_graph=True). A compiled
    backward that donates (overwrites) its saved buffers cannot run twice and refuses retain_graph, so
    graphs are compiled, and their backward run, without donation (a memory saving, not a speed-up)."""
    return torch._functorch.config.patch(donated_buffer=False)


def compiled_provider(reference: Callable, backend: str | Callable = "inductor") -> Provider:
    """torch.compile of the reference, compiled without donated buffers (see no_donated_buffers). Each
    measurement starts from an empty compile cache: a run's shapes x dtypes x modes are more graphs than
    Dynamo's recompile_limit (8), past which it silently runs the function eagerly (the GPU mining sweep's
    fifth case, N = 256, the target shape, was timed eager as "compiled"); hitting the limit anyway raises."""
    compiled = torch.compile(reference, dynamic=False, backend=backend)

    def build(inputs):
        torch._dynamo.reset()

        def call():
            with no_donated_buffers(), torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
                return compiled(inputs)
        return call

    return Provider("compiled", build, lambda device, dtype: (True, ""))


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
         baseline: str = "reference", module: str | None = None):
    """Command line shared by the benchmarks. ``cases(device, args)`` returns (cases, dtypes or None, modes
    or None, providers to drop); ``extra_args(parser)`` adds benchmark-specific options; ``module`` (the
    benchmark's module, e.g. bench.hard_mining; default bench.<op>) names the command in --help."""
    all_providers = providers()
    parser = common_args(module or f"bench.{op}", description, [p.name for p in all_providers])
    if extra_args is not None:
        extra_args(parser)
    args = parser.parse_args(argv)
    chosen = select(all_providers, choose(parser, "providers", args.providers, [p.name for p in all_providers]))
    dtype_names = choose(parser, "dtypes", args.dtypes, DTYPES)
    mode_names = choose(parser, "modes", args.modes, MODES)
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"unknown device {args.device!r}; choose cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        parser.error(f"unknown device {args.device!r}; choose cpu or cuda")
    if args.cuda_graph and device.type != "cuda":
        parser.error("--cuda-graph needs --device cuda (CUDA graphs)")
    case_list, dtypes, modes, drop = cases(device, args)
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
        drop = {*drop, "triton"}  # interpreted Triton times Python, not a kernel
    forced_dtypes = dtypes and [str(d).replace("torch.", "") for d in dtypes]
    for what, forced, asked in (("modes", modes, mode_names), ("dtypes", forced_dtypes, dtype_names)):
        if forced and asked and set(asked) - set(forced):
            parser.error(f"--{what} {','.join(asked)}: this run measures only {','.join(forced)}")
    chosen = [p for p in chosen if p.name not in drop]
    default_dtypes = gpu_dtypes if device.type == "cuda" else (torch.float32,)
    dtypes = dtypes or parse_dtypes(dtype_names, default_dtypes)
    modes = modes or mode_names or list(MODES)
    keep = None
    if args.goals:
        case_list, dtypes, modes, keep = goal_selection(parser, op, device, case_list, dtypes, modes)
    run(op, chosen, make_inputs, case_list, dtypes, modes, device, args.out, args.min_run_time, baseline, keep,
        cuda_graph=args.cuda_graph)


def goal_selection(parser, op: str, device: torch.device, cases: list[dict], dtypes, modes):
    """--goals: of this run's cases, dtypes and modes, the combinations a target of bench.goals judges on
    this kind of device (cases, dtypes, modes to loop over, and keep(case, dtype, mode) for the product)."""
    from bench import goals
    targets = [t for t in goals.TARGETS if t.op == op and t.gpu == (device.type == "cuda")]

    def keep(case, dtype, mode, provider=None):
        """The combination is judged (and, given a provider, that provider is ours or a target's
        counterpart there: the others, e.g. torch.compile where no target compares with it, cost minutes
        of a GPU lease for nothing)."""
        return any(t.case(case) and t.mode == mode and (t.dtypes is None or dtype in t.dtypes)
                   and (provider is None or provider in OURS or provider == t.against) for t in targets)
    names = {d: str(d).replace("torch.", "") for d in dtypes}
    wanted = [(c, d, m) for c in cases for d in dtypes for m in modes if keep(c, names[d], m)]
    if not wanted:
        parser.error(f"--goals: no target of {op} on {device.type} among this run's shapes, dtypes and modes")
    return ([c for c in cases if any(w[0] is c for w in wanted)], [d for d in dtypes if any(w[1] == d for w in wanted)],
            [m for m in modes if any(w[2] == m for w in wanted)], keep)
