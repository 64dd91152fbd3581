"""Image records shared by the readers, samplers, loader and evaluation."""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

VISIBLE, INFRARED = 0, 1


class Record(NamedTuple):
    """One image: its path, the dataset's identity number, a contiguous label (training: 0..K-1; test
    sets: the identity), the camera number, and the modality (0 visible, 1 infrared)."""
    path: str
    pid: int
    label: int
    cam: int
    modality: int


class Split(NamedTuple):
    train: list[Record]
    query: list[Record]
    gallery: list[Record]


def relabel(records: list[Record]) -> list[Record]:
    """Training labels 0..K-1 in sorted identity order."""
    ids = {pid: i for i, pid in enumerate(sorted({r.pid for r in records}))}
    return [r._replace(label=ids[r.pid]) for r in records]


def load_image(path: str | Path, modality: int = VISIBLE) -> torch.Tensor:
    """[3, H, W] uint8 tensor; infrared images become three identical channels (from their luminance).
    A missing or corrupt file raises an error that names it."""
    try:
        with Image.open(path) as img:
            img.load()
            img = img.convert("L").convert("RGB") if modality == INFRARED else img.convert("RGB")
            array = np.asarray(img, dtype=np.uint8)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"image not found: {path}") from exc
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for a bad file
        raise ValueError(f"cannot read image {path}: {exc}") from exc
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()
