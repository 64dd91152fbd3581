"""Builds the test-only CPU emulation of the CUDA kernels: csrc/cuda/*.cu compiled as C++ against
csrc/emu/cuda_emu.h (each CUDA thread a fibre), with AddressSanitizer, into one shared library that
tests/cuda_emu/emu_cases.py loads with ctypes.

The one source change is the launch syntax: ``kernel<<<grid, block, shmem, stream>>>(args)`` becomes
``::emu::launch(kernel, ::emu::Config{grid, block, shmem, stream}, args)``; everything else compiles as
written. The library is rebuilt only when a source or a flag changes.

    python tests/cuda_emu/build.py [--out DIR] [--no-asan]     prints the library's path
"""
from __future__ import annotations

import argparse
import hashlib
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAUNCH = re.compile(r"([A-Za-z_]\w*(?:<[^<>;()]*>)?)<<<(.*?)>>>\(", re.S)


def translate(source: str) -> str:
    out, count = LAUNCH.subn(r"::emu::launch(\1, ::emu::Config{\2}, ", source)
    if "<<<" in out:
        raise SystemExit("tests/cuda_emu/build.py: a kernel launch the translation does not understand")
    return out


def build(out_dir: Path | None = None, asan: bool = True, sources: dict[str, str] | None = None) -> Path:
    """The path of the built library. ``sources`` (name -> text) replaces csrc/cuda files (mutation tests)."""
    out_dir = out_dir or ROOT / "build" / ("cuda_emu" if asan else "cuda_emu_noasan")
    cu_files = sorted((ROOT / "csrc/cuda").glob("*.cu"))
    texts = {p.name: (sources or {}).get(p.name, p.read_text()) for p in cu_files}
    headers = sorted([*(ROOT / "csrc").glob("*.h"), *(ROOT / "csrc/cuda").glob("*.cuh"),
                      *(ROOT / "csrc/cuda").glob("*.h"), *(ROOT / "csrc/emu").rglob("*.h"), ROOT / "csrc/emu/emu_api.cpp"])
    flags = ["-std=c++17", "-O1", "-g", "-fPIC", "-shared", "-Wall", "-Wno-unknown-pragmas",
             f"-I{ROOT / 'csrc/emu/include'}", f"-I{ROOT / 'csrc'}", f"-I{ROOT / 'csrc/cuda'}"]
    if asan:
        flags += ["-fsanitize=address", "-fno-omit-frame-pointer"]
    digest = hashlib.sha256("\0".join([*flags, *texts.values(), *(h.read_text() for h in headers)]).encode())
    lib = out_dir / f"libvtreid_cuda_emu-{digest.hexdigest()[:16]}.so"
    if lib.exists():
        return lib
    out_dir.mkdir(parents=True, exist_ok=True)
    translated = []
    for name, text in texts.items():
        path = out_dir / (name[:-3] + ".emu.cpp")
        path.write_text(f'#line 1 "csrc/cuda/{name}"\n' + translate(text))
        translated.append(str(path))
    tmp = lib.with_suffix(".tmp")
    cmd = ["g++", *flags, *translated, str(ROOT / "csrc/emu/emu_api.cpp"), "-o", str(tmp)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"emulated CUDA build failed:\n{' '.join(cmd)}\n{done.stderr[-6000:]}")
    tmp.rename(lib)
    return lib


def asan_preload() -> str:
    """LD_PRELOAD for the Python that loads the library: the libasan g++ links against, and libstdc++.

    libstdc++ too because Python does not link it: loaded later (by torch), it comes after ASan has set
    up its __cxa_throw interceptor, which then aborts the process on the first C++ exception ("CHECK
    failed ... real___cxa_throw") instead of letting it reach Python, so a failing case crashed the run
    instead of reporting its assertion."""
    return " ".join(subprocess.run(["g++", f"-print-file-name={lib}"], capture_output=True, text=True,
                                   check=True).stdout.strip() for lib in ("libasan.so", "libstdc++.so"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--no-asan", action="store_true")
    args = parser.parse_args()
    print(build(args.out, asan=not args.no_asan))
    sys.exit(0)
