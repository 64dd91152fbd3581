"""python -m vtreid.evaluate: evaluate features saved to disk under the SYSU-MM01 or RegDB protocol.

The file (.pt via torch.save, or .npz) holds ``features`` [N, D], ``ids`` [N], ``cams`` [N] and
``modalities`` [N] (0 visible, 1 infrared), optionally ``paths`` [N] (SYSU's seeded gallery draw orders
an identity's images by path; without paths, by row). SYSU: the infrared rows are the queries and
the visible rows the gallery candidates. RegDB: --direction picks which modality queries.
Prints a table (mean +- std over trials) and writes the JSON of every trial with --out.

--checkpoint CKPT evaluates a training checkpoint directly: it rebuilds the network, extracts the
checkpoint's test sets (or --dataset / --data-root / --trial's) as ``python -m vtreid.extract`` does and
evaluates them here. Settings not given come from the checkpoint (protocol from its dataset; SYSU mode,
shots, metric and eval.trials_final; RegDB: both directions, as the trainer reports them).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from vtreid.eval import evaluate_regdb, evaluate_sysu, format_table, load_rand_perm

KEYS = ("features", "ids", "cams", "modalities")


def load_features(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"features file not found: {path}")
    if path.suffix == ".npz":
        data = dict(np.load(path, allow_pickle=False))
    else:
        data = torch.load(path, map_location="cpu", weights_only=True)
    missing = [k for k in KEYS if k not in data]
    if missing:
        raise ValueError(f"{path} lacks {missing}; it needs {KEYS} (and optionally paths)")
    out = {k: torch.as_tensor(np.asarray(data[k])) for k in KEYS}
    n = len(out["features"])
    if any(len(out[k]) != n for k in KEYS):
        raise ValueError(f"{path}: features, ids, cams and modalities must have the same length")
    out["features"] = out["features"].float()
    out["paths"] = [str(p) for p in data["paths"]] if "paths" in data else [f"{i:09d}" for i in range(n)]
    return out


def _part(data: dict, modality: int) -> dict:
    rows = (data["modalities"] == modality).nonzero().flatten()
    return {"features": data["features"][rows], "ids": data["ids"][rows].numpy(), "cams": data["cams"][rows].numpy(),
            "paths": [data["paths"][i] for i in rows.tolist()]}


DIRECTIONS = ("visible_to_thermal", "thermal_to_visible")


def evaluate_features(data: dict, args) -> dict:
    """{name: summary} of the protocol ``args`` asks for (RegDB direction "both": two entries)."""
    if args.protocol == "sysu":
        rand_perm = load_rand_perm(args.rand_perm) if args.rand_perm else None
        summary = evaluate_sysu(_part(data, 1), _part(data, 0), mode=args.mode, shots=args.shots, trials=args.trials,
                                rand_perm=rand_perm, metric=args.metric)
        return {f"SYSU-MM01 {args.mode} {'single' if args.shots == 1 else 'multi'}-shot": summary}
    results = {}
    for direction in (DIRECTIONS if args.direction == "both" else (args.direction,)):
        query, gallery = (0, 1) if direction == "visible_to_thermal" else (1, 0)
        results[f"RegDB {direction}"] = evaluate_regdb(_part(data, query), _part(data, gallery), metric=args.metric)
    return results


def checkpoint_features(args) -> tuple[dict, dict]:
    """(features of the checkpoint's test sets, what the JSON names), filling the unset options from
    the checkpoint's configuration."""
    from vtreid.extract import dataset_config, extract_split, load_checkpoint   # extract sits beside this file

    loaded = load_checkpoint(args.checkpoint, args.device)
    cfg = dataset_config(loaded.cfg, args.dataset, args.data_root, args.trial)
    e = cfg["eval"]
    args.protocol = args.protocol or ("regdb" if cfg["dataset"]["name"] == "regdb" else "sysu")
    args.mode = args.mode or e["mode"]
    args.shots = args.shots or e["shots"]
    args.trials = args.trials or e["trials_final"]
    args.metric = args.metric or e["metric"]
    args.direction = args.direction or "both"
    data = extract_split(loaded, args.dataset, args.data_root, args.trial)
    return data, {"method": cfg["method"], "dataset": cfg["dataset"]["name"], "checkpoint": str(args.checkpoint),
                  "step": loaded.step}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vtreid.evaluate", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--features", help="a features file (.pt / .npz), e.g. from python -m vtreid.extract")
    source.add_argument("--checkpoint", help="a training checkpoint: extract its test sets, then evaluate")
    parser.add_argument("--dataset", choices=("synthetic", "sysu", "regdb"), help="--checkpoint: another dataset")
    parser.add_argument("--data-root", help="--checkpoint: the dataset folder (default: the checkpoint's)")
    parser.add_argument("--trial", type=int, help="--checkpoint: RegDB trial (default: the checkpoint's)")
    parser.add_argument("--protocol", choices=("sysu", "regdb"), help="required with --features")
    parser.add_argument("--mode", choices=("all", "indoor"), help="SYSU search mode (default all)")
    parser.add_argument("--shots", type=int, choices=(1, 10), help="SYSU single- or multi-shot (default 1)")
    parser.add_argument("--trials", type=int, help="SYSU gallery draws (default 10)")
    parser.add_argument("--rand-perm", default=None, help="SYSU exp/rand_perm_cam.mat (official galleries)")
    parser.add_argument("--direction", choices=DIRECTIONS + ("both",),
                        help="RegDB query modality (default visible_to_thermal; --checkpoint: both)")
    parser.add_argument("--metric", choices=("euclidean", "cosine"), help="default euclidean")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)

    try:
        if args.checkpoint:
            data, about = checkpoint_features(args)
        else:
            if not args.protocol:
                parser.error("--features needs --protocol sysu or --protocol regdb")
            data, about = load_features(args.features), {}
        args.mode, args.shots = args.mode or "all", args.shots or 1
        args.trials, args.metric = args.trials or 10, args.metric or "euclidean"
        args.direction = args.direction or "visible_to_thermal"
        data["features"] = data["features"].to(args.device)
        results = evaluate_features(data, args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, summary in results.items():
        print(format_table(name, summary))
    if args.out:
        if len(results) == 1 and not about:   # the --features file's JSON, as before
            name, summary = next(iter(results.items()))
            text = {"protocol": name, **summary}
        else:                                 # the trainer's results.json shape
            text = {**about, "protocol": ", ".join(results), "results": results}
        Path(args.out).write_text(json.dumps(text, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
