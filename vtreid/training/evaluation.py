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


@torch.no_grad()
def extract_features(model: torch.nn.Module, records: list[Record], transform, *, device: torch.device,
                     batch_size: int = 128, workers: int = 0, autocast=contextlib.nullcontext) -> dict:
    """The test embedding of every record, in record order, with its ids, cameras, modalities and paths
    (the features-file format of ``python -m vtreid.evaluate``)."""
    was_training = model.training
    model.eval()
    loader = build_loader(records, transform, batch_size=batch_size, workers=workers, pin_memory=device.type == "cuda")
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
    return {"features": features if features is not None else torch.empty(0, 0),
            "ids": np.array([r.pid for r in records]), "cams": np.array([r.cam for r in records]),
            "modalities": np.array([r.modality for r in records]), "paths": [r.path for r in records]}


def evaluate_model(model, split, transform, cfg: dict, *, device, final: bool, autocast=contextlib.nullcontext):
    """{"protocol": ..., "results": {name: summary}, "score": mAP used to pick the best checkpoint}."""
    e = cfg["eval"]
    kw = dict(device=device, batch_size=e["batch_size"], workers=cfg["train"]["workers"], autocast=autocast)
    query = extract_features(model, split.query, transform, **kw)
    gallery = extract_features(model, split.gallery, transform, **kw)
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
    return {"protocol": protocol, "results": results, "score": score}


def format_results(evaluation: dict) -> str:
    return "\n".join(format_table(name, summary) for name, summary in evaluation["results"].items())
