"""The scripts answer --help on a machine without a GPU."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_sanitize_kernels_help_without_gpu():
    done = subprocess.run([sys.executable, str(ROOT / "scripts/sanitize_kernels.py"), "--help"], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert "usage" in done.stdout and "compute-sanitizer" in done.stdout


def test_gpu_check_help_prints_usage():
    for flag in ("--help", "-h"):
        done = subprocess.run(["bash", str(ROOT / "scripts/gpu_check.sh"), flag], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert "Usage: bash scripts/gpu_check.sh [stage ...]" in done.stdout
        assert "unknown stage" not in done.stdout + done.stderr
        for stage in ("build", "test", "sanitize", "bench"):
            assert stage in done.stdout
    done = subprocess.run(["bash", str(ROOT / "scripts/gpu_check.sh"), "tests"], capture_output=True, text=True)
    assert done.returncode == 2 and "unknown stage 'tests'" in done.stderr and "Usage" in done.stderr


def test_gpu_check_test_stage_keeps_each_failures_traceback(tmp_path):
    """The test stage writes every failure's traceback to $OUT/failures.log as it happens (tests/conftest.py)
    and shows it: a run cut at its time limit prints no summary."""
    (tmp_path / "test_cut.py").write_text("def test_fails():\n    assert 1 == 2, 'the reason'\n\n"
                                          "def test_passes():\n    pass\n")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(out), "VTREID_TEST_WORKERS": "0",
           "PYTHONPATH": str(ROOT / "tests"), "VTREID_PYTEST_ARGS": f"-p conftest {tmp_path / 'test_cut.py'}"}
    done = subprocess.run(["bash", str(ROOT / "scripts/gpu_check.sh"), "test"], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=600)
    assert done.returncode == 1, done.stdout + done.stderr
    log = (out / "failures.log").read_text()
    assert "test_cut.py::test_fails (call)" in log and "the reason" in log and "test_passes" not in log
    assert "the reason" in done.stdout
