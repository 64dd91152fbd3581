"""Compile-checks csrc/cuda_ops.cpp (the CUDA registrations) on a machine whose torch has no CUDA.

The CPU torch wheel ships the c10/cuda headers but not the one CMake generates for CUDA builds; a
stub of that header is enough for g++ -fsyntax-only to type-check the glue against the real torch op
registration templates (which catch mistakes a plain nvcc build of csrc/cuda cannot: a wrong
signature, an overloaded kernel name in m.impl). Run by .ci/run; exits non-zero on any error.
"""
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from torch.utils import cpp_extension

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    cuda_home = cpp_extension.CUDA_HOME or "/usr/local/cuda"
    with tempfile.TemporaryDirectory() as stub:
        header = Path(stub, "c10/cuda/impl/cuda_cmake_macros.h")
        header.parent.mkdir(parents=True)
        header.write_text("#pragma once\n")
        includes = [stub, *cpp_extension.include_paths(), f"{cuda_home}/include", str(ROOT / "csrc"),
                    sysconfig.get_paths()["include"]]
        cmd = ["g++", "-std=c++20", "-fsyntax-only", "-Wall", "-DVTREID_WITH_CUDA", *[f"-I{i}" for i in includes],
               str(ROOT / "csrc/cuda_ops.cpp")]
        result = subprocess.run(cmd)
    if result.returncode == 0:
        print("csrc/cuda_ops.cpp: compiles against torch's CUDA registration headers")
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
