"""Runs tests/cuda_emu/emu_cases.py (every CUDA launcher executed on the CPU by csrc/emu, against
`reference`) in a subprocess whose first library is the AddressSanitizer runtime, so an out-of-bounds
access in a kernel aborts the run. .ci/run runs the same command on its own, where its output shows."""
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import build  # noqa: E402


def emu_command() -> tuple[list[str], dict[str, str]]:
    env = {**os.environ, "LD_PRELOAD": build.asan_preload(), "ASAN_OPTIONS": "detect_leaks=0"}
    cmd = [sys.executable, "-m", "pytest", str(HERE / "emu_cases.py"), "-q", "-p", "no:cacheprovider",
           "--capture=sys"]  # sys, not fd: an AddressSanitizer report must reach the real stderr
    return cmd, env


def test_cuda_launchers_emulated_under_address_sanitizer():
    cmd, env = emu_command()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=build.ROOT, timeout=1200)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-12000:]
    assert " passed" in output and "failed" not in output, output[-3000:]


def test_a_cpp_exception_reaches_python_under_the_preload():
    """A C++ exception (here torch's shape error) is caught in Python, not an abort in ASan's interceptor."""
    _, env = emu_command()
    code = "import torch\ntry:\n    torch.zeros(2) + torch.zeros(3)\nexcept RuntimeError:\n    print('caught')"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "caught", (done.stdout + done.stderr)[-3000:]
