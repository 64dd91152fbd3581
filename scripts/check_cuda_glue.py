"""Compile-checks csrc/cuda_ops.cpp (the CUDA registrations) on a machine whose torch has no CUDA.

The CPU torch wheel ships the c10/cuda headers but not the one CMake generates for CUDA builds; a
stub of that header is enough for g++ -fsyntax-only to type-check the glue against the real torch op
registration templates (which catch mistakes a plain nvcc build of csrc/cuda cannot: a wrong
signature, an overloaded kernel name in m.impl). Run by .ci/run; exits non-zero on any error.

--torch-include DIR type-checks every C++ source of vtreid._C (csrc/*.cpp, csrc/cpu/*.cpp) against
another torch's headers instead, e.g. the GPU image's torch 2.11 (a CUDA wheel's torch/include, unzipped
from `pip download --no-deps torch==2.11.0 --python-version 3.12 --only-binary=:all:`), so an API the
installed torch has and that one lacks shows up before a GPU session's build. Each check uses the C++
standard that torch's cpp_extension builds with (2.11: c++17; 2.13: c++20). The .cu files include
no torch header; the CMake build in csrc/ compiles them.
"""
import argparse
import re
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from torch.utils import cpp_extension

ROOT = Path(__file__).resolve().parent.parent


def cxx_standard(torch_root: Path) -> str:
    """The C++ standard torch.utils.cpp_extension of that torch builds extensions with (torch 2.11: c++17,
    2.13: c++20), so code that needs a newer one fails here as it would in that torch's build."""
    source = torch_root / "utils/cpp_extension.py"
    found = re.search(r"common_cflags \+= \['-std=(c\+\+\d+)'", source.read_text()) if source.is_file() else None
    if found is None:
        print(f"{source}: no -std flag found; checking with c++17")
        return "c++17"
    return found.group(1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch-include", type=Path, help="another torch's include directory (torch/include)")
    args = parser.parse_args()
    cuda_home = cpp_extension.CUDA_HOME or "/usr/local/cuda"
    if args.torch_include:
        if not (args.torch_include / "torch/extension.h").is_file():
            parser.error(f"--torch-include {args.torch_include}: no torch/extension.h there")
        torch_includes = [str(args.torch_include), str(args.torch_include / "torch/csrc/api/include")]
        sources = ["csrc/cuda_ops.cpp", "csrc/ops.cpp", "csrc/autograd.cpp", *sorted(
            str(p.relative_to(ROOT)) for p in (ROOT / "csrc/cpu").glob("*.cpp"))]
    else:
        torch_includes = cpp_extension.include_paths()
        sources = ["csrc/cuda_ops.cpp"]
    std = cxx_standard(args.torch_include.parent if args.torch_include else Path(cpp_extension.__file__).parents[1])
    failed = 0
    with tempfile.TemporaryDirectory() as stub:
        header = Path(stub, "c10/cuda/impl/cuda_cmake_macros.h")
        header.parent.mkdir(parents=True)
        header.write_text("#pragma once\n")
        # The stub goes after torch's own headers: a CUDA wheel ships the real one.
        includes = [*torch_includes, stub, f"{cuda_home}/include", str(ROOT / "csrc"), sysconfig.get_paths()["include"]]
        for source in sources:
            cmd = ["g++", f"-std={std}", "-fsyntax-only", "-Wall", "-fopenmp", "-DVTREID_WITH_CUDA",
                   "-DTORCH_API_INCLUDE_EXTENSION_H", "-DTORCH_EXTENSION_NAME=_C",
                   *[f"-I{i}" for i in includes], str(ROOT / source)]
            if subprocess.run(cmd).returncode != 0:
                failed += 1
                print(f"{source}: does not compile against {args.torch_include or 'the installed torch'}")
    if not failed:
        against = args.torch_include or "torch's CUDA registration headers"
        print(f"{', '.join(sources)}: compile{'s' if len(sources) == 1 else ''} against {against} (-std={std})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
