"""python -m vtreid.evaluate: evaluate features saved to disk under the SYSU-MM01 or RegDB protocol.

The file (.pt via torch.save, or .npz) holds ``features`` [N, D], ``ids`` [N], ``cams`` [N] and
``modalities`` [N] (0 visible, 1 infrared), optionally ``paths`` [N] (SYSU's seeded gallery draw orders
an identity's images by path; without paths, by row). SYSU: the infrared rows are the queries and
the visible rows the gallery candidates. RegDB: --direction picks which modality queries.
Prints a table (mean +- std over trials) and writes the JSON of every trial with --out.
(Evaluating a training checkpoint directly comes with the trainer.)
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vtreid.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--features", required=True)
    parser.add_argument("--protocol", choices=("sysu", "regdb"), required=True)
    parser.add_argument("--mode", choices=("all", "indoor"), default="all", help="SYSU search mode")
    parser.add_argument("--shots", type=int, choices=(1, 10), default=1, help="SYSU single- or multi-shot")
    parser.add_argument("--trials", type=int, default=10, help="SYSU gallery draws")
    parser.add_argument("--rand-perm", default=None, help="SYSU exp/rand_perm_cam.mat (official galleries)")
    parser.add_argument("--direction", choices=("visible_to_thermal", "thermal_to_visible"),
                        default="visible_to_thermal", help="RegDB query modality")
    parser.add_argument("--metric", choices=("euclidean", "cosine"), default="euclidean")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)

    data = load_features(args.features)
    data["features"] = data["features"].to(args.device)
    if args.protocol == "sysu":
        rand_perm = load_rand_perm(args.rand_perm) if args.rand_perm else None
        summary = evaluate_sysu(_part(data, 1), _part(data, 0), mode=args.mode, shots=args.shots, trials=args.trials,
                                rand_perm=rand_perm, metric=args.metric)
        name = f"SYSU-MM01 {args.mode} {'single' if args.shots == 1 else 'multi'}-shot"
    else:
        query, gallery = (0, 1) if args.direction == "visible_to_thermal" else (1, 0)
        summary = evaluate_regdb(_part(data, query), _part(data, gallery), metric=args.metric)
        name = f"RegDB {args.direction}"
    print(format_table(name, summary))
    if args.out:
        Path(args.out).write_text(json.dumps({"protocol": name, **summary}, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
