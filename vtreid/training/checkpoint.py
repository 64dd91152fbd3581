"""Checkpoints that never lose work: written to a temporary file, fsynced, renamed over the old one.

A checkpoint holds everything an exact resume needs: model, optimisers, schedulers, grad scaler, step,
epoch, position in the epoch, stage, every RNG (Python, numpy, torch CPU and CUDA), the resolved config
and the versions it was written with.
"""
from __future__ import annotations

import os
import platform
import random
from pathlib import Path

import numpy as np
import torch

import vtreid


def versions() -> dict:
    return {"vtreid": vtreid.__version__, "torch": torch.__version__, "python": platform.python_version(),
            "cuda": torch.version.cuda}


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _replace_atomic(path: str | os.PathLike, write) -> Path:
    """``write(file)`` into a temporary file beside ``path``, fsynced, renamed over ``path``: a reader (or a
    run after a power cut) sees the old file or the whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself survives a power cut
    finally:
        os.close(fd)
    return path


def save_atomic(obj, path: str | os.PathLike) -> Path:
    """torch.save to ``path``, atomically."""
    return _replace_atomic(path, lambda f: torch.save(obj, f))


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """``text`` (UTF-8) to ``path``, atomically."""
    return _replace_atomic(path, lambda f: f.write(text.encode()))


def load(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        # our own files: they hold RNG states (numpy arrays, tuples), which weights_only refuses
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not a checkpoint"
        raise ValueError(f"{path} is not a vtreid checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise ValueError(f"{path} is not a vtreid training checkpoint (no model / config)")
    return ckpt


def state_mismatch(model: torch.nn.Module, state: dict, shown: int = 3) -> str | None:
    """None when ``state`` fits ``model`` (every key, every shape), else one line saying how many keys are
    missing, unexpected or of another shape, with the first ``shown`` of each: load_state_dict's own
    message lists every key, hundreds of lines for a ResNet-50 from another version of a model."""
    own = model.state_dict()

    def listed(what, keys):
        more = f", ... ({len(keys) - shown} more)" if len(keys) > shown else ""
        return f"{len(keys)} {what} ({', '.join(keys[:shown])}{more})"
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    reshaped = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
                if k in state and isinstance(state[k], torch.Tensor) and state[k].shape != own[k].shape]
    parts = [listed(what, keys) for what, keys in (("missing", missing), ("unexpected", unexpected),
                                                   ("of another shape (checkpoint vs model)", reshaped)) if keys]
    return "; ".join(parts) or None
