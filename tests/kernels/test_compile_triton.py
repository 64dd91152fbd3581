"""scripts/compile_triton.py compiles Triton kernels for sm_80 / sm_90 without a GPU; the PTX must use the
correctly rounded square root (tl.sqrt is sqrt.approx on a GPU; the interpreter's is exact)."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_compile_table_for_a_kernel_using_sqrt(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = tmp_path / "table.tsv"
    done = subprocess.run([sys.executable, str(ROOT / "scripts/compile_triton.py"), "--kernel", "_centers_bwd_kernel",
                           "--arch", "90", "--subset", "--jobs", "2", "--out", str(out)], capture_output=True, text=True,
                          env=env, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "summary sm_90: 3 compiled, 0 failed" in done.stdout, done.stdout
    rows = out.read_text().splitlines()
    assert rows[0].startswith("kernel\tarch") and len(rows) == 4
    assert all(int(r.split("\t")[5]) > 0 for r in rows[1:]), "registers are read from the cubin"


def _script():
    spec = importlib.util.spec_from_file_location("compile_triton", ROOT / "scripts/compile_triton.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_spills_fails_only_the_named_architectures():
    rows = [{"arch": "sm_90", "spill_bytes": 72, "error": ""}, {"arch": "sm_90", "spill_bytes": 0, "error": ""},
            {"arch": "sm_80", "spill_bytes": 16, "error": ""},
            {"arch": "sm_90", "spill_bytes": 8, "error": "approximate sqrt (sqrt.approx) in the PTX"}]
    _script().mark_spills(rows, [90])
    assert rows[0]["error"] == "spills 72 B (--no-spills)"
    assert rows[1]["error"] == "" and rows[2]["error"] == ""
    assert rows[3]["error"] == "approximate sqrt (sqrt.approx) in the PTX; spills 8 B (--no-spills)"


def test_ci_keeps_sm90_spill_free_with_both_tritons():
    ci = (ROOT / ".ci/run").read_text()
    assert ci.count("compile_triton.py --subset --no-spills 90") == 2, "the pinned Triton and the GPU image's 3.6"


def test_tensor_core_instruction_and_which_half_variants_need_one():
    script = _script()
    assert script.tensor_core_instruction("wgmma.mma_async.sync.aligned.m64n64k8.f32.tf32.tf32 {") == "wgmma"
    assert script.tensor_core_instruction("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {") == "mma"
    assert script.tensor_core_instruction("fma.rn.f32 %f1, %f2, %f3, %f4;") == "-"
    assert script.runs_a_gemm("_pairwise_bwd_kernel", {"METRIC": 0})
    assert script.runs_a_gemm("_nce_grad_kernel", {"SAVE_DOTS": False})
    assert not script.runs_a_gemm("_nce_grad_kernel", {"SAVE_DOTS": True})   # reloads the forward's dots
    assert not script.runs_a_gemm("_pairwise_coef_kernel", {"METRIC": 0})
