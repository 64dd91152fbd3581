"""Dataset and loader used by training and evaluation.

A batch is a dict with the visible and infrared parts split apart in batch order: ``visible``
[Bv, 3, H, W], ``infrared`` [Bi, 3, H, W], and per part ``*_labels``, ``*_cams``, ``*_index`` (record
indices). Each training draw augments from its own generator, seeded with a hash of (seed, epoch, step,
slot in the batch, record): a record drawn twice in an epoch (the Hetero-Center epoch is several passes of
its sampler; a small identity is drawn with replacement) gets two augmentations, and a run is reproducible
whatever the number of workers, resumes included. Evaluation items (a plain record index) hash (seed,
epoch, record).
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .records import INFRARED, Record, load_image
from .transforms import Transform


def augmentation_seed(*key: int) -> int:
    """A 63-bit seed hashed from ``key`` (numpy's SeedSequence): distinct keys give unrelated seeds, where a
    linear mix of (seed, epoch, index) gave record i of epoch e + 1 the seed of record i + 10007 of epoch e."""
    high, low = np.random.SeedSequence([int(k) % 2**64 for k in key]).generate_state(2, np.uint32)
    return (int(high) << 32 | int(low)) % 2**63


class ReIDDataset(Dataset):
    def __init__(self, records: list[Record], transform: Transform, seed: int = 0):
        self.records, self.transform, self.seed = records, transform, seed

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key) -> dict:
        """``key``: a record index (seeded as epoch 0), or a training draw (index, epoch, step, slot) from
        ``EpochBatches``, which carries its own epoch."""
        if isinstance(key, tuple):
            index, seed = key[0], augmentation_seed(self.seed, *key[1:], key[0])
        else:
            index, seed = key, augmentation_seed(self.seed, 0, key)
        r = self.records[index]
        generator = torch.Generator().manual_seed(seed)
        image = self.transform(load_image(r.path, r.modality), generator)
        return {"image": image, "label": r.label, "cam": r.cam, "modality": r.modality, "index": index}


def collate(items: list[dict]) -> dict:
    out = {}
    for name, modality in (("visible", 0), ("infrared", INFRARED)):
        part = [it for it in items if it["modality"] == modality]
        shape = items[0]["image"].shape if items else (3, 0, 0)
        out[name] = torch.stack([it["image"] for it in part]) if part else torch.zeros((0, *shape))
        for key in ("label", "cam", "index"):
            out[f"{name}_{key}s" if key != "index" else f"{name}_index"] = torch.tensor([it[key] for it in part],
                                                                                        dtype=torch.long)
    return out


def build_loader(records: list[Record], transform: Transform, *, batch_sampler=None, batch_size: int = 64,
                 workers: int = 0, pin_memory: bool = False, persistent_workers: bool = False,
                 seed: int = 0, generator: torch.Generator | None = None) -> DataLoader:
    """A DataLoader over ``records``: batches from ``batch_sampler`` (training) or consecutive
    ``batch_size`` chunks in record order (evaluation). ``generator`` seeds the workers instead of
    torch's global RNG (so making a loader does not move the global RNG)."""
    dataset = ReIDDataset(records, transform, seed)
    common = dict(num_workers=workers, pin_memory=pin_memory, collate_fn=collate, generator=generator,
                  persistent_workers=persistent_workers and workers > 0)
    if batch_sampler is not None:
        return DataLoader(dataset, batch_sampler=batch_sampler, **common)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, **common)
