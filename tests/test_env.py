import subprocess
import sys


def test_env_report_lists_backends():
    out = subprocess.run([sys.executable, "-m", "vtreid.env"], capture_output=True, text=True, check=True).stdout
    for needle in ("torch", "triton", "vtreid._C", "cpu backends", "reference", "native"):
        assert needle in out
