"""Image checks shared by the dataset checks (python -m vtreid.data check): every image must decode.

Decoding runs in a thread pool (Pillow releases the GIL while it decodes), reporting progress through
a callback, so SYSU-MM01's ~45k images take seconds to a minute, not a quarter of an hour.

A listing that decoded without a problem leaves a stamp in the cache ($VTREID_CACHE, else
~/.cache/vtreid, under verified/) named by a hash of every image's absolute path, size and modification
time. A training start (``reuse_verified``) skips decoding a listing with a stamp: before, every start,
and every rank of a torchrun job, decoded all of SYSU-MM01 again. An added, removed, rewritten or
touched image changes the hash, so that listing is decoded again; ``python -m vtreid.data check``
always decodes.

Under torchrun the ranks share the decoding (``WorkShare``): rank r decodes every world-th image from
the r-th and the ranks gather what they found, so a first start costs one decode of the dataset in all,
not one per rank at once. They decode, or skip, together: one rank without the stamp (another node's
cache) makes all decode.
"""
from __future__ import annotations

import hashlib
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, NamedTuple

from PIL import Image

Progress = Callable[[int, int], None]  # (images done, images in all)


class WorkShare(NamedTuple):
    """This process's part of a decoding split across ranks: rank ``rank`` of ``world`` decodes every
    world-th image from its own index; ``all_gather(obj)`` returns every rank's obj in rank order (a
    collective: every rank calls it, as vtreid.training.distributed.gather_objects)."""
    rank: int
    world: int
    all_gather: Callable[[object], list]


class PrintedProgress:
    """A Progress that prints 'decoding images: done/total' to stderr at most every ``interval`` seconds,
    and at the end."""

    def __init__(self, stream=None, interval: float = 2.0):
        self.stream, self.interval, self.last, self.start = stream or sys.stderr, interval, None, time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or self.last is None or now - self.last >= self.interval:
            self.last = now
            print(f"decoding images: {done}/{total} ({100 * done // max(total, 1)}%, {now - self.start:.0f}s)",
                  file=self.stream, flush=True)


def cache_dir() -> Path:
    """vtreid's cache: $VTREID_CACHE, else ~/.cache/vtreid (synthetic data, verified-listing stamps)."""
    return Path(os.environ.get("VTREID_CACHE") or Path.home() / ".cache" / "vtreid")


def listing_stamp(paths: list[str | Path]) -> Path | None:
    """The stamp file of this listing (module docstring), or None when an image cannot be stat'ed."""
    digest = hashlib.sha256()
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            return None
        digest.update(f"{os.path.abspath(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return cache_dir() / "verified" / f"{len(paths)}-{digest.hexdigest()[:32]}"


def _write_stamp(stamp: Path) -> None:
    """An empty file (its name is its content, so no write can be half done). Best effort, a cache: an
    unwritable cache costs the next start a decode, nothing else."""
    try:
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.touch()
    except OSError:
        pass


def decode_problem(path: str | Path) -> str | None:
    """None when ``path`` decodes completely as an image, else one line saying what is wrong."""
    try:
        if os.path.getsize(path) == 0:
            return f"empty image file (0 bytes): {path}"
        with Image.open(path) as img:
            img.load()
    except FileNotFoundError:
        return f"missing image file: {path}"
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for a bad file
        return f"image does not decode: {path} ({type(exc).__name__}: {exc})"
    return None


def decode_problems(paths: Iterable[str | Path], *, workers: int | None = None,
                    progress: Progress | None = None, every: int = 500, reuse_verified: bool = False,
                    share: WorkShare | None = None) -> list[str]:
    """One line per image of ``paths`` that does not decode, in the order of ``paths``.
    ``progress(done, total)`` is called every ``every`` images and once at the end (with ``share``: this
    rank's images). No problem: the listing's stamp is written; ``reuse_verified``: a listing with a stamp
    is not decoded; ``share``: this rank's part of a decoding split across ranks (module doc)."""
    paths = list(paths)
    stamp = listing_stamp(paths)
    skip = reuse_verified and stamp is not None and stamp.is_file()
    if share is not None:
        skip = all(share.all_gather(skip))
    if skip:
        return []
    mine = range(len(paths)) if share is None else range(share.rank, len(paths), share.world)
    total = len(mine)
    workers = workers or min(16, 2 * (os.cpu_count() or 1))
    found = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for done, (index, problem) in enumerate(zip(mine, pool.map(decode_problem, (paths[i] for i in mine))),
                                                start=1):
            if problem:
                found.append((index, problem))
            if progress is not None and (done % every == 0 or done == total):
                progress(done, total)
    if share is not None:
        found = sorted(pair for part in share.all_gather(found) for pair in part)
    problems = [problem for _, problem in found]
    if not problems and stamp is not None:
        _write_stamp(stamp)
    return problems


EMPTY_FOLDER = "empty identity folder"


def empty_folders(folders: Iterable[Path], pattern: str) -> list[str]:
    """One line per identity folder holding no file matching ``pattern`` (starting with EMPTY_FOLDER)."""
    return [f"{EMPTY_FOLDER} (no {pattern}): {folder}" for folder in folders
            if folder.is_dir() and not any(folder.glob(pattern))]
