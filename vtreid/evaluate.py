"""python -m vtreid.evaluate: evaluate features saved to disk under the SYSU-MM01 or RegDB protocol.

The features file is a dict saved with torch.save (.pt) or numpy.savez (.npz) holding, one row per
test image:
  features    [N, D] float, finite
  ids         [N] int, the dataset's identity numbers
  cams        [N] int, camera numbers (SYSU-MM01: visible 1, 2, 4, 5; infrared 3, 6)
  modalities  [N] int, 0 visible, 1 infrared (thermal)
  paths       [N] str, optional (SYSU's seeded gallery draw orders an identity's images by path;
              without paths, by row)
SYSU: the infrared rows are the queries and the visible rows the gallery candidates; each trial's gallery
is the official one of exp/rand_perm_cam.mat given with --rand-perm (--checkpoint: the dataset's own file
when it has one), else the seeded draw, and the results name which (--galleries). RegDB: --direction
picks which modality queries. Both need rows of both modalities.
Prints a table (mean +- std over trials) and writes the JSON of every trial with --out.

--checkpoint CKPT evaluates a training checkpoint directly: it rebuilds the network, extracts the
checkpoint's test sets (or --dataset / --data-root / --trial's) as ``python -m vtreid.extract`` does and
evaluates them here. Settings not given come from the checkpoint (protocol from its dataset; SYSU mode,
shots, metric and eval.trials_final; RegDB: both directions, as the trainer reports them).

--combine RESULTS... pools the trials of several runs' results JSON files (the trainer's results.json or
this command's --out) into one mean +- std per setting: RegDB is reported over ten models, one per trial
list (dataset.trial=1..10), and seeds of one setting combine the same way. The files must hold the same
settings, method and dataset; two RegDB files of one trial are an error.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from vtreid import _cli as cli
from vtreid.eval import (GALLERY_SOURCES, combine_summaries, evaluate_regdb, evaluate_sysu, format_table,
                         sysu_galleries, sysu_setting)

KEYS = ("features", "ids", "cams", "modalities")
FORMAT = ("a dict saved with torch.save (.pt) or numpy.savez (.npz) holding features [N, D], ids [N], cams [N] "
          "and modalities [N] (0 visible, 1 infrared), optionally paths [N]")
MODALITY_NAMES = {0: "visible", 1: "infrared"}


def _is_training_checkpoint(path: Path) -> bool:
    """Whether a torch.save archive holds vtreid.train's checkpoint keys (read without unpickling it)."""
    try:
        with zipfile.ZipFile(path) as archive:
            pickled = b"".join(archive.read(n) for n in archive.namelist() if n.endswith("data.pkl"))
    except (OSError, zipfile.BadZipFile):
        return False
    return all(key in pickled for key in (b"optimizers", b"schedulers", b"config"))


def _read(path: Path):
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            raise ValueError(f"{path}: cannot read it as an .npz ({exc}); expected {FORMAT}") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load raises many types for a foreign file
        text = str(exc)
        unsupported = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if _is_training_checkpoint(path):
            raise ValueError(f"{path} is a training checkpoint, not a features file: evaluate it with --checkpoint "
                             f"{path}, or write its features with python -m vtreid.extract") from None
        if "numpy" in text:
            reason = ("it holds numpy arrays, which torch.load(weights_only=True) refuses; save torch tensors "
                      "(torch.from_numpy) or write an .npz with numpy.savez")
        elif unsupported:
            reason = f"it holds {unsupported.group(1)} objects, which torch.load(weights_only=True) refuses"
        else:
            reason = "it is not a file written by torch.save"
        raise ValueError(f"{path}: cannot load it: {reason}; expected {FORMAT}") from None


def _column(path: Path, data, key: str) -> torch.Tensor:
    try:
        value = data[key]
        return value.detach().cpu() if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{path}: {key} is not an array of numbers ({exc}); expected {FORMAT}") from None


def load_features(path: str | Path) -> dict:
    """Read and check a features file; every problem is a ValueError (FileNotFoundError when absent)
    naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"features file not found: {path}")
    data = _read(path)
    if not isinstance(data, Mapping):
        raise ValueError(f"{path} holds a {type(data).__name__}, not a dict; expected {FORMAT}")
    missing = [k for k in KEYS if k not in data]
    if missing:
        raise ValueError(f"{path} lacks {missing}; expected {FORMAT}")
    out = {k: _column(path, data, k) for k in KEYS}
    feats = out["features"]
    if feats.dim() != 2:
        raise ValueError(f"{path}: features must be a 2-D array [N, D], got shape {tuple(feats.shape)}")
    n = len(feats)
    for k in KEYS[1:]:
        if out[k].dim() != 1 or len(out[k]) != n:
            raise ValueError(f"{path}: {k} must be 1-D with one entry per feature row ({n}), got shape "
                             f"{tuple(out[k].shape)}")
        if out[k].is_floating_point() or out[k].dtype == torch.bool:
            if out[k].dtype == torch.bool or not torch.equal(out[k], out[k].round()):
                raise ValueError(f"{path}: {k} must hold integers, got {out[k].dtype}")
        out[k] = out[k].long()
    if n == 0:
        raise ValueError(f"{path} holds no rows")
    bad = sorted(set(out["modalities"].unique().tolist()) - {0, 1})
    if bad:
        raise ValueError(f"{path}: modalities must be 0 (visible) or 1 (infrared), found {bad}")
    out["features"] = feats.float()
    finite = torch.isfinite(out["features"]).all(1)
    if not finite.all():
        rows = (~finite).nonzero().flatten()
        raise ValueError(f"{path}: {len(rows)} of {n} feature rows hold NaN or inf (first: row {int(rows[0])}); "
                         f"was the model diverged or the extraction broken?")
    # without paths an identity's images are in row order; the names are not numbers, so that an official
    # rand_perm_cam.mat picks by position in that order, not by a row number read as an image number
    out["paths_given"] = "paths" in data
    out["paths"] = [str(p) for p in data["paths"]] if "paths" in data else [f"row{i:09d}" for i in range(n)]
    if len(out["paths"]) != n:
        raise ValueError(f"{path}: paths has {len(out['paths'])} entries for {n} feature rows")
    return out


def check_protocol(data: dict, protocol: str) -> None:
    """Both modalities present (the protocols check the rest, SYSU-MM01's cameras included)."""
    for modality, name in MODALITY_NAMES.items():
        if not (data["modalities"] == modality).any():
            role = ("queries" if modality == 1 else "gallery") if protocol == "sysu" else "queries or gallery"
            raise ValueError(f"the features file has no {name} rows (modality {modality}); the {protocol} protocol "
                             f"needs them as {role}")


def _part(data: dict, modality: int) -> dict:
    rows = (data["modalities"] == modality).nonzero().flatten()
    return {"features": data["features"][rows], "ids": data["ids"][rows].numpy(), "cams": data["cams"][rows].numpy(),
            "paths": [data["paths"][i] for i in rows.tolist()]}


DIRECTIONS = ("visible_to_thermal", "thermal_to_visible")


def evaluate_features(data: dict, args) -> dict:
    """{name: summary} of the protocol ``args`` asks for (RegDB direction "both": two entries)."""
    if args.protocol == "sysu":
        # a file named on the command line is wanted: official (scipy missing is then an error, not a fallback)
        galleries = sysu_galleries(args.galleries or ("official" if args.rand_perm else "auto"),
                                   args.rand_perm or args.dataset_rand_perm)
        summary = evaluate_sysu(_part(data, 1), _part(data, 0), mode=args.mode, shots=args.shots, trials=args.trials,
                                rand_perm=galleries.rand_perm, metric=args.metric)
        return {sysu_setting(args.dataset_name, args.mode, args.shots, galleries.source): summary}
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
    # a --rand-perm FILE is wanted (official); else the checkpoint's choice
    args.galleries = args.galleries or ("official" if args.rand_perm else e["galleries"])
    args.dataset_name = cfg["dataset"]["name"]
    if args.protocol == "sysu":
        from vtreid.data import sysu
        from vtreid.training.data import dataset_root
        args.dataset_rand_perm = sysu.rand_perm_path(dataset_root(cfg))
    data = extract_split(loaded, args.dataset, args.data_root, args.trial)
    from vtreid.training.config import run_identity
    return data, {**run_identity(cfg), "checkpoint": str(args.checkpoint), "step": loaded.step}


def _setting(name: str) -> str:
    """A setting's name without its trial count (the trainer writes "..., 10 trial(s)"): runs evaluated
    with other counts pool their trials alike."""
    return re.sub(r", \d+ trial\(s\)$", "", name)


def _regdb_trial(data: dict) -> int | None:
    """The RegDB trial list a results file was evaluated on: evaluate --checkpoint's "trial", the
    trainer's protocol "regdb trial N, ..."."""
    if "trial" in data:
        return data["trial"]
    found = re.match(r"regdb trial (\d+)", str(data.get("protocol", "")))
    return int(found.group(1)) if found else None


def combine_files(paths: list[str]) -> dict:
    """The trainer's results.json shape over several runs' files: every setting's trials pooled, each
    trial tagged with its file ("run")."""
    from vtreid.plots import read_results_file   # reads every results format (plots import matplotlib lazily)

    about, settings, per_setting, trials_seen = {}, None, {}, {}
    seen = {}
    for path in paths:
        if Path(path).resolve() in seen:
            raise ValueError(f"{path} is given twice (as {seen[Path(path).resolve()]}): each run counts once")
        seen[Path(path).resolve()] = path
        data, entries = read_results_file(path)
        results = {_setting(name): summary for name, summary in entries.items()}
        for key in ("method", "dataset"):
            if key in data:
                if about.setdefault(key, data[key]) != data[key]:
                    raise ValueError(f"{path}: {key} {data[key]!r}, but {paths[0]} is {about[key]!r}; combine the "
                                     f"runs of one setting")
        if settings is None:
            settings = list(results)
        elif set(results) != set(settings):
            raise ValueError(f"{path} holds {sorted(results)}, but {paths[0]} holds {sorted(settings)}")
        trial = _regdb_trial(data) if data.get("dataset") == "regdb" else None
        if trial is not None and trial in trials_seen:
            raise ValueError(f"{path} and {trials_seen[trial]} are both RegDB trial {trial}: RegDB's runs combine one "
                             f"per trial list")
        trials_seen.setdefault(trial, path)
        for name, summary in results.items():
            trials = summary.get("trials")
            if not isinstance(trials, list) or not trials:
                raise ValueError(f"{path}: {name!r} has no per-trial results to combine")
            per_setting.setdefault(name, []).append({"trials": [{**t, "run": str(path)} for t in trials]})
    results = {name: combine_summaries(summaries) for name, summaries in per_setting.items()}
    protocol = "; ".join(sorted(results)) + (f" (RegDB trials {sorted(t for t in trials_seen if t is not None)})"
                                             if about.get("dataset") == "regdb" else "")
    return {**about, "combined": [str(p) for p in paths], "protocol": protocol, "results": results}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vtreid.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--features", help="a features file (.pt / .npz) described above, e.g. from "
                        "python -m vtreid.extract")
    source.add_argument("--checkpoint", help="a training checkpoint: extract its test sets, then evaluate")
    source.add_argument("--combine", nargs="+", metavar="RESULTS", help="results JSON files of several runs: their "
                        "trials pooled (RegDB's ten trials, or seeds)")
    parser.add_argument("--dataset", choices=("synthetic", "sysu", "regdb"), help="--checkpoint: another dataset")
    parser.add_argument("--data-root", help="--checkpoint: the dataset folder (default: the checkpoint's)")
    parser.add_argument("--trial", type=int, help="--checkpoint: RegDB trial (default: the checkpoint's)")
    parser.add_argument("--protocol", choices=("sysu", "regdb"), help="required with --features")
    parser.add_argument("--mode", choices=("all", "indoor"), help="SYSU search mode (default all)")
    parser.add_argument("--shots", type=int, choices=(1, 10), help="SYSU single- or multi-shot (default 1)")
    parser.add_argument("--trials", type=cli.positive_int, help="SYSU gallery draws (default 10)")
    parser.add_argument("--rand-perm", default=None, help="SYSU exp/rand_perm_cam.mat (official galleries; "
                        "--checkpoint: the dataset's own when it has one)")
    parser.add_argument("--galleries", choices=GALLERY_SOURCES, help="SYSU galleries: auto (official with a "
                        "rand_perm_cam.mat, else seeded), official or seeded; default auto (--checkpoint: its "
                        "eval.galleries), official with --rand-perm")
    parser.add_argument("--direction", choices=DIRECTIONS + ("both",),
                        help="RegDB query modality (default visible_to_thermal; --checkpoint: both)")
    parser.add_argument("--metric", choices=("euclidean", "cosine"), help="default euclidean")
    parser.add_argument("--device", type=cli.device, default="cuda" if torch.cuda.is_available() else "cpu",
                        help="default: cuda when a GPU is present, else cpu")
    parser.add_argument("--out", type=cli.output_file, default=None, help="write the results as JSON here")
    # --checkpoint sets them: the dataset's exp/rand_perm_cam.mat, and its name in the results
    parser.set_defaults(dataset_rand_perm=None, dataset_name="sysu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)

    if args.combine:
        try:
            combined = combine_files(args.combine)
        except (OSError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        report({f"{name}, {len(args.combine)} runs": summary for name, summary in combined["results"].items()},
               args.out, combined)
        return 0
    try:
        if args.checkpoint:
            data, about = checkpoint_features(args)
        else:
            if not args.protocol:
                parser.error("--features needs --protocol sysu or --protocol regdb")
            data, about = load_features(args.features), {}
        check_protocol(data, args.protocol)
        args.mode, args.shots = args.mode or "all", args.shots or 1
        args.trials, args.metric = args.trials or 10, args.metric or "euclidean"
        args.direction = args.direction or "visible_to_thermal"
        data["features"] = data["features"].to(device)
        results = evaluate_features(data, args)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if len(results) == 1 and not about:   # the --features file's JSON, as before
        name, summary = next(iter(results.items()))
        payload = {"protocol": name, **summary}
    else:                                 # the trainer's results.json shape
        payload = {**about, "protocol": ", ".join(results), "results": results}
    report(results, args.out, payload)
    return 0


def report(tables: dict, out: str | None, payload: dict) -> None:
    """Prints one table per setting and, with --out, writes ``payload`` as JSON (atomically: a results
    file is never half written)."""
    from vtreid.training.checkpoint import write_text_atomic
    for name, summary in tables.items():
        print(format_table(name, summary))
    if out:
        write_text_atomic(out, json.dumps(payload, indent=2))
        print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
