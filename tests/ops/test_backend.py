"""Backend resolution: argument > use_backend > VTREID_BACKEND > automatic; fallback warns once."""
import os
import warnings

import pytest
import torch

import vtreid.ops as ops
from vtreid.ops import _backend
from support import require_backend


def test_required_backends_are_available():
    """CI sets VTREID_REQUIRE_BACKENDS=native,triton so a build or install failure cannot turn the
    backend tests into skips."""
    required = [b for b in os.environ.get("VTREID_REQUIRE_BACKENDS", "").split(",") if b]
    if not required:
        pytest.skip("VTREID_REQUIRE_BACKENDS not set")
    for name in required:
        ok, why = _backend.availability(name, torch.device("cpu"), torch.float32)
        assert ok, f"backend {name} is required but unavailable: {why}"


def test_auto_choice_on_cpu_prefers_native():
    expected = "native" if _backend.availability("native", torch.device("cpu"))[0] else "reference"
    assert _backend.resolve(None, torch.device("cpu"), torch.float32, "test") == expected


def test_precedence(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setenv("VTREID_BACKEND", "reference")
    assert _backend.requested_backend(None) == "reference"
    with ops.use_backend("triton"):
        assert _backend.requested_backend(None) == "triton"
        assert _backend.requested_backend("native") == "native"
        with ops.use_backend("native"):
            assert _backend.requested_backend(None) == "native"
        assert _backend.requested_backend(None) == "triton"
    monkeypatch.delenv("VTREID_BACKEND")
    assert _backend.requested_backend(None) is None
    assert _backend.resolve("reference", cpu, torch.float32, "test") == "reference"


def test_unknown_backend_names_the_argument(monkeypatch):
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match="backend"):
        ops.pairwise_distance(x, backend="cuBLAS")
    with pytest.raises(ValueError, match="use_backend"):
        with ops.use_backend("fast"):
            pass
    monkeypatch.setenv("VTREID_BACKEND", "nope")
    with pytest.raises(ValueError, match="VTREID_BACKEND"):
        ops.pairwise_distance(x)


def test_unavailable_backend_falls_back_with_one_warning(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # Triton cannot take CPU tensors then
    monkeypatch.setattr(_backend, "_warned", set())
    x = torch.randn(5, 3)
    with pytest.warns(RuntimeWarning, match="TRITON_INTERPRET"):
        d = ops.pairwise_distance(x, backend="triton")
    torch.testing.assert_close(d, ops.pairwise_distance(x, backend="reference"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ops.pairwise_distance(x, backend="triton")  # the same reason is not warned twice


def test_float64_is_not_sent_to_triton():
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # where Triton runs otherwise
    require_backend("triton", device.type)   # skips only where Triton cannot run at all (no GPU, no interpreter)
    ok, why = _backend.availability("triton", device, torch.float64)
    assert not ok and "float64" in why


@pytest.mark.parametrize("triton_version, numpy_version, runs", [
    ("3.6.0", "2.4.1", False), ("3.5.1", "2.4.0rc1", False), ("3.6.0", "2.3.5", True),
    ("3.7.0", "2.4.1", True), ("3.9.0+git1a2b", "2.4.6", True), ("3.10.0", "2.5.0", True)])
def test_an_interpreter_that_numpy_breaks_is_unavailable_with_the_fix(monkeypatch, triton_version, numpy_version,
                                                                       runs):
    """Triton <= 3.6 interprets with int() of one-element arrays, which NumPy >= 2.4 refuses: every
    interpreted kernel would fail deep inside the interpreter, so the interpreted backend is unavailable,
    saying why."""
    versions = {"triton": triton_version, "numpy": numpy_version}
    monkeypatch.setattr(_backend.importlib.metadata, "version", versions.__getitem__)
    monkeypatch.setattr(_backend, "triton_status", lambda: (True, ""))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    _backend.interpreter_status.cache_clear()
    try:
        ok, why = _backend.availability("triton", torch.device("cpu"), torch.float32)
        on_gpu = _backend.availability("triton", torch.device("cuda"), torch.float32)[0]
    finally:
        _backend.interpreter_status.cache_clear()
    assert ok == runs, why
    if not runs:
        assert f"Triton {triton_version}" in why and f"NumPy {numpy_version}" in why and "numpy<2.4" in why
    assert on_gpu == runs   # TRITON_INTERPRET=1 interprets CUDA tensors too
