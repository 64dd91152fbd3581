"""SYSU-MM01 and RegDB evaluation protocols (PROTOCOLS.md) over extracted features.

SYSU-MM01: queries are all infrared images of the test identities; each of 10 trials draws a gallery
of ``shots`` (1 or 10) images per test identity and visible camera (all-search: cameras 1, 2, 4, 5;
indoor-search: 1, 2), from exp/rand_perm_cam.mat when given (official; sysu_galleries finds it), else from a seeded draw
(numpy default_rng([trial, pid, cam]) permutation of that identity's images in that camera, in path
order). Metrics use sysu_rules (cam-3 queries ignore cam-2 images; CMC counts identities once).
RegDB: one trial's test lists, query and gallery in either direction, plain ranking.
Results: per trial, and mean and standard deviation over trials.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from .metrics import rank_metrics

MODES = {"all": (1, 2, 4, 5), "indoor": (1, 2)}
REPORTED = ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP")


def load_rand_perm(path: str | Path):
    """exp/rand_perm_cam.mat (SYSU-MM01's evaluation/data_split/rand_perm_cam.mat): a 6 x 1 cell, per
    camera a cell over identity numbers 1..533, each a [trials, images] array whose row t is trial t's
    permutation of that identity's images in that camera, as 1-based image numbers (0001.jpg is 1).

    That layout is how the official MATLAB evaluation indexes it (get_testing_set.m:
    ``rand_perm_cam{cam}{id}(trial, 1:shots)``) and how the Python port most VI-ReID code uses reads it
    (``perm[cam - 1][0].squeeze()[id - 1][trial][:shots]`` -> ``cam{c}/{id:04d}/{n:04d}``); this reader
    was checked against both, not against the file itself. Returns {camera: [per identity array]}.
    """
    try:
        from scipy.io import loadmat
    except ImportError as exc:
        raise RuntimeError(f"reading {path} needs scipy (pip install scipy); without the file, the documented "
                           f"seeded gallery draw is used") from exc
    try:
        mat = loadmat(str(path))
    except Exception as exc:  # scipy's MatReadError is no ValueError; its messages do not name the file
        raise ValueError(f"{path}: cannot be read as rand_perm_cam.mat ({type(exc).__name__}: {exc})") from exc
    if "rand_perm_cam" not in mat:
        raise ValueError(f"{path}: no variable 'rand_perm_cam'")
    cams = np.ravel(mat["rand_perm_cam"])
    try:
        return {cam: [np.atleast_2d(np.asarray(p)) for p in np.ravel(cams[cam - 1])] for cam in range(1, 7)}
    except (IndexError, TypeError) as exc:
        raise ValueError(f"{path}: unexpected rand_perm_cam layout ({exc})") from exc


GALLERY_SOURCES = ("auto", "official", "seeded")


class Galleries(NamedTuple):
    """Where each SYSU trial's gallery comes from: ``rand_perm`` (load_rand_perm's) for the official
    permutations, None for the seeded draw; ``source`` "official" or "seeded" names it in the results."""
    rand_perm: dict | None
    source: str


def sysu_setting(dataset: str, mode: str, shots: int, source: str) -> str:
    """A SYSU setting's name in tables and results files, the same from the trainer and from evaluate
    (evaluate --combine pools runs by it): dataset "sysu" or "synthetic"."""
    name = "SYSU-MM01" if dataset == "sysu" else "synthetic (SYSU)"
    return f"{name} {mode} {'single' if shots == 1 else 'multi'}-shot, {source} galleries"


def sysu_galleries(choice: str, path: str | Path | None) -> Galleries:
    """The galleries ``choice`` asks for, with ``path`` the dataset's exp/rand_perm_cam.mat (None: none).

    "auto" (PROTOCOLS.md): the official permutations when the file exists, else the seeded draw; a file
    that is present but cannot be read without scipy warns and falls back to the seeded draw, a damaged
    one is an error. "official": the file is required. "seeded": the draw, whatever is there.
    """
    if choice not in GALLERY_SOURCES:
        raise ValueError(f"galleries must be one of {GALLERY_SOURCES}, got {choice!r}")
    present = path is not None and Path(path).is_file()
    if choice == "seeded" or (choice == "auto" and not present):
        return Galleries(None, "seeded")
    if not present:
        raise ValueError(f"official SYSU-MM01 galleries need exp/rand_perm_cam.mat, not found"
                         f"{f' at {path}' if path is not None else ''}")
    try:
        return Galleries(load_rand_perm(path), "official")
    except RuntimeError as exc:   # scipy missing
        if choice == "official":
            raise ValueError(str(exc)) from None
        warnings.warn(f"{exc}; the results say 'seeded galleries' (pip install scipy for the official ones)",
                      RuntimeWarning, stacklevel=2)
        return Galleries(None, "seeded")


def _official_choice(rand_perm, pid: int, cam: int, trial: int, shots: int, candidates, paths) -> np.ndarray:
    """The first ``shots`` images of rand_perm_cam's trial permutation, matched by image number (the file
    stem, 0001.jpg = 1, as the official naming has it; the position in path order when stems are not
    numbers)."""
    if pid < 1:   # a Python index would wrap to the last identity
        raise ValueError(f"rand_perm_cam indexes SYSU-MM01 identity numbers from 1; the gallery has identity {pid}")
    try:
        numbers = rand_perm[cam][pid - 1][trial - 1][:shots].astype(np.int64)
    except IndexError:
        raise ValueError(f"rand_perm_cam has no trial {trial} permutation for identity {pid} in camera {cam}; "
                         f"is it the file of this dataset?") from None
    stems = [Path(p).stem for p in paths[candidates]]
    by_number = ({int(s): i for s, i in zip(stems, candidates)} if all(s.isdigit() for s in stems)
                 else {k + 1: i for k, i in enumerate(candidates)})
    missing = [int(n) for n in numbers if int(n) not in by_number]
    if missing:
        raise ValueError(f"rand_perm_cam picks image(s) {missing} of identity {pid} in camera {cam}, which the "
                         f"gallery lacks ({len(candidates)} images); is it the file of this dataset?")
    return np.asarray([by_number[int(n)] for n in numbers], dtype=np.int64)


def sysu_gallery(gallery_ids, gallery_cams, gallery_paths, *, mode: str = "all", shots: int = 1, trial: int = 1,
                 rand_perm=None) -> np.ndarray:
    """Indices into the gallery candidates of one trial's gallery."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {tuple(MODES)}, got {mode!r}")
    if shots not in (1, 10):
        raise ValueError(f"shots must be 1 (single-shot) or 10 (multi-shot), got {shots}")
    ids, cams = np.asarray(gallery_ids), np.asarray(gallery_cams)
    paths = np.asarray([str(p) for p in gallery_paths])
    chosen = []
    for pid in np.unique(ids):
        for cam in MODES[mode]:
            candidates = np.where((ids == pid) & (cams == cam))[0]
            if not len(candidates):
                continue
            candidates = candidates[np.argsort(paths[candidates], kind="stable")]
            if rand_perm is not None:
                chosen.extend(_official_choice(rand_perm, int(pid), cam, trial, shots, candidates, paths))
            else:
                perm = np.random.default_rng([trial, int(pid), cam]).permutation(len(candidates))
                chosen.extend(candidates[perm[:shots]])
    return np.sort(np.asarray(chosen, dtype=np.int64))


def _summary(per_trial: list[dict]) -> dict:
    out = {"trials": per_trial}
    for key in REPORTED:
        values = np.array([t[key] for t in per_trial])
        out[key] = {"mean": float(values.mean()), "std": float(values.std())}
    return out


def combine_summaries(summaries: list[dict]) -> dict:
    """One summary over several runs' trials pooled (RegDB: one model per trial, the ten reported as mean
    and std; or several seeds of one setting). Each summary is ``_summary``'s, with its per-trial list."""
    pooled = [trial for summary in summaries for trial in summary["trials"]]
    if not pooled:
        raise ValueError("no trials to combine")
    return _summary(pooled)


def _scalars(result: dict) -> dict:
    return {k: float(result[k]) for k in REPORTED}


def _require_rows(query: dict, gallery: dict, query_name: str, gallery_name: str) -> None:
    for part, name in ((query, query_name), (gallery, gallery_name)):
        if len(part["ids"]) == 0:
            raise ValueError(f"no {name}: the protocol needs at least one")


def _require_matches(result: dict, what: str) -> None:
    """A table of zeros from queries none of which has its identity in the gallery is an error."""
    if not bool(result["valid"].any()):
        raise ValueError(f"none of the {len(result['valid'])} queries has its identity among the {what}; do the "
                         f"two modalities use the same identity numbers?")


def evaluate_sysu(query: dict, gallery: dict, *, mode: str = "all", shots: int = 1, trials: int = 10,
                  rand_perm=None, metric: str = "euclidean") -> dict:
    """query / gallery: dicts of features [N, D], ids [N], cams [N] (and gallery paths [N]); the gallery
    holds every visible image of the test identities, from which each trial draws its gallery.
    Query cameras must be infrared (3, 6) and gallery cameras visible (1, 2, 4, 5)."""
    if isinstance(trials, bool) or not isinstance(trials, (int, np.integer)) or trials < 1:
        raise ValueError(f"trials must be a whole number of at least 1, got {trials!r}")
    _require_rows(query, gallery, "infrared queries", "visible gallery candidates")
    for part, name, allowed in ((query, "query (infrared)", (3, 6)), (gallery, "gallery (visible)", (1, 2, 4, 5))):
        wrong = sorted(set(np.unique(np.asarray(part["cams"])).tolist()) - set(allowed))
        if wrong:
            raise ValueError(f"{name} cameras must be in {allowed}, found {wrong}: in SYSU-MM01 visible cameras are "
                             f"1, 2, 4, 5 and infrared cameras 3, 6")
    per_trial = []
    for trial in range(1, trials + 1):
        idx = torch.as_tensor(sysu_gallery(gallery["ids"], gallery["cams"], gallery["paths"], mode=mode, shots=shots,
                                           trial=trial, rand_perm=rand_perm))
        if not len(idx):
            raise ValueError(f"the {mode}-search gallery is empty: no visible image from cameras {MODES[mode]}")
        result = rank_metrics(query["features"], gallery["features"][idx], torch.as_tensor(query["ids"]),
                              torch.as_tensor(gallery["ids"])[idx], torch.as_tensor(query["cams"]),
                              torch.as_tensor(gallery["cams"])[idx], metric=metric, sysu_rules=True)
        _require_matches(result, f"trial {trial}'s {mode}-search gallery")
        per_trial.append({**_scalars(result), "gallery_size": len(idx)})
    return _summary(per_trial)


def evaluate_regdb(query: dict, gallery: dict, *, metric: str = "euclidean") -> dict:
    _require_rows(query, gallery, "queries", "gallery images")
    result = rank_metrics(query["features"], gallery["features"], torch.as_tensor(query["ids"]),
                          torch.as_tensor(gallery["ids"]), metric=metric)
    _require_matches(result, "gallery images")
    return _summary([{**_scalars(result), "gallery_size": len(gallery["ids"])}])


def format_table(name: str, summary: dict) -> str:
    width = max(28, len(name) + 1)  # the columns line up under a long setting name too
    head = f"{name:<{width}}" + "".join(f"{k:>17}" for k in REPORTED)
    row = f"{'mean +- std (%)':<{width}}" + "".join(
        f"{100 * summary[k]['mean']:>9.2f} +-{100 * summary[k]['std']:>5.2f}" for k in REPORTED)
    return head + "\n" + row
