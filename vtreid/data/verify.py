"""Image checks shared by the dataset checks (python -m vtreid.data check): every image must decode.

Decoding runs in a thread pool (Pillow releases the GIL while it decodes), reporting progress through
a callback, so SYSU-MM01's ~45k images take seconds to a minute, not a quarter of an hour.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable

from PIL import Image

Progress = Callable[[int, int], None]  # (images done, images in all)


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
                    progress: Progress | None = None, every: int = 500) -> list[str]:
    """One line per image of ``paths`` that does not decode, in the order of ``paths``.
    ``progress(done, total)`` is called every ``every`` images and once at the end."""
    paths = list(paths)
    total = len(paths)
    workers = workers or min(16, 2 * (os.cpu_count() or 1))
    problems = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for done, problem in enumerate(pool.map(decode_problem, paths), start=1):
            if problem:
                problems.append(problem)
            if progress is not None and (done % every == 0 or done == total):
                progress(done, total)
    return problems


def empty_folders(folders: Iterable[Path], pattern: str) -> list[str]:
    """One line per identity folder holding no file matching ``pattern``."""
    return [f"empty identity folder (no {pattern}): {folder}" for folder in folders
            if folder.is_dir() and not any(folder.glob(pattern))]
