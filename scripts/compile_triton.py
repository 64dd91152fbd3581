"""Compile every Triton kernel of kernels/ for real GPUs, without a GPU, and tabulate what it costs.

For each kernel, every autotune config (the GPU list, ``kernel.gpu_configs``), every input dtype and every
constexpr variant the ops launch, compiles for sm_80 and sm_90 (``GPUTarget("cuda", arch, 32)``; --arch also
takes 86 and 89, the RTX 30xx / 40xx, A10, L4 and L40 parts, 87 (Jetson Orin), 100 (B200), 103 (B300), 120 (RTX
50xx, RTX PRO 6000 Blackwell) and 121 (DGX Spark); 103 and 121 need Triton 3.9's ptxas) and writes one row per
variant: registers, spilled bytes, local (stack) bytes, shared memory, the tensor-core instruction the PTX
issues (tcgen05, wgmma, mma.sync, or none), and whether the loads are pipelined (asynchronous copies to shared
memory over num_stages). Each variant is compiled under the specialization Triton's JIT gives the ops' launches
on contiguous features (LAUNCH_SPECS: unit strides are constants, pointers and row strides 16-aligned) and under
none ("strided", as for a transposed view). Fails (exit 1) on a compile error, on shared memory above the
architecture's per-block limit (sm_80 / sm_87: 163 KB, sm_86 / sm_89 / sm_120 / sm_121: 99 KB, sm_90 / sm_100 /
sm_103: 227 KB, all with opt-in), or when the PTX uses an approximate square root (sqrt.approx: distances are
compared exactly; the kernels use tl.sqrt_rn), or when a half variant of a GEMM kernel issues no tensor-core
instruction (TENSOR_CORE_KERNELS). With ``--no-spills 80 86 90 100 120`` (CI's) a register spill in a contiguous launch on those
architectures fails too: every config list is kept spill-free there (CI checks it with the pinned Triton and the
GPU image's 3.6); spills of strided launches are listed, not failed. A config marked ``not_on(config, 80)`` in
kernels/ (sm_80's ptxas spills it) is never tuned on sm_80, so it is not compiled for sm_80 either (likewise on
every other architecture; 86 and 89 are marked together as ``SM_86_89``: their rows are identical; a mark of 100
or 120 covers 103 or 121, whose sweeps spill in the same configs); a kernel launched with fixed options
(``kernel.launch_options``) is compiled with those.

    python scripts/compile_triton.py                 full sweep, both architectures
    python scripts/compile_triton.py --subset        every kernel and every config at least once per arch (CI)
    python scripts/compile_triton.py --python PY     run the sweep with another interpreter (another Triton,
                                                     e.g. the GPU image's 3.6 in its own venv)
Options: --arch 80 86 87 89 90 100 103 120 121 (default 80 90), --kernel NAME (repeatable), --spec contiguous|strided
(repeatable), --out table.tsv, --jobs N, --no-spills ARCH [ARCH ...].
Registers and spills come from cuobjdump --dump-resource-usage on the cubin (Triton's bundled one; no GPU).
Spilled bytes are the per-thread stack frame (STACK), not LOCAL, which cuobjdump leaves at 0: a Triton
kernel has no local arrays and no calls, so its stack frame is spill space (ptxas -v on the same PTX
reports "728 bytes stack frame, 724 bytes spill stores" where cuobjdump says STACK:728 LOCAL:0). Until
Step 14 the table read LOCAL and so reported no spills where most large-tile configs spilled.
"""
from __future__ import annotations

import argparse
import itertools
import os
import re
import shutil
import importlib.util
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 87: 163 * 1024, 89: 99 * 1024, 90: 227 * 1024, 100: 227 * 1024,
                103: 227 * 1024, 120: 99 * 1024, 121: 99 * 1024}
FLOAT_DTYPES = ("fp32", "fp16", "bf16")
FEATURE_PTRS = {"X", "Y", "A", "B", "C", "E", "IN", "W", "OUT", "GRAD_A", "GRAD_X", "POS_OUT", "NEG_OUT", "GP", "GN"}
# LABELS of the slot kernels may be int32 too: compiled as int64, the wider loads
I64_PTRS = {"AL", "CL", "TARGET", "ORDER", "SEG", "SLOT", "POS_I", "NEG_I", "PI", "NI", "COUNTS", "LABELS",
            "SORTED_LABELS", "SORTED_SLOT"}
I32_PTRS = {"AM", "CM", "MOD"}
FLOAT_SCALARS = {"tau", "scale", "smoothing", "margin"}
INT_SCALARS = {"PARTS", "SPLITS"}
# Kernels whose half (fp16/bf16) variants multiply on tensor cores, with the constexprs under which they
# run a GEMM at all (the NCE gradient kernel reloads saved dot products when SAVE_DOTS): such a variant
# without mma/wgmma in its PTX fails the sweep. float32 runs IEEE FMA dots by design (no TF32).
TENSOR_CORE_KERNELS = {"_pairwise_fwd_kernel": {}, "_pairwise_bwd_kernel": {}, "_mining_fwd_kernel": {},
                       "_nce_fwd_kernel": {}, "_nce_grad_kernel": {"SAVE_DOTS": False}, "_gq_mm_kernel": {}}
# pointers whose dtype is not the input's in one kernel (Gq is float32 whatever the features' dtype)
PTR_OVERRIDES = {"_gq_mm_kernel": {"A": "*fp32"}}

# Constexpr variants the ops can launch, per kernel (BLOCK_* of autotuned kernels come from their configs).
VARIANTS = {
    "_pairwise_fwd_kernel": {"METRIC": (0, 1, 2), "OFFSETS_I32": (True,)},  # False (> 2^31 / 128 columns): 64-bit
    "_pairwise_bwd_kernel": {"METRIC": (0, 1, 2)},
    "_row_norms_kernel": {"BLOCK_R": (1, 16), "BLOCK_D": (16, 128)},
    "_pairwise_coef_kernel": {"METRIC": (0, 1, 2), "BLOCK_N": (16, 32), "BLOCK_M": (16, 64)},
    "_mining_fwd_kernel": {"METRIC": (0, 1, 2), "POS_RULE": (0, 1, 2), "NEG_RULE": (0, 1, 2), "SELF": (False, True)},
    "_mining_pair_grad_kernel": {"METRIC": (0, 1, 2), "BLOCK_N": (16,), "BLOCK_D": (16, 32, 64)},
    "_candidate_grad_kernel": {"BLOCK_D": (1, 8, 64)},
    "_mining_combine_kernel": {"BLOCK_N": (128,)},
    "_centers_fwd_kernel": {"METRIC": (1, 2), "STRONG": (False, True), "SPLIT": (False, True), "BLOCK_D": (16, 32, 64)},
    "_centers_combine_kernel": {"METRIC": (1, 2), "BLOCK_K": (128,)},
    "_centers_bwd_kernel": {"METRIC": (1, 2), "STRONG": (False, True), "HAS_G_CENTERS": (False, True),
                            "BLOCK_D": (1, 32, 256)},
    "_slot_rank_kernel": {"BLOCK_I": (32,), "BLOCK_J": (64,)},
    "_slot_segments_kernel": {"BLOCK_P": (32,), "BLOCK_Q": (64,)},
    "_nce_fwd_kernel": {"SAVE_DOTS": (False, True)},
    "_nce_combine_kernel": {"BLOCK_R": (128,)},
    "_gq_mm_kernel": {"ACCUMULATE": (False, True), "HAS_E": (True, False), "FROM_PARTS": (False, True),
                      "BLOCK_M": (32,), "BLOCK_K": (32,), "BLOCK_D": (64,)},
    "_nce_epilogue_kernel": {"FROM_PARTS": (False, True), "BLOCK_M": (16,), "BLOCK_D": (128,)},
    "_nce_grad_kernel": {"SAVE_DOTS": (False, True)},
}


# How the ops launch each kernel on contiguous inputs whose feature dimension is a multiple of 16 (ResNet's
# 2048, the 512 of smaller backbones): what Triton's JIT specializes at such a launch. A stride equal to 1
# becomes the constant 1 (UNIT), a 16-byte-aligned pointer and an integer divisible by 16 (ALIGNED) get
# tt.divisibility 16. These decide the code: with the feature stride a runtime value the loads cannot be
# vectorized, so Triton neither pipelines them through shared memory (cp.async) nor keeps their registers
# low, and that is all the table measured until Step 14: large tiles "spilled" that the ops never launch
# that way. Sizes (N, M, C, K) stay unspecialized: batch, gallery and class counts are arbitrary.
# A kernel with two launches of different layouts (the pairwise backward's x side reads the coefficients
# by rows, its y side by columns) has one spec per launch. Every kernel is also compiled "strided" (no
# specialization: any strides, as for a transposed view); its spills are reported but are not failures.
_FEATURES = ("stride_xd", "stride_yd")
_BWD_ALIGNED = ("stride_an", "stride_bk", "stride_ga_n", "D")
_GQ_ALIGNED = ("stride_bk", "stride_em", "stride_om", "D")
LAUNCH_SPECS = {
    "_row_norms_kernel": {"contiguous": (_FEATURES, ("stride_xn", "stride_yn", "D"))},
    "_pairwise_fwd_kernel": {"contiguous": (_FEATURES + ("stride_om",), ("stride_xn", "stride_yn", "D"))},
    "_pairwise_coef_kernel": {"contiguous": (("stride_gm", "stride_dm"), ())},
    "_pairwise_bwd_kernel": {
        "contiguous-x": (("stride_ck", "stride_ad", "stride_bd", "stride_ga_d"), _BWD_ALIGNED),
        "contiguous-y": (("stride_cn", "stride_ad", "stride_bd", "stride_ga_d"), _BWD_ALIGNED)},
    "_mining_fwd_kernel": {"contiguous": (("stride_ad", "stride_cd"), ("stride_an", "stride_cn", "D"))},
    "_mining_combine_kernel": {"contiguous": ((), ())},
    "_mining_pair_grad_kernel": {"contiguous": (("stride_gp", "stride_gn", "stride_ad", "stride_cd"),
                                                ("stride_an", "stride_cn", "D"))},
    "_candidate_grad_kernel": {"contiguous": (("stride_ad", "stride_cd"), ("stride_an", "stride_cn", "D"))},
    "_centers_fwd_kernel": {"contiguous": (("stride_xd",), ("stride_xs", "stride_xn", "D"))},
    "_centers_combine_kernel": {"contiguous": ((), ())},
    # grad_centers [S, N, 2, D] is contiguous and its D stride implicit: its three strides are multiples of D
    "_centers_bwd_kernel": {"contiguous": (("stride_xd",), ("stride_xs", "stride_xn", "stride_gs", "stride_gk",
                                                            "stride_gm", "D"))},
    "_slot_rank_kernel": {"contiguous": ((), ())},
    "_slot_segments_kernel": {"contiguous": ((), ())},
    "_nce_fwd_kernel": {"contiguous": (("stride_xd", "stride_wd"), ("stride_xn", "stride_wc", "D"))},
    "_nce_combine_kernel": {"contiguous": ((), ())},
    "_nce_grad_kernel": {"contiguous": (("stride_xd", "stride_wd"), ("stride_xn", "stride_wc", "D"))},
    # grad_x = Gq W: A = Gq [N, C] (C classes: a row stride of any size), B = W [C, D]; grad_w = Gq^T x:
    # A = Gq^T (unit row stride), B = x [N, D]; E and OUT [M, D]
    "_gq_mm_kernel": {"contiguous": (("stride_ak", "stride_bd", "stride_ed", "stride_od"), _GQ_ALIGNED),
                      "contiguous-t": (("stride_am", "stride_bd", "stride_ed", "stride_od"), _GQ_ALIGNED)},
    # IN (a GEMM product) and OUT are contiguous rows; E is x or W
    "_nce_epilogue_kernel": {"contiguous": (("stride_ed",), ("stride_im", "stride_em", "stride_om", "D"))},
}
STRIDED = "strided"


def kernels():
    """name -> (jit function, [config kwargs + num_warps/num_stages]) for every kernel of kernels/."""
    os.environ.pop("TRITON_INTERPRET", None)
    sys.path.insert(0, str(ROOT))
    try:
        import vtreid.kernels  # noqa: F401  (installed: kernels/ is mapped to vtreid.kernels)
    except ModuleNotFoundError:  # another interpreter (--python) without vtreid installed: map it here
        spec = importlib.util.spec_from_file_location("vtreid.kernels", ROOT / "kernels" / "__init__.py",
                                                      submodule_search_locations=[str(ROOT / "kernels")])
        sys.modules["vtreid.kernels"] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    from vtreid.kernels import hard_mining, hetero_center, normalized_softmax, pairwise_distance
    out = {}
    for module in (pairwise_distance, hard_mining, hetero_center, normalized_softmax):
        for name, obj in vars(module).items():
            if name not in VARIANTS:
                continue
            if hasattr(obj, "gpu_configs"):
                configs = [dict(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages) for c in obj.gpu_configs]
                # a kernel with configs per precision ({"fp32": [...], "half": [...]}) is compiled with each
                # list for its own dtypes only: those are the configs its launches can run
                by_dtype = getattr(obj, "dtype_configs", None)
                for config, c in zip(configs, obj.gpu_configs):
                    config["not_on"] = tuple(sorted(getattr(c, "not_on", ())))  # never tuned there: not compiled
                    if by_dtype:
                        config["dtypes"] = tuple(
                            dt for dt in FLOAT_DTYPES
                            if any(c is a for a in by_dtype["fp32" if dt == "fp32" else "half"]))
                out[name] = (jit_function(obj), configs)
            else:
                out[name] = (jit_function(obj), [launch_options(obj)])
    return out


def launch_options(kernel) -> dict:
    """num_warps / num_stages of a kernel launched with fixed options (not autotuned): its own
    ``launch_options``, else Triton's defaults."""
    return dict(getattr(kernel, "launch_options", {"num_warps": 4, "num_stages": 3}))


def jit_function(kernel):
    """The jitted function of a kernel object of kernels/ (an autotuned kernel wraps it)."""
    return kernel.fn if hasattr(kernel, "gpu_configs") else kernel


def specs(name: str) -> list[str]:
    """The launch specializations a kernel is compiled under: its contiguous launches, then strided."""
    return [*LAUNCH_SPECS[name], STRIDED]


def variants(name: str, subset: bool):
    """(dtype, constexprs, config, spec) tuples. The subset compiles every config under every spec once,
    with the dtypes and constexpr variants cycling along (every dtype and variant at least once)."""
    fn, configs = kernels()[name]
    axes = VARIANTS[name]
    keys = list(axes)[::-1]  # the first axis (METRIC) varies fastest: a subset sees every metric
    combos = [dict(zip(keys, values)) for values in itertools.product(*(axes[k] for k in keys))]
    # a kernel without a feature pointer compiles alike for every input dtype (its signature names none)
    dtypes = FLOAT_DTYPES if FEATURE_PTRS & set(fn.arg_names) else FLOAT_DTYPES[:1]
    if not subset:
        return [(dt, combo, cfg, spec)
                for dt, combo, cfg, spec in itertools.product(dtypes, combos, configs, specs(name))
                if dt in cfg.get("dtypes", dtypes)]
    pairs = list(itertools.product(specs(name), configs))
    count = max(len(pairs), len(dtypes), len(combos))
    out = []
    for i in range(count):
        spec, cfg = pairs[i % len(pairs)]
        allowed = cfg.get("dtypes", dtypes)
        dt = dtypes[i % len(dtypes)]
        out.append((dt if dt in allowed else allowed[i % len(allowed)], combos[i % len(combos)], cfg, spec))
    return out


def signature(fn, dtype: str, constexprs: dict):
    sig = {}
    overrides = PTR_OVERRIDES.get(fn.__name__, {})
    sizes = {"N", "M", "D", "K"} | ({"C"} if fn.__name__.startswith("_nce") else set())  # C: classes (nce), else candidates
    for arg in fn.arg_names:
        if arg in constexprs:
            sig[arg] = "constexpr"
        elif arg in overrides:
            sig[arg] = overrides[arg]
        elif arg in sizes or arg in INT_SCALARS or arg.endswith("_BUCKET"):  # sizes, counts, autotune buckets
            sig[arg] = "i32"
        elif arg.isupper():
            sig[arg] = ("*" + dtype if arg in FEATURE_PTRS else "*i64" if arg in I64_PTRS
                        else "*i32" if arg in I32_PTRS else "*i8" if arg == "VALID" else "*fp32")
        else:
            sig[arg] = "fp32" if arg in FLOAT_SCALARS else "i32"
    return sig


def specialize(fn, dtype: str, constexprs: dict, spec: str):
    """(signature, constexprs, attrs) of a launch under ``spec`` (LAUNCH_SPECS): unit strides become the
    constant 1, as Triton's JIT makes them; pointers (allocations are 256-byte aligned), the autotune
    buckets (powers of two from 16) and the spec's aligned integers get tt.divisibility 16."""
    unit, aligned = LAUNCH_SPECS[fn.__name__].get(spec, ((), ()))
    constexprs = {**constexprs, **{arg: 1 for arg in unit}}
    sig = signature(fn, dtype, constexprs)
    divisible = [] if spec == STRIDED else [
        arg for arg, ty in sig.items() if ty.startswith("*") or arg in aligned or arg.endswith("_BUCKET")]
    attrs = {(fn.arg_names.index(arg),): [["tt.divisibility", 16]] for arg in divisible}
    return sig, constexprs, attrs


def pipelined(ttgir: str) -> bool:
    """Whether a kernel's loads go through asynchronous copies to shared memory (cp.async or TMA): how
    Triton pipelines a loop over num_stages. Loads it cannot vectorize are not pipelined."""
    return "async_copy_global_to_local" in ttgir or "async_tma_copy" in ttgir


def resource_usage(cubin: bytes) -> dict:
    import triton.backends.nvidia as nvidia
    bundled = Path(nvidia.__file__).parent / "bin" / "cuobjdump"  # Triton ships one beside its ptxas
    tool = str(bundled) if bundled.exists() else shutil.which("cuobjdump") or "cuobjdump"
    import tempfile
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    fields = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", text))
    return {k: int(v) for k, v in fields.items()}


def compile_one(job):
    name, arch, dtype, constexprs, config, spec = job
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    fn, _ = kernels()[name]
    meta = {k: v for k, v in config.items() if k not in ("num_warps", "num_stages", "dtypes", "not_on")}
    constexprs = {**constexprs, **meta}
    if "IEEE" in fn.arg_names:
        constexprs["IEEE"] = dtype == "fp32"
    row = dict(kernel=name, arch=f"sm_{arch}", dtype=dtype, spec=spec,
               variant=" ".join(f"{k}={v}" for k, v in constexprs.items()),
               warps=config["num_warps"], stages=config["num_stages"])
    try:
        sig, constexprs, attrs = specialize(fn, dtype, constexprs, spec)
        src = ASTSource(fn, sig, constexprs=constexprs, attrs=attrs)
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                                  options=dict(num_warps=config["num_warps"], num_stages=config["num_stages"]))
    except Exception as exc:  # noqa: BLE001 - every failure is reported in the table
        return dict(row, error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}")
    usage = resource_usage(compiled.asm["cubin"])
    shared = compiled.metadata.shared
    problems = []
    if shared > SHARED_LIMIT[arch]:
        problems.append(f"shared {shared} B > sm_{arch} limit {SHARED_LIMIT[arch]} B")
    if re.search(r"(?<!r)sqrt\.approx", compiled.asm["ptx"]):  # rsqrt.approx seeds sqrt_rn_selects' Newton step
        problems.append("approximate sqrt (sqrt.approx) in the PTX")
    mma = tensor_core_instruction(compiled.asm["ptx"])
    if mma == "-" and dtype != "fp32" and runs_a_gemm(name, constexprs):
        problems.append("no tensor-core instruction (mma/wgmma/tcgen05) in a half variant")
    spill = max(usage.get("LOCAL", 0), usage.get("STACK", 0))
    return dict(row, regs=usage.get("REG", -1), spill_bytes=spill, stack=usage.get("STACK", 0),
                shared=shared, mma=mma, pipelined="yes" if pipelined(compiled.asm["ttgir"]) else "no",
                error="; ".join(problems))


def runs_a_gemm(name: str, constexprs: dict) -> bool:
    when = TENSOR_CORE_KERNELS.get(name)
    return when is not None and all(constexprs.get(k) == v for k, v in when.items())


def tensor_core_instruction(ptx: str) -> str:
    """The tensor-core instruction a kernel's PTX issues: tcgen05 (sm_100's tensor-memory MMA), wgmma (sm_90
    warpgroup), mma (mma.sync), or -."""
    if "tcgen05.mma" in ptx:
        return "tcgen05"
    return "wgmma" if "wgmma.mma_async" in ptx else "mma" if re.search(r"\bmma\.sync\.", ptx) else "-"


def mark_spills(rows: list[dict], archs) -> None:
    """Make a spill on one of ``archs`` a failure of its row (--no-spills), in the launches of contiguous
    inputs (every spec but strided: a strided view's launch may spill, its autotuning weighs that)."""
    for r in rows:
        if r.get("spill_bytes") and r["arch"] in {f"sm_{a}" for a in archs} and r.get("spec") != STRIDED:
            r["error"] = "; ".join(filter(None, [r.get("error"), f"spills {r['spill_bytes']} B (--no-spills)"]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90], choices=sorted(SHARED_LIMIT))
    parser.add_argument("--subset", action="store_true", help="every kernel and every config once per arch (CI)")
    parser.add_argument("--kernel", action="append", choices=sorted(VARIANTS), help="only these kernels")
    parser.add_argument("--spec", action="append", metavar="SPEC",
                        help="only these launch specializations (a prefix: contiguous, strided)")
    parser.add_argument("--out", type=Path, help="also write the table here (tab-separated)")
    parser.add_argument("--jobs", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    parser.add_argument("--python", help="run with this interpreter instead (e.g. a venv with another Triton)")
    parser.add_argument("--no-spills", type=int, nargs="+", default=[], choices=sorted(SHARED_LIMIT), metavar="ARCH",
                        help="also fail on any register spill for these architectures (CI: 80 86 90 100 120)")
    args = parser.parse_args(argv)
    if args.python:
        rest = [a for a in (argv if argv is not None else sys.argv[1:])]
        i = rest.index("--python")
        del rest[i:i + 2]
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        return subprocess.run([args.python, __file__, *rest], env=env).returncode
    import triton
    names = args.kernel or sorted(VARIANTS)
    jobs = [(name, arch, *v) for name in names for arch in args.arch for v in variants(name, args.subset)
            if (not args.spec or any(v[3].startswith(prefix) for prefix in args.spec))
            and arch not in v[2].get("not_on", ())]
    with ProcessPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(compile_one, jobs))
    mark_spills(rows, args.no_spills)
    header = ["kernel", "arch", "dtype", "spec", "warps", "stages", "regs", "spill_bytes", "stack", "shared", "mma",
              "pipelined", "variant", "error"]
    lines = ["\t".join(header)] + ["\t".join(str(r.get(h, "")) for h in header) for r in rows]
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
    print(f"Triton {triton.__version__}: {len(rows)} variants of {len(names)} kernels")
    print(f"{'kernel':<26} {'arch':<6} {'dtype':<5} {'spec':<12} {'w/s':<5} {'regs':>4} {'spill':>6} {'shared':>7} "
          f"{'mma':<7} {'pipe':<4}  variant")
    for r in rows:
        if r.get("error") and "regs" not in r:
            print(f"{r['kernel']:<26} {r['arch']:<6} {r['dtype']:<5} {r['spec']:<12} FAILED: {r['error']}")
            continue
        mark = f"  !! {r['error']}" if r["error"] else ""
        print(f"{r['kernel']:<26} {r['arch']:<6} {r['dtype']:<5} {r['spec']:<12} {r['warps']}/{r['stages']:<3} "
              f"{r['regs']:>4} {r['spill_bytes']:>6} {r['shared']:>7} {r['mma']:<7} {r['pipelined']:<4}  "
              f"{r['variant']}{mark}")
    failures = [r for r in rows if r.get("error")]
    for arch in args.arch:
        per = [r for r in rows if r["arch"] == f"sm_{arch}"]
        bad = [r for r in failures if r["arch"] == f"sm_{arch}"]
        spills = sum(1 for r in per if r.get("spill_bytes") and r.get("spec") != STRIDED)
        strided = sum(1 for r in per if r.get("spill_bytes") and r.get("spec") == STRIDED)
        print(f"summary sm_{arch}: {len(per)} compiled, {len(bad)} failed, {spills} with spills "
              f"(+{strided} strided), "
              f"max shared {max((r.get('shared', 0) for r in per), default=0)} B (limit {SHARED_LIMIT[arch]} B)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
