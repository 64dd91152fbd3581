"""Input validation shared by every op (errors name the argument that is wrong), and the int32 modality
the fused kernels read.

Checks look at metadata (shape, dtype, device), which costs no host sync. Values (class indices, modality)
are checked only where that is free: CPU tensors, or any device with VTREID_CHECK_VALUES=1.
"""
from __future__ import annotations

import math
import numbers
import os

import numpy as np
import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_tensor(t, name: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def check_features(t, name: str, ndim: int = 2) -> torch.Tensor:
    """A float feature matrix of rank ``ndim`` (rows = samples, last dim = features)."""
    check_tensor(t, name)
    if t.dim() != ndim:
        raise ValueError(f"{name} must be a {ndim}-D tensor, got shape {tuple(t.shape)}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16, bfloat16 or float64, got {t.dtype}")
    if t.shape[-1] == 0:
        raise ValueError(f"{name} has a feature dimension of size 0")
    return t


def _first_and_mismatch(tensors: dict[str, torch.Tensor], attr: str):
    """(name, tensor) of the first non-None tensor, and of the first whose ``attr`` differs from it."""
    first_name = first = None
    for name, t in tensors.items():
        if t is None:
            continue
        if first is None:
            first_name, first = name, t
        elif getattr(t, attr) != getattr(first, attr):
            return (first_name, first), (name, t)
    return (first_name, first), None


def check_same_device(tensors: dict[str, torch.Tensor]) -> torch.device:
    (first_name, first), bad = _first_and_mismatch(tensors, "device")
    if bad:
        raise ValueError(f"{bad[0]} is on {bad[1].device} but {first_name} is on {first.device}")
    return first.device


def check_same_dtype(tensors: dict[str, torch.Tensor]) -> torch.dtype:
    (first_name, first), bad = _first_and_mismatch(tensors, "dtype")
    if bad:
        raise TypeError(f"{bad[0]} has dtype {bad[1].dtype} but {first_name} has dtype {first.dtype}")
    return first.dtype


def check_feature_dims(a: torch.Tensor, a_name: str, b: torch.Tensor, b_name: str) -> None:
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"{a_name} has feature dimension {a.shape[-1]} but {b_name} has {b.shape[-1]}")


def check_real(value, name: str, *, positive: bool = False, at_least: float | None = None) -> float:
    """A finite real number (Python's or NumPy's, not a bool), positive or at least ``at_least`` when asked:
    a NaN or inf margin or scale would turn every loss into NaN or inf, and a bool reached the reference as
    a tensor operand."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or (positive and not value > 0):
        raise ValueError(f"{name} must be a finite{' positive' if positive else ''} number, got {value}")
    if at_least is not None and value < at_least:
        raise ValueError(f"{name} must be at least {at_least:g}, got {value:g}")
    return value


def check_fraction(value, name: str) -> float:
    """A number in [0, 1] (a label smoothing)."""
    value = check_real(value, name)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a float in [0, 1], got {value!r}")
    return value


def check_flag(value, name: str) -> bool:
    """A bool (Python's or NumPy's): bool("no") is True, so a string must not pass as a flag."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_scale(value, dtype: torch.dtype, what: str) -> float:
    """A logit scale s: finite, positive, and small enough that the logits s cos (|cos| <= 1) and their
    gradient (up to 2 s) stay finite in ``dtype``: past that every backend, the reference too, gave NaN."""
    scale = check_real(value, "scale", positive=True)
    limit = torch.finfo(dtype).max / 2
    if scale > limit:
        raise ValueError(f"scale must be at most {limit:.3g} ({what} in {dtype} overflow past it), got {scale:g}")
    return scale


def check_choice(value, name: str, choices) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def values_checked(t: torch.Tensor) -> bool:
    """Whether to check t's values: a check of a CUDA tensor would synchronise with the host, so only on
    request (VTREID_CHECK_VALUES=1) there."""
    return t.device.type == "cpu" or os.environ.get("VTREID_CHECK_VALUES", "0") == "1"


def check_modality_values(modality: torch.Tensor, name: str) -> None:
    if modality.dtype != torch.bool and values_checked(modality) and modality.numel():
        if ((modality < 0) | (modality > 1)).any():
            raise ValueError(f"{name} must hold 0 (visible) or 1 (infrared) only")


def modality_ids(modality: torch.Tensor) -> torch.Tensor:
    """int32 modality for the fused kernels, which read 0 as visible and any other value as infrared (as
    every backend does): int32 goes as given, another dtype costs one launch (!= 0 written as int32)."""
    if modality.dtype == torch.int32:
        return modality.contiguous()
    return torch.ne(modality, 0, out=torch.empty(modality.shape, dtype=torch.int32, device=modality.device))
