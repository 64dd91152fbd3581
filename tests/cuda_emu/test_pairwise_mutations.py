"""The emulated CUDA tests must catch a missing barrier in the tensor-core pairwise forward: each mutation
removes one __syncthreads() from csrc/cuda/pairwise_distance.cu, the emulation library is rebuilt from the
mutated source (tests/cuda_emu/build.py, without ASan; ~30 s each), and the half-precision cases of
tests/cuda_emu/emu_cases.py must fail on it (the emulation runs each warp ahead of the others up to its
next __syncthreads(), so a reader sees what other warps have not written yet)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import build  # noqa: E402

# name: (text in the kernel, what replaces it). The epilogue's barrier is the one lock-step warps missed.
# (By hand, also: the barrier after stage 0, the epilogue's between passes, the backward's after the
# coefficient transform: each fails the pairwise cases too.)
MUTATIONS = {
    "end-of-slice barrier": ("    if (step + 1 < steps) stash(stage ^ 1);\n    __syncthreads();\n",
                             "    if (step + 1 < steps) stash(stage ^ 1);\n"),
    "epilogue barrier": ("                              wmma::mem_row_major);\n    }\n    __syncthreads();\n",
                         "                              wmma::mem_row_major);\n    }\n"),
}


@pytest.mark.slow
@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_emulation_catches_a_missing_barrier(mutation, tmp_path):
    source = (build.ROOT / "csrc/cuda/pairwise_distance.cu").read_text()
    old, new = MUTATIONS[mutation]
    assert source.count(old) == 1, f"the kernel changed: update the mutation {mutation!r}"
    lib = build.build(tmp_path, asan=False, sources={"pairwise_distance.cu": source.replace(old, new)})
    env = {**os.environ, "VTREID_EMU_LIB": str(lib), "VTREID_EMU_ASAN": "0"}
    cmd = [sys.executable, "-m", "pytest", str(HERE / "emu_cases.py"), "-q", "-p", "no:cacheprovider",
           "-k", "half_kernels and float16 and euclidean and (tc64 or tc128)"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=build.ROOT, timeout=900)
    output = done.stdout + done.stderr
    assert done.returncode == 1 and " failed" in output, output[-3000:]
