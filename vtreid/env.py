"""``python -m vtreid.env``: versions, the GPU if any, and which backends each device can run (and why not).

Paste its output into bug reports and benchmark notes.
"""
from __future__ import annotations

import platform
import sys

import torch

from vtreid.ops import _backend


def _triton_version() -> str:
    ok, why = _backend.triton_status()
    if not ok:
        return f"not installed ({why})"
    from importlib.metadata import version
    return version("triton")


def report() -> str:
    lines = [
        f"python   {sys.version.split()[0]} ({platform.platform()})",
        f"torch    {torch.__version__} (CUDA {torch.version.cuda or 'none'})",
        f"triton   {_triton_version()} (TRITON_INTERPRET={'1' if _backend.triton_interpreted() else '0'})",
    ]
    ok, why, with_cuda = _backend.native_status()
    lines.append(f"vtreid._C {'built' + (' with CUDA' if with_cuda else ' for CPU only') if ok else why}")
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            lines.append(f"gpu{i}     {props.name} (sm_{props.major}{props.minor}, "
                         f"{props.total_memory / 2**30:.0f} GiB)")
        devices.append(torch.device("cuda"))
    else:
        lines.append("gpu      none")
    for device in devices:
        lines.append(f"{device.type} backends (automatic choice: {_backend.auto_backend(device, torch.float32)}):")
        for name in _backend.BACKENDS:
            ok, why = _backend.availability(name, device, torch.float32)
            lines.append(f"  {name:<10} {'available' if ok else 'unavailable: ' + why}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
