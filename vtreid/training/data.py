"""The run's data: the dataset split (synthetic data generated on first use), loaders, epochs.

Synthetic data is written once, in the SYSU-MM01 layout, into the cache ($VTREID_CACHE, else
~/.cache/vtreid) under a name made of its settings, so every later run reuses it. It is written into a
temporary folder and renamed, so an interrupted generation never leaves a half dataset behind.
"""
from __future__ import annotations

import shutil
import tempfile
import warnings
from pathlib import Path

import torch

from vtreid.data import Split, build_loader, regdb, synthetic, sysu
from vtreid.data.verify import EMPTY_FOLDER, cache_dir

from .config import ConfigError




def synthetic_root(settings: dict) -> Path:
    s = settings
    root = cache_dir() / "synthetic" / f"sysu-ids{s['ids']}-img{s['images']}-{s['height']}x{s['width']}-seed{s['seed']}"
    if (root / "exp" / "test_id.txt").is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".writing-", dir=root.parent))
    try:
        synthetic.write_sysu(tmp, ids=s["ids"], images=s["images"], height=s["height"], width=s["width"], seed=s["seed"])
        try:
            tmp.rename(root)
        except OSError:  # another run wrote it meanwhile
            if not (root / "exp" / "test_id.txt").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def dataset_root(cfg: dict) -> Path:
    d = cfg["dataset"]
    if d["name"] == "synthetic":
        return synthetic_root(d["synthetic"])
    if not d["root"]:
        raise ConfigError(f"dataset {d['name']!r} needs its folder: --data-root DIR (or dataset.root=DIR)")
    return Path(d["root"])


def load_split(cfg: dict, progress=None, share=None) -> Split:
    """Train / query / gallery records; a missing or incomplete dataset raises the `vtreid.data check`
    report (ConfigError) before anything trains. ``progress(done, total)`` follows the image decoding,
    which runs only for a listing not verified before; ``share`` (vtreid.data.verify.WorkShare): under
    torchrun, every rank calls this and decodes its part."""
    d = cfg["dataset"]
    root = dataset_root(cfg)
    module = regdb if d["name"] == "regdb" else sysu
    # a listing verified before (by an earlier start or `vtreid.data check`) is not decoded again
    problems = regdb.check(root, trials=(d["trial"],), reuse_verified=True, progress=progress, share=share) \
        if d["name"] == "regdb" else sysu.check(root, reuse_verified=True, progress=progress, share=share)
    # An empty identity folder holds nothing to read: whether an identity the protocol uses lacks a modality
    # is checked on its own. A copy of a dataset that has such folders still trains; the check lists them.
    empty = [p for p in problems if p.startswith(EMPTY_FOLDER)]
    problems = [p for p in problems if not p.startswith(EMPTY_FOLDER)]
    if empty and (share is None or share.rank == 0):  # once for a torchrun job
        warnings.warn(f"dataset {d['name']} at {root}: {len(empty)} empty identity folder(s), e.g. "
                      f"{empty[0].split(': ', 1)[-1]}; they hold no image and are skipped (python -m vtreid.data "
                      f"check lists them)", stacklevel=2)
    if problems:
        shown = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise ConfigError(f"dataset {d['name']} at {root} is missing or incomplete (python -m vtreid.data check "
                          f"--dataset {'regdb' if module is regdb else 'sysu'} --root {root}):\n  {shown}")
    if d["name"] == "regdb":
        return regdb.load(root, trial=d["trial"])
    return sysu.load(root, train_ids=d["train_ids"])


class EpochBatches(torch.utils.data.Sampler):
    """The batches of one training epoch of ``length`` batches, drawn from the method's sampler.

    Epoch e runs the sampler's own epochs e * 1000, e * 1000 + 1, ... until ``length`` batches are out
    (an epoch may be longer than one pass over the identities, as the Hetero-Center authors define it),
    and skips the first ``start`` of them on a resume: the sequence depends only on the seed and e.
    Each item is a draw (record index, e, step in the epoch, slot in the batch): the dataset seeds the
    draw's augmentation with it (vtreid.data.loader).
    """

    ROUNDS = 1000   # sampler epochs per training epoch: epoch e uses e * ROUNDS ... e * ROUNDS + ROUNDS - 1

    def __init__(self, sampler, length: int):
        if length > self.ROUNDS * len(sampler):   # past it, epoch e + 1 would repeat epoch e's batches
            raise ValueError(f"an epoch of {length} batches needs more than {self.ROUNDS} passes over the identities "
                             f"({len(sampler)} batches each); at most {self.ROUNDS * len(sampler)}")
        self.sampler, self.length, self.epoch, self.start = sampler, length, 0, 0

    def set_position(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return self.length - self.start

    def __iter__(self):
        produced, round_ = 0, 0
        while produced < self.length:
            self.sampler.set_epoch(self.epoch * self.ROUNDS + round_)
            for batch in self.sampler:
                if produced >= self.start:
                    yield [(index, self.epoch, produced, slot) for slot, index in enumerate(batch)]
                produced += 1
                if produced >= self.length:
                    return
            round_ += 1


def train_loader(records, transform, batches: EpochBatches, cfg: dict, device: torch.device):
    """A loader whose own generator (not torch's global one) seeds the workers, so creating it does not
    move the global RNG: a resumed run draws the same dropout masks as an uninterrupted one."""
    workers = cfg["train"]["workers"]
    return build_loader(records, transform, batch_sampler=batches, workers=workers, pin_memory=device.type == "cuda",
                        seed=cfg["seed"], generator=torch.Generator().manual_seed(cfg["seed"]))
