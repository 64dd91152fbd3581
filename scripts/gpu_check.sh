#!/usr/bin/env bash
# The whole GPU check in one call (for the lent GPU machine, or any CUDA box):
#   build vtreid._C with CUDA, run the test suite on the GPU, compute-sanitizer (memcheck, racecheck)
#   over every CUDA kernel, then the benchmarks. Logs and result files go under $OUT (default ./gpu-out).
# Uses the machine's own torch/triton (no network): pip runs with --no-deps --no-build-isolation.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
status=0
step() { echo "== $1"; }

step "build"
MAX_JOBS=${MAX_JOBS:-16} VTREID_CUDA_ARCHS=${VTREID_CUDA_ARCHS:-9.0} \
  python -m pip install --no-deps --no-build-isolation -e . > "$OUT/build.log" 2>&1 || { tail -50 "$OUT/build.log"; exit 1; }
python -m vtreid.env | tee "$OUT/env.txt"

step "tests on GPU"
python -m pytest tests -q -x -p no:cacheprovider > "$OUT/tests.log" 2>&1 || status=1
tail -15 "$OUT/tests.log"

for tool in memcheck racecheck; do
  step "compute-sanitizer $tool"
  compute-sanitizer --tool "$tool" --error-exitcode 9 python scripts/sanitize_kernels.py > "$OUT/sanitizer-$tool.log" 2>&1 || status=1
  tail -5 "$OUT/sanitizer-$tool.log"
done

step "benchmarks"
for bench in ${VTREID_BENCHES:-pairwise_distance hard_mining hetero_center normalized_softmax evaluation}; do
  python -m bench."$bench" --out "$OUT/results.jsonl" > "$OUT/bench-$bench.log" 2>&1 || status=1
  tail -60 "$OUT/bench-$bench.log"
done
step "hard_mining memory case (N = M = 65536, D = 2048, fp16)"
python -m bench.hard_mining --large --out "$OUT/results.jsonl" > "$OUT/bench-hard_mining-large.log" 2>&1 || status=1
tail -8 "$OUT/bench-hard_mining-large.log"
step "evaluation memory case (top-100 of 10000 queries in a 1,000,000-image gallery)"
python -m bench.evaluation --large --out "$OUT/results.jsonl" > "$OUT/bench-evaluation-large.log" 2>&1 || status=1
tail -5 "$OUT/bench-evaluation-large.log"
echo "== exit $status"
exit $status
