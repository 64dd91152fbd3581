"""What a run shows and writes: the live progress line, log.txt, metrics.jsonl and TensorBoard.

On a terminal (stdout) the progress is a tqdm bar whose postfix holds loss, lr, images/s and data time; when
stdout is not a terminal (a log file, CI), a plain line every ``log_every`` steps. TensorBoard event
files are written too when the ``tensorboard`` package is installed (it is optional).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from vtreid.training.checkpoint import write_text_atomic


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class Progress:
    def __init__(self, total: int, start: int, log_every: int, stream=None, enabled: bool = True):
        self.total, self.log_every, self.enabled = total, max(1, log_every), enabled
        self.stream = stream or sys.stdout
        self.start_step, self.start_time = start, time.perf_counter()
        self.bar = None
        if enabled and self.stream.isatty():
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, initial=start, file=self.stream, dynamic_ncols=True, unit="step")
            except ImportError:
                pass

    def eta(self, step: int) -> float:
        done = step - self.start_step
        return (time.perf_counter() - self.start_time) / done * (self.total - step) if done > 0 else float("nan")

    def update(self, step: int, m: dict) -> None:
        """``m``: the step's metrics record (after step ``step`` of ``total``)."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix_str(f"loss {m['loss']:.4f} lr {m['lr']:.2e} {m['images_per_s']:.0f} img/s "
                                     f"data {m['data_time']:.3f}s", refresh=False)
            return
        if step % self.log_every == 0 or step == self.total:
            terms = " ".join(f"{k} {v:.4f}" for k, v in m["terms"].items())
            print(f"step {step}/{self.total} ({100 * step / self.total:.0f}%) | epoch {m['epoch']} stage {m['stage']} | "
                  f"loss {m['loss']:.4f} ({terms}) | lr {m['lr']:.2e} | {m['images_per_s']:.1f} img/s | "
                  f"data {m['data_time']:.3f}s step {m['step_time']:.3f}s | ETA {_duration(self.eta(step))}",
                  file=self.stream, flush=True)

    def write(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Writers:
    """log.txt, metrics.jsonl and (optionally) TensorBoard of one run directory; ``enabled=False``
    writes nothing (the non-zero ranks of a distributed run)."""

    def __init__(self, out: Path, enabled: bool = True, resume_step: int | None = None):
        """``resume_step``: the step a resumed run continues after; TensorBoard drops what a crashed run
        logged after it, as ``drop_metrics_after`` does for metrics.jsonl."""
        self.out, self.enabled, self.tensorboard = Path(out), enabled, None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
                purge = None if resume_step is None else resume_step + 1
                self.tensorboard = SummaryWriter(str(self.out / "tensorboard"), purge_step=purge)
            except ImportError:
                pass

    def log(self, text: str, echo: bool = True) -> None:
        if echo and self.enabled:
            print(text, flush=True)
        if self.enabled:
            with open(self.out / "log.txt", "a") as f:
                f.write(text + "\n")

    def metrics(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tensorboard is not None:
            step = record["step"]
            for key in ("loss", "lr", "images_per_s", "data_time", "step_time"):
                if key in record:
                    self.tensorboard.add_scalar(f"train/{key}", record[key], step)
            for key, value in record.get("terms", {}).items():
                self.tensorboard.add_scalar(f"terms/{key}", value, step)
            for key, value in record.get("eval", {}).items():
                self.tensorboard.add_scalar(f"eval/{key}", value, step)

    def drop_metrics_after(self, step: int) -> None:
        """On a resume from ``step``: lines a crashed run wrote after its last checkpoint are dropped, so
        metrics.jsonl reads as one uninterrupted run; so is a line it left torn (a power cut, a full disk).
        The file is replaced atomically: an interruption here keeps the history."""
        path = self.out / "metrics.jsonl"
        if not self.enabled or not path.is_file():
            return
        kept = []
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
                kept.append(line)
        write_text_atomic(path, "".join(line + "\n" for line in kept))

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
