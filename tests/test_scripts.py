"""The scripts answer --help on a machine without a GPU."""
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
