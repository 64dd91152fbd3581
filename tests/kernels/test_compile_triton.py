"""scripts/compile_triton.py compiles Triton kernels for real GPUs without one; the PTX must use the
correctly rounded square root (tl.sqrt is sqrt.approx on a GPU; the interpreter's is exact)."""
import os
import subprocess
import sys

import pytest
import torch

from support import ROOT, compile_triton_script, launch_every_op, record_launches


def test_compile_table_for_a_kernel_using_sqrt(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = tmp_path / "table.tsv"
    done = subprocess.run([sys.executable, str(ROOT / "scripts/compile_triton.py"), "--kernel", "_centers_bwd_kernel",
                           "--arch", "90", "--subset", "--jobs", "2", "--out", str(out)], capture_output=True, text=True,
                          env=env, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    # the subset: every constexpr variant (2 metrics x 2 x 2 x 3 block widths) once, the specs cycling along
    assert "summary sm_90: 24 compiled, 0 failed" in done.stdout, done.stdout
    rows = [dict(zip(*(line.split("\t") for line in (lines[0], row)))) for lines in [out.read_text().splitlines()]
            for row in lines[1:]]
    assert len(rows) == 24 and {r["spec"] for r in rows} == {"contiguous", "strided"}
    assert all(int(r["regs"]) > 0 for r in rows), "registers are read from the cubin"
    assert {r["pipelined"] for r in rows} <= {"yes", "no"}


def test_no_spills_fails_only_the_named_architectures():
    rows = [{"arch": "sm_90", "spill_bytes": 72, "error": ""}, {"arch": "sm_90", "spill_bytes": 0, "error": ""},
            {"arch": "sm_80", "spill_bytes": 16, "error": ""},
            {"arch": "sm_90", "spill_bytes": 8, "error": "approximate sqrt (sqrt.approx) in the PTX"},
            {"arch": "sm_90", "spill_bytes": 40, "error": "", "spec": "strided"},
            {"arch": "sm_90", "spill_bytes": 40, "error": "", "spec": "contiguous-x"}]
    compile_triton_script().mark_spills(rows, [90])
    assert rows[0]["error"] == "spills 72 B (--no-spills)"
    assert rows[1]["error"] == "" and rows[2]["error"] == ""
    assert rows[3]["error"] == "approximate sqrt (sqrt.approx) in the PTX; spills 8 B (--no-spills)"
    assert rows[4]["error"] == "", "a strided launch's spill is listed, not failed"
    assert rows[5]["error"] == "spills 40 B (--no-spills)"


def test_ci_keeps_five_architectures_spill_free_with_both_tritons():
    """sm_80, sm_86 (the RTX 30xx / 40xx parts' 99 KB of shared memory a block), sm_90, sm_100 (tcgen05)
    and sm_120 (RTX 50xx): every arch the config lists are marked for, less sm_87 and sm_89 (swept by hand:
    sm_89's rows are sm_86's)."""
    ci = (ROOT / ".ci/run").read_text()
    assert ci.count("compile_triton.py --subset --arch 80 86 90 100 120 --no-spills 80 86 90 100 120") == 2, \
        "the pinned Triton and the GPU image's 3.6"


def test_tensor_core_instruction_and_which_half_variants_need_one():
    script = compile_triton_script()
    assert script.tensor_core_instruction("tcgen05.mma.cta_group::1.kind::f16 [%r1], %rd2;") == "tcgen05"
    assert script.tensor_core_instruction("tcgen05.alloc.cta_group::1.sync.aligned.shared::cta.b32") == "-"
    assert script.tensor_core_instruction("wgmma.mma_async.sync.aligned.m64n64k8.f32.tf32.tf32 {") == "wgmma"
    assert script.tensor_core_instruction("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {") == "mma"
    assert script.tensor_core_instruction("fma.rn.f32 %f1, %f2, %f3, %f4;") == "-"
    assert script.runs_a_gemm("_pairwise_bwd_kernel", {"METRIC": 0})
    assert script.runs_a_gemm("_nce_grad_kernel", {"SAVE_DOTS": False})
    assert not script.runs_a_gemm("_nce_grad_kernel", {"SAVE_DOTS": True})   # reloads the forward's dots
    assert not script.runs_a_gemm("_pairwise_coef_kernel", {"METRIC": 0})


def _jit_specialization(value):
    """What Triton's JIT makes of one launch argument: ("constexpr", 1), (type, "D") for 16-divisible or
    16-byte aligned, (type, "") otherwise."""
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend
    return native_specialize_impl(BaseBackend, value, False, True, True)


def _jit_functions(script):
    """name -> the jitted function of every kernel, unwrapped as the table does (compile_triton.kernels()
    is not called here: it clears TRITON_INTERPRET for the compiler)."""
    from vtreid.kernels import hard_mining, hetero_center, normalized_softmax, pairwise_distance
    return {name: script.jit_function(obj)
            for module in (pairwise_distance, hard_mining, hetero_center, normalized_softmax)
            for name, obj in vars(module).items() if name.startswith("_") and name.endswith("_kernel")}


def test_launch_specs_are_what_the_ops_launch(monkeypatch):
    """The table compiles each kernel as Triton's JIT specializes the ops' real launches: recorded from the
    launchers on contiguous float32 and float16 inputs (37 anchors, 53 candidates, 80 features: two centre
    slices, 395 classes; sizes and row strides that are not multiples of 16 stay unspecialized), every
    stride and pointer argument must get the same specialization in one of the kernel's contiguous specs,
    and every kernel is launched."""
    script = compile_triton_script()
    functions = _jit_functions(script)
    launches = record_launches(monkeypatch)
    for dtype in (torch.float32, torch.float16):  # float16 adds the Gq GEMMs of the NCE backward
        launch_every_op(37, 53, 80, 395, dtype)
    seen = {}
    for launch in launches:
        fn = functions[launch.name]
        unspecialized = getattr(fn, "unspecialized", ())  # the kernel's do_not_specialize arguments
        got = {}
        for arg in fn.arg_names:
            value = launch.args.get(arg)
            if not (isinstance(value, torch.Tensor) or (arg.startswith("stride") and isinstance(value, int))):
                continue
            kind, attr = _jit_specialization(value)
            got[arg] = "" if arg in unspecialized else "1" if kind == "constexpr" else attr
        assert got, launch.name
        matched = []
        for spec in script.LAUNCH_SPECS[launch.name]:
            _, constexprs, attrs = script.specialize(fn, "fp16", {}, spec)
            want = {arg: "1" if constexprs.get(arg) == 1 else "D" if (fn.arg_names.index(arg),) in attrs else ""
                    for arg in got}
            if want == got:
                matched.append(spec)
        assert matched, f"{launch.name}: the launch specializes as {got}, no spec of LAUNCH_SPECS does"
        seen.setdefault(launch.name, set()).update(matched)
    assert set(seen) == set(script.LAUNCH_SPECS), set(script.LAUNCH_SPECS) - set(seen)
    # every contiguous spec is some launch's (the pairwise backward's x and y sides both happen)
    unused = {(name, spec) for name in seen for spec in script.LAUNCH_SPECS[name] if spec not in seen[name]}
    assert not unused, unused
    # a kernel launched with fixed options (not autotuned) is compiled with the options it is launched with
    for launch in launches:
        if launch.meta:  # autotuned: the table compiles every config of its list
            continue
        options = script.launch_options(functions[launch.name])
        used = {"num_warps": launch.args.get("num_warps", 4), "num_stages": launch.args.get("num_stages", 3)}
        assert used == {k: options[k] for k in used}, (launch.name, used, options)
    for name, specs in script.LAUNCH_SPECS.items():
        fn = functions[name]
        for unit, aligned in specs.values():
            assert set(unit) | set(aligned) <= set(fn.arg_names), (name, (set(unit) | set(aligned)) - set(fn.arg_names))
