"""python -m vtreid.extract: test-set features of a trained checkpoint, in the features-file format.

    python -m vtreid.extract --checkpoint runs/hc-synthetic-.../checkpoints/best.pt --out feats.pt
    python -m vtreid.extract --checkpoint best.pt --dataset sysu --data-root /data/SYSU-MM01 --out feats.pt

The file holds the query and the gallery set of the checkpoint's dataset (or of --dataset / --data-root /
--trial), query rows first: ``features`` [N, D], ``ids``, ``cams``, ``modalities`` (0 visible, 1
infrared), ``paths``, and ``query`` (1 for a query row), which is what ``python -m vtreid.evaluate
--features`` and ``python -m vtreid.visualize`` read. SYSU-MM01 (and the synthetic data): the infrared
queries and every visible test image (each trial draws its gallery from them); RegDB: the trial's
visible and thermal test images.

From Python, for your own images:

    from vtreid.extract import load_checkpoint, extract_images
    loaded = load_checkpoint("best.pt")
    feats = extract_images(loaded, ["a.jpg", "b.png"], modalities=[0, 1])   # features [2, D], ...
"""
from __future__ import annotations

import argparse
import copy
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from vtreid import _cli as cli
from vtreid.data import Record
from vtreid.training import checkpoint as ckpt_io
from vtreid.training.config import DATASETS, ConfigError, complete
from vtreid.training.evaluation import extract_features


class CommandError(Exception):
    """A problem with the user's input (a missing file, a wrong format): printed as one line, exit 2."""


@dataclass
class Loaded:
    """A checkpoint's network (eval mode, on ``device``), its configuration and its test transform."""
    model: torch.nn.Module
    cfg: dict
    transform: object
    path: Path
    step: int | None
    device: torch.device

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.transform.test_size)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Loaded:
    """Rebuild a training checkpoint's network and test transform; raises ValueError / FileNotFoundError
    with a message naming the file when it is missing or not a vtreid checkpoint."""
    from vtreid.methods import VARIANTS, get_method   # the methods floor sits above data/eval; import on use

    path = Path(path)
    state = ckpt_io.load(path)
    for key in ("num_classes", "stage"):
        if key not in state:
            raise ValueError(f"{path} is not a vtreid training checkpoint (no {key!r})")
    try:
        cfg = complete(state["config"], VARIANTS)   # settings added since it was written
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: its configuration cannot be read ({type(exc).__name__}: {exc})") from exc
    cfg.setdefault("model", {})["pretrained"] = None   # the weights come from the checkpoint
    try:
        method = get_method(cfg["method"])(cfg, state["num_classes"])
        model = method.build_model()
        if state["stage"] > 1:
            method.begin_stage(state["stage"], model)
        _, transform = method.transforms()
    except (ValueError, KeyError, RuntimeError, TypeError) as exc:   # ConfigError is a ValueError
        raise ValueError(f"{path}: cannot rebuild its network ({type(exc).__name__}: {exc})") from exc
    mismatch = ckpt_io.state_mismatch(model, state["model"])
    if mismatch:
        raise ValueError(f"{path}: its weights do not fit the network its configuration builds (written by "
                         f"vtreid {state.get('versions', {}).get('vtreid', '?')}): keys {mismatch}")
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise ValueError(f"{path}: cannot load its weights ({exc})") from exc
    device = torch.device(device)
    model = model.to(device).eval()
    return Loaded(model, cfg, transform, path, state.get("step"), device)


def dataset_config(cfg: dict, dataset: str | None = None, data_root: str | None = None,
                   trial: int | None = None) -> dict:
    """The checkpoint's configuration with the dataset swapped for the one asked for."""
    cfg = copy.deepcopy(cfg)
    d = cfg["dataset"]
    if dataset and dataset != d["name"]:
        d["name"], d["root"] = dataset, None
    if data_root:
        d["root"] = data_root
    if trial is not None:
        d["trial"] = trial
    return cfg


def extract_split(loaded: Loaded, dataset: str | None = None, data_root: str | None = None,
                  trial: int | None = None, *, batch_size: int | None = None, workers: int = 0) -> dict:
    """Features of the query and gallery sets (query rows first), with ``query`` marking the query rows
    and ``dataset`` / ``protocol`` naming where they came from."""
    from vtreid.training.data import load_split

    cfg = dataset_config(loaded.cfg, dataset, data_root, trial)
    split = load_split(cfg)
    kw = dict(device=loaded.device, batch_size=batch_size or cfg["eval"]["batch_size"], workers=workers)
    query = extract_features(loaded.model, split.query, loaded.transform, **kw)
    gallery = extract_features(loaded.model, split.gallery, loaded.transform, **kw)
    out = {"features": torch.cat([query["features"], gallery["features"]]),
           "query": torch.cat([torch.ones(len(split.query), dtype=torch.uint8),
                               torch.zeros(len(split.gallery), dtype=torch.uint8)])}
    for key in ("ids", "cams", "modalities"):
        out[key] = torch.as_tensor(np.concatenate([query[key], gallery[key]]).astype(np.int64))
    out["paths"] = [str(p) for p in query["paths"] + gallery["paths"]]
    out["dataset"] = cfg["dataset"]["name"]
    out["trial"] = int(cfg["dataset"]["trial"])
    out["method"] = cfg["method"]
    out["checkpoint"] = str(loaded.path)
    return out


def extract_images(loaded: Loaded, paths: Sequence[str | Path], modalities: Sequence[int] | int, *,
                   ids: Sequence[int] | None = None, cams: Sequence[int] | None = None, batch_size: int = 64,
                   workers: int = 0) -> dict:
    """Features of your own images. ``modalities``: per image (or one for all) 0 visible / 1 infrared
    (infrared images are read as three identical channels and go through the infrared stream of a
    two-stream network). Returns the features-file dict: features [N, D] in the order of ``paths``,
    ids and cams (-1 / 0 when not given), modalities and paths."""
    paths = [str(p) for p in paths]
    n = len(paths)
    modalities = [int(modalities)] * n if isinstance(modalities, int) else [int(m) for m in modalities]
    ids = [-1] * n if ids is None else [int(i) for i in ids]
    cams = [0] * n if cams is None else [int(c) for c in cams]
    if not (len(modalities) == len(ids) == len(cams) == n):
        raise ValueError(f"paths ({n}), modalities ({len(modalities)}), ids ({len(ids)}) and cams ({len(cams)}) "
                         f"must have one entry per image")
    if any(m not in (0, 1) for m in modalities):
        raise ValueError("modalities must be 0 (visible) or 1 (infrared)")
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"image not found: {missing[0]}" + (f" (and {len(missing) - 1} more)"
                                                                     if len(missing) > 1 else ""))
    records = [Record(p, i, i, c, m) for p, i, c, m in zip(paths, ids, cams, modalities)]
    feats = extract_features(loaded.model, records, loaded.transform, device=loaded.device, batch_size=batch_size,
                             workers=workers)
    return {"features": feats["features"], "ids": torch.as_tensor(np.asarray(ids, dtype=np.int64)),
            "cams": torch.as_tensor(np.asarray(cams, dtype=np.int64)),
            "modalities": torch.as_tensor(np.asarray(modalities, dtype=np.int64)), "paths": paths}


def save_features(features: dict, path: str | Path) -> Path:
    """torch.save (.pt) or numpy (.npz) by the file's suffix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npz":
        np.savez(path, **{k: (v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v)) for k, v in features.items()})
    else:
        torch.save(features, path)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vtreid.extract", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a training checkpoint (checkpoints/best.pt or last.pt)")
    parser.add_argument("--out", required=True, type=cli.output_file, help="features file to write (.pt, or .npz)")
    parser.add_argument("--dataset", choices=DATASETS, help="default: the checkpoint's dataset")
    parser.add_argument("--data-root", help="the dataset folder (default: the checkpoint's)")
    parser.add_argument("--trial", type=cli.positive_int, help="RegDB trial (default: the checkpoint's)")
    parser.add_argument("--device", type=cli.device, default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=cli.positive_int, help="default: the checkpoint's eval.batch_size")
    parser.add_argument("--workers", type=int, default=0, help="data-loading processes")
    args = parser.parse_args(argv)
    try:
        loaded = load_checkpoint(args.checkpoint, args.device)
        feats = extract_split(loaded, args.dataset, args.data_root, args.trial, batch_size=args.batch_size,
                              workers=args.workers)
        save_features(feats, args.out)
    except (ValueError, FileNotFoundError, CommandError) as exc:   # ConfigError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    q = int(feats["query"].sum())
    print(f"wrote {args.out}: {q} query and {len(feats['ids']) - q} gallery features of dimension "
          f"{feats['features'].shape[1]} ({feats['method']} on {feats['dataset']}, step {loaded.step})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
