#!/usr/bin/env bash
# The GPU image's software stack on a machine without a GPU: what a lent GPU's first minutes would find.
#   bash scripts/gpu_stack_check.sh [pytest arguments]       (default: the whole suite, tests/)
# Clones this checkout's HEAD into $VTREID_STACK_DIR (default /tmp/vtreid-gpu-stack), makes a venv there
# with the GPU image's torch (2.11.0+cu130, which brings Triton 3.6 and the CUDA 13 wheels: ~4 GB from the
# package mirror on a first run), builds vtreid._C *with* its CUDA sources (VTREID_FORCE_CUDA=1, sm_90
# only; nvcc 13 must be on PATH) against that torch, and runs the tests on the CPU. This catches what the
# pinned CPU stack of .ci/run cannot: a torch 2.11 API or header difference, a CUDA source that does not
# build with torch's CUDA headers, a test that needs a package the image lacks (no matplotlib, onnx or
# scipy there: the tests that need them must skip or expect the clear error).
# Not the image itself: Python is this machine's, and NumPy is kept below 2.4, whose int() of a 1-element
# array breaks Triton 3.6's interpreter (the image never interprets: it has a GPU). That interpreter also
# rounds tl.fma's product before the add; tests/conftest.py makes it fuse, as a GPU's FFMA does.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
dir=${VTREID_STACK_DIR:-/tmp/vtreid-gpu-stack}
start=$SECONDS
step() { echo "== gpu stack [$((SECONDS - start))s] $*"; }
cuda_home=${CUDA_HOME:-/usr/local/cuda}
[ -f "$cuda_home/include/cuda_runtime_api.h" ] && [ -x "$cuda_home/bin/nvcc" ] || {
  echo "no CUDA toolkit in $cuda_home: set CUDA_HOME to a CUDA 13 toolkit" >&2; exit 1; }
"$cuda_home/bin/nvcc" --version | grep -q "release 13\." || {
  echo "$cuda_home/bin/nvcc is not CUDA 13 (torch 2.11.0+cu130 needs it): set CUDA_HOME" >&2; exit 1; }

mkdir -p "$dir"
# The venv counts as made once its install finished (an interrupted one is made again).
if [ ! -f "$dir/venv/.installed" ]; then
  step "creating $dir/venv with torch==2.11.0 (CUDA 13 wheels: minutes on a first run)"
  rm -rf "$dir/venv"
  python3 -m venv "$dir/venv"
  "$dir/venv/bin/python" -m pip install --quiet torch==2.11.0 "numpy<2.4" ninja pybind11 pytest pyyaml tqdm pillow \
    "setuptools>=77,<82" wheel
  touch "$dir/venv/.installed"
fi
"$dir/venv/bin/python" -c "import torch; assert torch.__version__.startswith('2.11.0') and torch.version.cuda, \
  f'{torch.__version__}: not the GPU image\'s CUDA build of torch 2.11.0'" || exit 1
step "cloning HEAD of $src into $dir/vtreid"
rm -rf "$dir/vtreid"
git clone --quiet "$src" "$dir/vtreid"
cd "$dir/vtreid"
step "building vtreid._C with its CUDA sources for sm_90 (several minutes on 2 cores)"
CUDA_HOME=$cuda_home VTREID_FORCE_CUDA=1 \
  VTREID_CUDA_ARCHS="9.0" MAX_JOBS=${MAX_JOBS:-2} \
  "$dir/venv/bin/python" -m pip install --quiet --no-build-isolation --no-deps -e . > "$dir/build.log" 2>&1 \
  || { tail -n 40 "$dir/build.log"; exit 1; }
"$dir/venv/bin/python" -c "import torch, triton, vtreid._C; print('torch', torch.__version__, 'triton', triton.__version__)"
step "running the tests: pytest ${*:-tests}"
"$dir/venv/bin/python" -m pytest -q -p no:cacheprovider "${@:-tests}"
