"""Backend selection for every op family.

Order of precedence: the op's ``backend=`` argument, then the innermost ``use_backend(...)`` context,
then the ``VTREID_BACKEND`` environment variable, then the automatic choice for the input's device
(CUDA: ``triton``, else ``native``, else ``reference``; CPU: ``native``, else ``reference``).

A backend that cannot run here (extension not built, Triton not installed, Triton asked to run on CPU
tensors without ``TRITON_INTERPRET=1``, a dtype it does not take) falls back to ``reference`` with one
warning per (backend, reason) that says why. It never raises an import error.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import importlib.metadata
import importlib.util
import os
import sys
import warnings

import torch

BACKENDS = ("reference", "triton", "native")

_context_backend: contextvars.ContextVar[str | None] = contextvars.ContextVar("vtreid_backend", default=None)
_warned: set[tuple[str, str]] = set()


def _check_name(name: str, argument: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"{argument} must be one of {BACKENDS}, got {name!r}")
    return name


@contextlib.contextmanager
def use_backend(name: str):
    """Run the ops inside the ``with`` block on backend ``name`` unless an op names its own."""
    token = _context_backend.set(_check_name(name, "use_backend(name)"))
    try:
        yield
    finally:
        _context_backend.reset(token)


@functools.lru_cache(maxsize=None)
def native_status() -> tuple[bool, str, bool]:
    """(importable, reason if not, built with CUDA)."""
    try:
        module = importlib.import_module("vtreid._C")
    except ImportError as exc:  # not built (VTREID_SKIP_NATIVE=1, or a source checkout)
        return False, f"the extension vtreid._C is not built ({exc})", False
    return True, "", bool(module.with_cuda())


@functools.lru_cache(maxsize=None)
def triton_status() -> tuple[bool, str]:
    # Look for the package without importing it: triton decides at import time whether its own
    # @jit library functions are interpreted, so importing it here (possibly before the caller has
    # set TRITON_INTERPRET) would fix that choice too early.
    if importlib.util.find_spec("triton") is None:
        return False, "triton is not installed"
    return True, ""


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _major_minor(version: str) -> tuple[int, int]:
    parts = (version.split("+")[0].split(".") + ["0", "0"])[:2]
    return tuple(int("".join(ch for ch in part if ch.isdigit()) or 0) for part in parts)


@functools.lru_cache(maxsize=None)
def interpreter_status() -> tuple[bool, str]:
    """Whether the installed Triton's interpreter runs with the installed NumPy.

    Triton <= 3.6's interpreter takes int() of one-element arrays, which NumPy >= 2.4 refuses
    (triton-lang/triton#9171, fixed in 3.7): every interpreted kernel would fail deep in the interpreter.
    """
    try:
        triton_version = importlib.metadata.version("triton")
        numpy_version = importlib.metadata.version("numpy")
    except importlib.metadata.PackageNotFoundError:
        return True, ""
    if _major_minor(triton_version) < (3, 7) and _major_minor(numpy_version) >= (2, 4):
        return False, (f"the interpreter of Triton {triton_version} fails with NumPy {numpy_version} "
                       "(install 'numpy<2.4' or Triton >= 3.7)")
    return True, ""


def availability(backend: str, device: torch.device, dtype: torch.dtype | None = None) -> tuple[bool, str]:
    """Whether ``backend`` can run on tensors of ``device`` (and ``dtype``); if not, why."""
    _check_name(backend, "backend")
    if backend == "reference":
        return True, ""
    if backend == "native":
        ok, why, with_cuda = native_status()
        if not ok:
            return False, why
        if device.type == "cuda" and not with_cuda:
            return False, "vtreid._C was built without CUDA sources (CPU-only torch or no nvcc at build time)"
        if device.type not in ("cpu", "cuda"):
            return False, f"the native backend has no kernels for device type {device.type!r}"
        return True, ""
    ok, why = triton_status()
    if not ok:
        return False, why
    if device.type == "cpu" and not triton_interpreted():
        return False, "Triton runs on CUDA tensors; on CPU tensors it needs TRITON_INTERPRET=1"
    if triton_interpreted() and not interpreter_status()[0]:   # the interpreter takes CUDA tensors too
        return False, interpreter_status()[1]
    if device.type not in ("cpu", "cuda"):
        return False, f"the triton backend has no kernels for device type {device.type!r}"
    if dtype == torch.float64:
        return False, "the Triton kernels take float32, float16 and bfloat16, not float64"
    if dtype == torch.bfloat16 and triton_interpreted():
        return False, "the Triton interpreter cannot run bfloat16"
    return True, ""


def requested_backend(backend: str | None) -> str | None:
    if backend is not None:
        return _check_name(backend, "backend")
    ctx = _context_backend.get()
    if ctx is not None:
        return ctx
    env = os.environ.get("VTREID_BACKEND")
    if env:
        return _check_name(env, "VTREID_BACKEND")
    return None


def auto_backend(device: torch.device, dtype: torch.dtype | None = None) -> str:
    order = ("triton", "native") if device.type == "cuda" else ("native",)
    for name in order:
        if availability(name, device, dtype)[0]:
            return name
    return "reference"


@torch.compiler.assume_constant_result
def resolve(backend: str | None, device: torch.device, dtype: torch.dtype | None, op: str) -> str:
    """The backend ``op`` runs on for inputs on ``device`` of ``dtype``.

    Under ``torch.compile`` the choice is made once, while tracing, and baked into the graph.
    """
    name = requested_backend(backend)
    if name is None:
        return auto_backend(device, dtype)
    ok, why = availability(name, device, dtype)
    if ok:
        return name
    key = (name, why)
    if key not in _warned:
        _warned.add(key)
        warnings.warn(f"vtreid.ops.{op}: backend {name!r} is unavailable ({why}); using 'reference'",
                      RuntimeWarning, stacklevel=_caller_stacklevel())
    return "reference"


def _caller_stacklevel() -> int:
    """The stacklevel of the first frame outside vtreid/ops, for a warning raised in the caller of this:
    the op's caller, however many wrappers (autocast, one op calling another) lie between."""
    here = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == here:
        frame, level = frame.f_back, level + 1
    return level
