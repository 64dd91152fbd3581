"""Argument types the result tools share (extract, evaluate, visualize, export): a bad value is a one-line
usage error naming the option, before any work, not a traceback after it."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def check_device(name: str) -> torch.device:
    """``name`` as a device this machine has (cpu, cuda, cuda:N); else ValueError saying why, for the caller
    to prefix (train.device in a config, --device on a command line)."""
    try:
        dev = torch.device(name)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ValueError("it is not cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"torch sees no CUDA device (torch {torch.__version__})")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"there are {torch.cuda.device_count()} CUDA device(s)")
    return dev


def device(text: str) -> str:
    """A torch device this machine has (cpu, cuda, cuda:N)."""
    try:
        check_device(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
    return text


def output_file(text: str) -> str:
    """A file to write (its folder is made): not an existing folder."""
    if Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; give the file to write")
    return text


def output_folder(text: str) -> str:
    """A folder to write into (made when missing): not an existing file."""
    if Path(text).exists() and not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file; give a folder")
    return text


def png_file(text: str) -> str:
    """A PNG to write: matplotlib adds .png to a name without a suffix, so the tools ask for it."""
    output_file(text)
    if Path(text).suffix.lower() != ".png":
        raise argparse.ArgumentTypeError(f"{text}: the plot is a PNG; give a name ending in .png")
    return text
