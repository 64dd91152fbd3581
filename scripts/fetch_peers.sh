#!/usr/bin/env bash
# Downloads the benchmarks' peer libraries that the GPU image lacks, as wheels, into .whl/ (ignored by
# git): Liger-Kernel (bench.normalized_softmax's `liger`: the issue's "not slower than Liger" goal) and
# pytorch-metric-learning (bench.hard_mining's `pml`). Both are pure Python; their own needs (torch,
# triton, numpy, scipy, tqdm) are in the image. Run it here, where PyPI is reachable, then carry .whl
# to the GPU machine (the device tool's `carry`); scripts/gpu_check.sh installs what it finds there.
# Usage: bash scripts/fetch_peers.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
PEERS=("liger-kernel==0.8.5" "pytorch-metric-learning==2.9.0")
mkdir -p .whl
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp -d .whl "${PEERS[@]}"
ls -l .whl
