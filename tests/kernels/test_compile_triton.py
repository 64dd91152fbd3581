"""scripts/compile_triton.py compiles Triton kernels for sm_80 / sm_90 without a GPU; the PTX must use the
correctly rounded square root (tl.sqrt is sqrt.approx on a GPU; the interpreter's is exact)."""
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
