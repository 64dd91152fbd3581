"""scripts/setup.sh on a stand-in tree whose .venv/bin/python records its calls: a line per step, and
the extension is rebuilt exactly when it is missing, older than its sources, not importable, or forced."""
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

SETUP = Path(__file__).resolve().parents[2] / "scripts" / "setup.sh"
FAKE_PYTHON = """#!/bin/sh
echo "$*" >> "$CALLS"
case "$*" in *"import torch, vtreid._C"*) exit "${IMPORT_STATUS:-0}";; esac
exit 0
"""


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "scripts").mkdir()
    shutil.copy(SETUP, tmp_path / "scripts" / "setup.sh")
    for name in ("csrc/ops.cpp", "csrc/cpu/pairwise.cpp", "setup.py", "pyproject.toml", "requirements.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    (tmp_path / "vtreid").mkdir()
    past = time.time() - 100
    for f in tmp_path.rglob("*"):
        os.utime(f, (past, past))
    return tmp_path


def setup(tree, so_age=None, **env):
    """Run setup.sh; so_age: seconds ago the built library was written (None: not built). Returns
    (rebuilt, output)."""
    so = tree / "vtreid" / "_C.cpython-311-x86_64-linux-gnu.so"
    if so_age is not None:
        so.write_text("")
        os.utime(so, (time.time() - so_age,) * 2)
    calls = tree / "calls.txt"
    calls.unlink(missing_ok=True)
    env = {**{k: v for k, v in os.environ.items() if k != "VTREID_REBUILD"}, "CALLS": str(calls), **env}
    out = subprocess.run(["bash", str(tree / "scripts" / "setup.sh")], env=env, capture_output=True, text=True,
                         check=True).stdout
    lines = calls.read_text().splitlines()
    assert "-m pip install -r requirements.txt" in lines and lines[-1] == "-m vtreid.env"
    return any(line.endswith("install --no-build-isolation -e .") for line in lines), out


def test_setup_prints_a_line_per_step(tree):
    _, out = setup(tree, so_age=None)
    steps = [line for line in out.splitlines() if line.startswith("== setup [")]
    assert [s.split("] ", 1)[1].split(" ")[0] for s in steps] == ["upgrading", "installing", "building", "done;"]


def test_setup_rebuilds_only_when_something_changed(tree):
    assert setup(tree, so_age=None)[0]                       # never built
    rebuilt, out = setup(tree, so_age=10)                      # built after the sources: skipped
    assert not rebuilt and "vtreid._C is up to date" in out
    assert setup(tree, so_age=10, VTREID_REBUILD="1")[0]      # forced
    assert setup(tree, so_age=10, IMPORT_STATUS="1")[0]       # not installed / not importable
    os.utime(tree / "csrc" / "cpu" / "pairwise.cpp")           # a source edited after the build
    assert setup(tree, so_age=10)[0]
    os.utime(tree / "csrc" / "cpu" / "pairwise.cpp", (time.time() - 100,) * 2)
    os.utime(tree / "setup.py")
    assert setup(tree, so_age=10)[0]
