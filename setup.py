"""Builds vtreid and its C++/CUDA extension vtreid._C.

    pip install --no-build-isolation -e .

CPU sources (csrc/ops.cpp, csrc/cpu/*.cpp) are always compiled. CUDA sources (csrc/cuda/*.cu,
csrc/cuda_ops.cpp) are added when the installed torch was built with CUDA and nvcc is found.

Environment:
    VTREID_SKIP_NATIVE=1    build no extension (the `native` backend then falls back to `reference`)
    VTREID_CUDA_ARCHS       e.g. "8.0;9.0" (default: torch's TORCH_CUDA_ARCH_LIST, else "8.0;9.0")
    VTREID_FORCE_CUDA=1     compile the CUDA sources even when torch reports no CUDA device
    MAX_JOBS                parallel compile jobs (read by torch's ninja build)
"""
import glob
import os

from setuptools import setup

PACKAGES = ["vtreid", "vtreid.ops", "vtreid.models", "vtreid.data", "vtreid.eval", "vtreid.losses", "vtreid.methods",
            "vtreid.training", "vtreid.kernels"]
# The presets are data-only directories: setuptools ships a directory's files as package data only when the
# directory is a package itself (listed here), and warns that it will stop otherwise.
PRESETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vtreid", "presets")
PRESET_PACKAGES = ["vtreid.presets"] + sorted(
    f"vtreid.presets.{name}" for name in os.listdir(PRESETS) if os.path.isdir(os.path.join(PRESETS, name)))
PACKAGES += PRESET_PACKAGES
# kernels/ sits at the top of the tree (one of the three layers) but is imported as vtreid.kernels.
PACKAGE_DIR = {"vtreid": "vtreid", "vtreid.kernels": "kernels"}


def _native_extensions():
    if os.environ.get("VTREID_SKIP_NATIVE", "0") == "1":
        print("vtreid: VTREID_SKIP_NATIVE=1, not building vtreid._C")
        return [], {}
    import torch
    from torch.utils import cpp_extension

    here = os.path.dirname(os.path.abspath(__file__))
    cpu_sources = ["csrc/ops.cpp", "csrc/autograd.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    # No -std here: torch.utils.cpp_extension adds the standard its headers need (C++17 or C++20).
    cxx_flags = ["-O3", "-fopenmp"]
    define_macros = []
    with_cuda = (
        torch.version.cuda is not None
        and cpp_extension.CUDA_HOME is not None
        and (torch.cuda.is_available() or os.environ.get("VTREID_FORCE_CUDA", "0") == "1")
    )
    if with_cuda:
        archs = os.environ.get("VTREID_CUDA_ARCHS") or os.environ.get("TORCH_CUDA_ARCH_LIST") or "8.0;9.0"
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs
        sources = cpu_sources + ["csrc/cuda_ops.cpp"] + sorted(glob.glob("csrc/cuda/*.cu"))
        define_macros.append(("VTREID_WITH_CUDA", None))
        ext = cpp_extension.CUDAExtension(
            "vtreid._C",
            sources,
            include_dirs=[os.path.join(here, "csrc")],
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3"]},
            extra_link_args=["-fopenmp"],
        )
        print(f"vtreid: building vtreid._C with CUDA (archs {archs})")
    else:
        ext = cpp_extension.CppExtension(
            "vtreid._C",
            cpu_sources,
            include_dirs=[os.path.join(here, "csrc")],
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=["-fopenmp"],
        )
        print("vtreid: building vtreid._C for CPU only (no CUDA torch or no nvcc)")
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _native_extensions()

setup(
    packages=PACKAGES,
    package_dir=PACKAGE_DIR,
    package_data={name: ["*.yaml"] for name in PRESET_PACKAGES},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
