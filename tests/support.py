"""Shared test helpers: the device list, the backends each device can run, and the tolerance table."""
from __future__ import annotations

from typing import NamedTuple

import pytest
import torch

from vtreid.ops import _backend


class Tol(NamedTuple):
    atol: float
    rtol: float


#: The one tolerance table. Errors of fused sums grow with the magnitude of their terms, so atol is
#: scaled by max(1, max |expected|) in assert_matches.
TOLERANCES = {
    torch.float64: Tol(1e-9, 1e-9),
    torch.float32: Tol(2e-5, 2e-5),
    torch.float16: Tol(4e-3, 4e-3),
    torch.bfloat16: Tol(3e-2, 3e-2),
}

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
FUSED_BACKENDS = ("native", "triton")


def dtypes_for(device: str, backend: str = "reference"):
    """Float dtypes a backend takes on a device (bfloat16 only on GPU, float64 not in Triton)."""
    out = [torch.float32, torch.float16]
    if device == "cuda":
        out.append(torch.bfloat16)
    if backend != "triton":
        out.append(torch.float64)
    return out


def require_backend(backend: str, device: str, dtype: torch.dtype | None = None) -> None:
    """Skip (with the reason) when ``backend`` cannot run here; CI asserts availability separately
    (tests/ops/test_backend.py::test_required_backends_are_available), so a skip cannot hide a
    backend that should have been built."""
    ok, why = _backend.availability(backend, torch.device(device), dtype)
    if not ok:
        pytest.skip(f"{backend} unavailable on {device}: {why}")


def assert_matches(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str,
                   scale: torch.Tensor | None = None) -> None:
    """|actual - expected| <= atol * scale + rtol * |expected| elementwise, with the dtype's tolerance.

    ``scale`` (broadcast against expected; default: the largest |expected|, at least 1) is the size of
    the terms a fused sum adds up; pass it per row when a result cancels to ~0 from large terms."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    tol = TOLERANCES[dtype]
    act, exp = actual.double(), expected.double()
    if scale is None:
        finite = exp[exp.isfinite()]
        scale = torch.tensor(max(1.0, finite.abs().max().item()) if finite.numel() else 1.0)
    scale = scale.double().to(exp.device).clamp_min(1.0)
    same_special = (act == exp) | (act.isnan() & exp.isnan())  # equal infinities, NaN where expected
    err = (act - exp).abs()
    bound = tol.atol * scale + tol.rtol * exp.abs()
    bad = ~(same_special | (err <= bound))
    if bad.any():
        idx = bad.nonzero()[0].tolist()
        raise AssertionError(f"{what}: {int(bad.sum())} of {bad.numel()} elements out of tolerance "
                             f"{tol}; first at {idx}: actual {act[tuple(idx)].item()!r}, "
                             f"expected {exp[tuple(idx)].item()!r}, max error {err[bad].max().item():.3e}")
