"""Evaluation of a model during and after training, with the dataset's protocol (PROTOCOLS.md).

synthetic and SYSU-MM01: infrared queries against visible galleries drawn per trial (all-search,
single-shot by default; cfg eval.mode / eval.shots), the official exp/rand_perm_cam.mat's when the dataset
has it (cfg eval.galleries); RegDB: the run's trial, both directions.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from vtreid.data import Record, build_loader, sysu
from vtreid.eval import (Galleries, evaluate_regdb, evaluate_sysu, format_table, sysu_galleries, sysu_gallery,
                         sysu_setting)

from . import distributed


@torch.no_grad()
def extract_features(model: torch.nn.Module, records: list[Record], transform, *, device: torch.device,
                     batch_size: int = 128, workers: int = 0, autocast=contextlib.nullcontext) -> dict:
    """The test embedding of every record, in record order, with its ids, cameras, modalities and paths
    (the features-file format of ``python -m vtreid.evaluate``)."""
    was_training = model.training
    model.eval()
    # the loader's own generator: evaluating does not move the global RNG (a resumed run stays exact)
    loader = build_loader(records, transform, batch_size=batch_size, workers=workers, pin_memory=device.type == "cuda",
                          generator=torch.Generator().manual_seed(0))
    features = None
    try:
        for batch in loader:
            with autocast():
                out = model(batch["visible"].to(device), batch["infrared"].to(device))
            rows = torch.cat([batch["visible_index"], batch["infrared_index"]])  # the network's row order
            if features is None:
                features = torch.empty(len(records), out.shape[1])
            features[rows] = out.float().cpu()
    finally:
        model.train(was_training)
    return {"features": features if features is not None else torch.empty(0, 0), **describe(records)}


def describe(records: list[Record]) -> dict:
    """The ids, cameras, modalities and paths of a features file."""
    return {"ids": np.array([r.pid for r in records]), "cams": np.array([r.cam for r in records]),
            "modalities": np.array([r.modality for r in records]), "paths": [r.path for r in records]}


def extract_sharded(model, records, transform, **kw) -> dict | None:
    """extract_features with the records split over the ranks (rank r takes r, r + world, ...), put back
    in order on rank 0; the other ranks get None. One process: extract_features itself."""
    world = distributed.world_size()
    if world == 1:
        return extract_features(model, records, transform, **kw)
    rank = torch.distributed.get_rank()
    mine = extract_features(model, records[rank::world], transform, **kw)["features"]
    parts = distributed.gather_objects(mine)
    if rank:
        return None
    out = describe(records)
    out["features"] = torch.empty(len(records), max(part.shape[1] for part in parts))
    for r, part in enumerate(parts):
        if len(part):   # a rank with no records (fewer than ranks) has an empty [0, 0] part
            out["features"][r::world] = part
    return out


def galleries_for(cfg: dict) -> Galleries | None:
    """The SYSU galleries of cfg's dataset and eval.galleries (None for RegDB). A run resolves them once,
    before its first step, so that a damaged exp/rand_perm_cam.mat stops it at the start."""
    if cfg["dataset"]["name"] == "regdb":
        return None
    from .config import ConfigError
    from .data import dataset_root
    try:
        return sysu_galleries(cfg["eval"]["galleries"], sysu.rand_perm_path(dataset_root(cfg)))
    except ValueError as exc:   # a damaged or (eval.galleries=official) missing file: before any work
        raise ConfigError(f"eval.galleries={cfg['eval']['galleries']}: {exc}") from None


def check_galleries(galleries: Galleries | None, split, cfg: dict) -> None:
    """Every trial's official gallery can be drawn from the test set: a rand_perm_cam.mat of another copy of
    the dataset fails here, before the first step, on every rank, not at the first evaluation."""
    if galleries is None or galleries.rand_perm is None:
        return
    from .config import ConfigError
    e, gallery = cfg["eval"], describe(split.gallery)
    for trial in range(1, max(e["trials_during"], e["trials_final"]) + 1):
        try:
            sysu_gallery(gallery["ids"], gallery["cams"], gallery["paths"], mode=e["mode"], shots=e["shots"],
                         trial=trial, rand_perm=galleries.rand_perm)
        except ValueError as exc:
            raise ConfigError(f"eval.galleries={e['galleries']}: the dataset's rand_perm_cam.mat does not fit its test "
                              f"images: {exc}") from None


def evaluate_model(model, split, transform, cfg: dict, *, device, final: bool, autocast=contextlib.nullcontext,
                   galleries: Galleries | None = None):
    """{"protocol": ..., "results": {name: summary}, "score": mAP used to pick the best checkpoint}. Under
    torchrun every rank extracts a share of the images, rank 0 ranks them, and every rank gets the score
    (the other ranks' "results" are empty). ``galleries``: galleries_for(cfg)'s, resolved here if None."""
    e = cfg["eval"]
    kw = dict(device=device, batch_size=e["batch_size"], workers=cfg["train"]["workers"], autocast=autocast)
    query = extract_sharded(model, split.query, transform, **kw)
    gallery = extract_sharded(model, split.gallery, transform, **kw)
    if query is None:
        return {"protocol": None, "results": {}, "score": distributed.gather_objects(None)[0]}
    if cfg["dataset"]["name"] == "regdb":
        # regdb.load's default direction: the queries are the visible test images
        results = {"RegDB visible_to_thermal": evaluate_regdb(query, gallery, metric=e["metric"]),
                   "RegDB thermal_to_visible": evaluate_regdb(gallery, query, metric=e["metric"])}
        protocol = f"regdb trial {cfg['dataset']['trial']}, both directions"
    else:
        galleries = galleries or galleries_for(cfg)
        trials = e["trials_final"] if final else e["trials_during"]
        name = f"{sysu_setting(cfg['dataset']['name'], e['mode'], e['shots'], galleries.source)}, {trials} trial(s)"
        results = {name: evaluate_sysu(query, gallery, mode=e["mode"], shots=e["shots"], trials=trials,
                                       rand_perm=galleries.rand_perm, metric=e["metric"])}
        protocol = f"sysu {e['mode']} shots={e['shots']} trials={trials} galleries={galleries.source}"
    score = float(np.mean([r["mAP"]["mean"] for r in results.values()]))
    score = distributed.gather_objects(score)[0]   # the other ranks wait here for rank 0's score
    return {"protocol": protocol, "results": results, "score": score}


def format_results(evaluation: dict) -> str:
    return "\n".join(format_table(name, summary) for name, summary in evaluation["results"].items())
