"""The wheel a user installs holds every module and preset of the tree, and setuptools builds it without warnings
about data directories (which it says a future release will stop shipping)."""
import os
import subprocess
import sys
import zipfile

from support import ROOT


def test_wheel_holds_every_preset_and_kernel_module(tmp_path):
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation", str(ROOT),
                           "-w", str(tmp_path)], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "VTREID_SKIP_NATIVE": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "absent from the `packages` configuration" not in done.stdout + done.stderr
    (wheel,) = tmp_path.glob("vtreid-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    presets = {f"vtreid/presets/{p.relative_to(ROOT / 'vtreid' / 'presets').as_posix()}"
               for p in (ROOT / "vtreid" / "presets").rglob("*.yaml")}
    kernels = {f"vtreid/kernels/{p.name}" for p in (ROOT / "kernels").glob("*.py")}
    assert len(presets) >= 22 and presets <= names, sorted(presets - names)
    assert kernels <= names, sorted(kernels - names)
