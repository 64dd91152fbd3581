#!/usr/bin/env bash
# Sets up a development environment in .venv: pinned dependencies, then vtreid and its extension.
#   bash scripts/setup.sh
# On a GPU machine whose Python already has a CUDA torch, skip this and run
#   pip install --no-build-isolation -e .
# (VTREID_CUDA_ARCHS="9.0" and MAX_JOBS=8 are honoured; see README.md.)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -r requirements.txt
MAX_JOBS=${MAX_JOBS:-2} .venv/bin/python -m pip install --quiet --no-build-isolation -e .
.venv/bin/python -m vtreid.env
