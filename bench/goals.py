"""The benchmarks' targets, checked against measured records: python -m bench.goals [FILE.jsonl ...]

Reads the JSON lines the benchmarks append (default: every bench/results/*.jsonl) and prints one row per
target and vtreid provider: the measured ratio, the bound, and PASS or FAIL, or MISSING when no run
measured it. A ratio is taken only between providers of one run (one op, one device, one timestamp: the
harness stamps every record of a run alike), as the harness says claims are made; where the files hold
several runs of a target, the latest run that measured both sides of it is judged (its time is shown). The targets are those in each benchmark's docstring
(issues 2-5 and 8) and in Step 14:

    GPU  pairwise forward, N = M = 8192, D = 2048, fp16 / bf16: at most 1.25x torch.mm (`matmul`)
         pairwise full, N = M = 256, D = 2048, fp32 / bf16: at least 3x eager
         mining full, N = 256, D = 2048: at least 10x eager, 2x torch.compile, 20x pml
         mining --large forward (N = 65536, fp16): peak under 1 GiB
         hetero-center full, N = 64, D = 512, S = 6: at least 3x eager, 1.5x torch.compile
         normalized CE full, C = 395: at least 3x eager
         normalized CE full, N = 256, D = 2048, C = 100000, bf16: at least 1.5x eager, a third of its
           peak memory, and not slower than Liger-Kernel
         evaluation: at least 20x numpy; --large peak under 4 GiB
    CPU  native not slower than eager (pairwise, hetero-center, normalized CE at the shapes above;
         evaluation against numpy), mining native at least 2x eager at N = 256, D = 2048, fp32

Every (device, dtype, vtreid provider) a target expects is listed: on a GPU triton and native, on a CPU
native (the evaluation: its own "vtreid"); the target's dtypes, or those measured. One absent is MISSING (a provider that failed or did not
load writes no record). A verdict from a run older than the newest run of that target on that device is
STALE: the newest run did not measure it (a failure there must not be hidden by an older PASS). The run's
source tree (the harness's "tree" hash, else its commit) is shown.

Exit status 1 when a measured target fails, else 0 (MISSING and STALE are not failures).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

RESULTS_DIR = Path(__file__).resolve().parent / "results"
OURS = ("triton", "native", "vtreid")
GIB = 2**30


@dataclass(frozen=True)
class Target:
    name: str
    op: str
    case: Callable[[dict], bool]
    mode: str
    gpu: bool
    dtypes: tuple[str, ...] | None = None   # None: every dtype measured
    against: str | None = None              # the other provider of the ratio
    at_least: float | None = None           # against's median / ours >= at_least (speed-up)
    at_most: float | None = None            # ours' median / against's <= at_most (slow-down bound)
    peak_under: float | None = None         # ours' peak bytes < peak_under
    peak_fraction: float | None = None      # ours' peak <= peak_fraction x against's peak


def _shape(**want) -> Callable[[dict], bool]:
    """The case is exactly these keys and values (so a variant with another key, e.g. mining rules, is not)."""
    return lambda case: case == want


def _has(**want) -> Callable[[dict], bool]:
    return lambda case: all(case.get(k) == v for k, v in want.items())


PAIR_8192 = _shape(N=8192, M=8192, D=2048)
PAIR_256 = _shape(N=256, M=256, D=2048)
MINE_256 = _shape(N=256, D=2048)
CENTERS = _shape(N=64, D=512, S=6)
NCE_395 = _has(C=395)
NCE_LARGE = _shape(N=256, D=2048, C=100000)
EVAL = lambda case: set(case) == {"Q", "G", "D", "trials"}  # noqa: E731
EVAL_LARGE = lambda case: set(case) == {"Q", "G", "D", "K"}  # noqa: E731

TARGETS = [
    Target("pairwise forward 8192^2 x 2048 <= 1.25x mm", "pairwise_distance", PAIR_8192, "forward", True,
           ("float16", "bfloat16"), against="matmul", at_most=1.25),
    Target("pairwise full 256^2 x 2048 >= 3x eager", "pairwise_distance", PAIR_256, "full", True,
           ("float32", "bfloat16"), against="reference", at_least=3.0),
    Target("mining full N=256 >= 10x eager", "hard_mining", MINE_256, "full", True, against="reference", at_least=10.0),
    Target("mining full N=256 >= 2x compile", "hard_mining", MINE_256, "full", True, against="compiled", at_least=2.0),
    Target("mining full N=256 >= 20x pml", "hard_mining", MINE_256, "full", True, against="pml", at_least=20.0),
    Target("mining --large peak < 1 GiB", "hard_mining", _shape(N=65536, D=2048), "forward", True, ("float16",),
           peak_under=1 * GIB),
    Target("hetero-center full >= 3x eager", "hetero_center_loss", CENTERS, "full", True, against="reference",
           at_least=3.0),
    Target("hetero-center full >= 1.5x compile", "hetero_center_loss", CENTERS, "full", True, against="compiled",
           at_least=1.5),
    Target("normalized CE full C=395 >= 3x eager", "normalized_cross_entropy", NCE_395, "full", True,
           against="reference", at_least=3.0),
    Target("normalized CE full C=1e5 bf16 >= 1.5x eager", "normalized_cross_entropy", NCE_LARGE, "full", True,
           ("bfloat16",), against="reference", at_least=1.5),
    Target("normalized CE full C=1e5 bf16 peak <= eager / 3", "normalized_cross_entropy", NCE_LARGE, "full", True,
           ("bfloat16",), against="reference", peak_fraction=1 / 3),
    Target("normalized CE full C=1e5 bf16 not slower than Liger", "normalized_cross_entropy", NCE_LARGE, "full", True,
           ("bfloat16",), against="liger", at_least=1.0),
    Target("evaluation >= 20x numpy", "sysu_evaluation", EVAL, "forward", True, against="numpy", at_least=20.0),
    Target("evaluation --large peak < 4 GiB", "sysu_evaluation", EVAL_LARGE, "forward", True, peak_under=4 * GIB),
    Target("CPU pairwise full 256^2 x 2048 not slower than eager", "pairwise_distance", PAIR_256, "full", False,
           against="reference", at_least=1.0),
    Target("CPU mining full N=256 fp32 >= 2x eager", "hard_mining", MINE_256, "full", False, ("float32",),
           against="reference", at_least=2.0),
    Target("CPU hetero-center full not slower than eager", "hetero_center_loss", CENTERS, "full", False,
           against="reference", at_least=1.0),
    Target("CPU normalized CE full not slower than eager", "normalized_cross_entropy", NCE_395, "full", False,
           against="reference", at_least=1.0),
    Target("CPU evaluation not slower than numpy", "sysu_evaluation", EVAL, "forward", False, against="numpy",
           at_least=1.0),
]


def is_gpu(record: dict) -> bool:
    return not str(record.get("device", "")).startswith("CPU")


def load(paths: list[Path]) -> list[dict]:
    records = []
    for path in paths:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SystemExit(f"{path}:{number}: not a JSON line ({exc.msg})") from exc
            records.append(record)
    return records


def is_measurement(record: dict) -> bool:
    """A benchmark harness record of an eager run (bench.overhead writes other lines; a --cuda-graph run
    times the device alone, which is not what the targets claim)."""
    return all(k in record for k in ("op", "case", "provider", "mode", "dtype", "median_ms", "time", "device")) \
        and not record.get("cuda_graph")


@dataclass
class Verdict:
    target: str
    device: str
    dtype: str
    provider: str
    shape: str
    measured: str
    bound: str
    status: str   # PASS, FAIL, STALE or MISSING
    run: str = "-"   # the run's timestamp
    tree: str = "-"  # the run's source tree (or commit)


def _key(case: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in case.items())


def expected_providers(target: Target) -> tuple[str, ...]:
    """The vtreid providers a target judges: the evaluation's own ("vtreid"); the ops' fused backends."""
    if target.op == "sysu_evaluation":
        return ("vtreid",)
    return ("triton", "native") if target.gpu else ("native",)


def judge(records: list[dict], targets: list[Target] = TARGETS) -> list[Verdict]:
    """One verdict per (target, device, dtype, shape, vtreid provider), from the latest run that measured
    what the target compares (the provider and its counterpart together, or the provider's peak), STALE
    when a newer run of the target on that device did not; MISSING for each expected (device, dtype,
    provider) no run measured, or for a target no run measured at all."""
    verdicts = []
    for t in targets:
        mine = [r for r in records if is_measurement(r) and r["op"] == t.op and r["mode"] == t.mode and is_gpu(r) == t.gpu
                and t.case(r["case"]) and (t.dtypes is None or r["dtype"] in t.dtypes)]
        runs: dict[tuple, dict[str, dict]] = {}   # (device, dtype, shape, time) -> provider -> record
        for r in mine:
            runs.setdefault((r["device"], r["dtype"], _key(r["case"]), r["time"]), {})[r["provider"]] = r
        best: dict[tuple, tuple[dict, dict | None]] = {}   # (device, dtype, shape, provider) -> (ours, other)
        for (device, dtype, shape, time), run in sorted(runs.items(), key=lambda item: item[0][3]):
            for provider in OURS:
                ours = run.get(provider)
                if ours is None:
                    continue
                other = run.get(t.against) if t.against else None
                if t.peak_under is not None or t.peak_fraction is not None:
                    if ours.get("peak_bytes") is None or (t.peak_fraction is not None and
                                                          not (other or {}).get("peak_bytes")):
                        continue
                elif other is None:
                    continue
                best[(device, dtype, shape, provider)] = (ours, other)   # later runs replace earlier ones
        newest = {}   # device -> the newest run of this target there
        for r in mine:
            newest[r["device"]] = max(newest.get(r["device"], ""), r["time"])
        for (device, dtype, shape, provider), (ours, other) in sorted(best.items()):
            def verdict(measured, bound, ok):
                status = ("PASS" if ok else "FAIL") if ours["time"] == newest[device] else "STALE"
                return Verdict(t.name, device, dtype, provider, shape, measured, bound, status, ours["time"],
                               ours.get("tree") or ours.get("commit", "-"))
            if t.peak_under is not None:
                verdicts.append(verdict(f"{ours['peak_bytes'] / GIB:.3f} GiB", f"< {t.peak_under / GIB:g} GiB",
                                        ours["peak_bytes"] < t.peak_under))
            elif t.peak_fraction is not None:
                fraction = ours["peak_bytes"] / other["peak_bytes"]
                verdicts.append(verdict(f"{fraction:.3f} of {t.against}", f"<= {t.peak_fraction:.3f}",
                                        fraction <= t.peak_fraction))
            elif t.at_most is not None:
                slowdown = ours["median_ms"] / other["median_ms"]
                verdicts.append(verdict(f"{slowdown:.2f}x {t.against}", f"<= {t.at_most:g}x", slowdown <= t.at_most))
            else:
                speedup = other["median_ms"] / ours["median_ms"]
                verdicts.append(verdict(f"{speedup:.2f}x vs {t.against}", f">= {t.at_least:g}x",
                                        speedup >= t.at_least))
        if not mine:
            verdicts.append(Verdict(t.name, "GPU" if t.gpu else "CPU", "-", "-", "-", "-", "-", "MISSING"))
            continue
        judged = {(device, dtype, provider) for device, dtype, _, provider in best}
        for device in sorted(newest):
            dtypes = t.dtypes or sorted({r["dtype"] for r in mine if r["device"] == device})
            for dtype in dtypes:
                for provider in expected_providers(t):
                    if (device, dtype, provider) not in judged:
                        verdicts.append(Verdict(t.name, device, dtype, provider, "-", "-", "-", "MISSING"))
    return verdicts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.goals", description=__doc__.splitlines()[0],
                                     epilog=__doc__.split("\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="*", type=Path, help="JSON lines files (default: bench/results/*.jsonl)")
    parser.add_argument("--gpu-only", action="store_true", help="leave out the CPU targets")
    args = parser.parse_args(argv)
    files = args.files or sorted(RESULTS_DIR.glob("*.jsonl"))
    for path in files:
        if not path.is_file():
            parser.error(f"no such file: {path}")
    targets = [t for t in TARGETS if t.gpu or not args.gpu_only]
    verdicts = judge(load(files), targets)
    print(f"{'target':<54}{'status':<9}{'measured':<22}{'bound':<12}{'provider':<9}{'dtype':<10}{'device':<28}"
          f"{'run':<27}{'tree':<14}shape")
    for v in verdicts:
        print(f"{v.target:<54}{v.status:<9}{v.measured:<22}{v.bound:<12}{v.provider:<9}{v.dtype:<10}{v.device[:27]:<28}"
              f"{v.run:<27}{v.tree[:13]:<14}{v.shape}")
    counts = {s: sum(v.status == s for v in verdicts) for s in ("PASS", "FAIL", "STALE", "MISSING")}
    print(f"# {counts['PASS']} pass, {counts['FAIL']} fail, {counts['STALE']} stale, {counts['MISSING']} missing "
          f"({len(files)} file(s))")
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
