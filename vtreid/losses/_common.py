"""Checks and dtype handling shared by the losses."""
from __future__ import annotations

import torch

from vtreid.ops._checks import check_tensor


def accumulate(t: torch.Tensor) -> torch.Tensor:
    """float16 / bfloat16 computed in float32; float32 and float64 as they are."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def check_rows(tensors: dict[str, torch.Tensor], ndim: int | None = None) -> None:
    """Same number of rows, same device, float dtype; ``ndim`` fixes the rank when given."""
    first_name, first = next(iter(tensors.items()))
    for name, t in tensors.items():
        check_tensor(t, name)
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a float tensor, got {t.dtype}")
        if ndim is not None and t.dim() != ndim:
            raise ValueError(f"{name} must be a {ndim}-D tensor, got shape {tuple(t.shape)}")
        if t.shape != first.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)} but {first_name} has {tuple(first.shape)}")
        if t.device != first.device:
            raise ValueError(f"{name} is on {t.device} but {first_name} is on {first.device}")
