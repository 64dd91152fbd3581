"""Evaluation of a model during and after training, with the dataset's protocol (PROTOCOLS.md).

synthetic and SYSU-MM01: infrared queries against visible galleries drawn per trial (all-search,
single-shot by default; cfg eval.mode / eval.shots); RegDB: the run's trial, both directions.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from vtreid.data import Record, build_loader
from vtreid.eval import evaluate_regdb, evaluate_sysu, format_table

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
    out["features"] = torch.empty(len(records), parts[0].shape[1])
    for r, part in enumerate(parts):
        out["features"][r::world] = part
    return out


def evaluate_model(model, split, transform, cfg: dict, *, device, final: bool, autocast=contextlib.nullcontext):
    """{"protocol": ..., "results": {name: summary}, "score": mAP used to pick the best checkpoint}. Under
    torchrun every rank extracts a share of the images, rank 0 ranks them, and every rank gets the score
    (the other ranks' "results" are empty)."""
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
        trials = e["trials_final"] if final else e["trials_during"]
        name = f"{'SYSU-MM01' if cfg['dataset']['name'] == 'sysu' else 'synthetic (SYSU)'} {e['mode']} " \
               f"{'single' if e['shots'] == 1 else 'multi'}-shot, {trials} trial(s)"
        results = {name: evaluate_sysu(query, gallery, mode=e["mode"], shots=e["shots"], trials=trials,
                                       metric=e["metric"])}
        protocol = f"sysu {e['mode']} shots={e['shots']} trials={trials}"
    score = float(np.mean([r["mAP"]["mean"] for r in results.values()]))
    score = distributed.gather_objects(score)[0]   # the other ranks wait here for rank 0's score
    return {"protocol": protocol, "results": results, "score": score}


def format_results(evaluation: dict) -> str:
    return "\n".join(format_table(name, summary) for name, summary in evaluation["results"].items())
