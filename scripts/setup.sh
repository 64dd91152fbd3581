#!/usr/bin/env bash
# Sets up a development environment in .venv: pinned dependencies, then vtreid and its extension.
#   bash scripts/setup.sh
# A first run takes a few minutes (downloading and installing torch, then compiling vtreid._C, about
# 2 minutes on 2 cores); a re-run with nothing changed skips the compile and takes seconds.
# VTREID_REBUILD=1 rebuilds the extension anyway (e.g. after changing VTREID_CUDA_ARCHS).
# On a GPU machine whose Python already has a CUDA torch, skip this and run
#   pip install --no-build-isolation -e .
# (VTREID_CUDA_ARCHS="9.0" and MAX_JOBS=8 are honoured; see README.md.)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
python=${PYTHON:-python3}
start=$SECONDS
step() { echo "== setup [$((SECONDS - start))s] $*"; }

if [ ! -x .venv/bin/python ]; then
  step "creating .venv with $python"
  "$python" -m venv .venv
fi
step "upgrading pip"
.venv/bin/python -m pip install --quiet --upgrade pip
step "installing the pinned dependencies of requirements.txt (a first run downloads torch: minutes)"
.venv/bin/python -m pip install -r requirements.txt

# The extension is up to date when vtreid is installed in .venv, vtreid._C imports, and the built
# library is newer than every file it is built from.
built() {
  local so
  so=$(ls vtreid/_C*.so 2>/dev/null | head -n 1)
  [ -n "$so" ] || return 1
  [ -z "$(find csrc setup.py pyproject.toml -type f -newer "$so" 2>/dev/null | head -n 1)" ] || return 1
  # from another folder, so that the installed vtreid is imported, not ./vtreid
  (cd / && "$root/.venv/bin/python" -c "import torch, vtreid._C") >/dev/null 2>&1
}
if [ "${VTREID_REBUILD:-0}" != "1" ] && built; then
  step "vtreid._C is up to date (newer than csrc/, setup.py, pyproject.toml): not rebuilding (VTREID_REBUILD=1 forces it)"
else
  step "building and installing vtreid with its extension vtreid._C (about 2 minutes on 2 cores)"
  MAX_JOBS=${MAX_JOBS:-2} .venv/bin/python -m pip install --no-build-isolation -e .
fi
step "done; the environment:"
.venv/bin/python -m vtreid.env
