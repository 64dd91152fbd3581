"""warmup(): run every op once, forward and backward, at the shapes a job will use, before it starts.

The Triton kernels autotune on their first call in a size bucket (kernels/_launch.bucket: the next power
of two of each size). Tuning benchmarks every config and synchronises, so it cannot happen inside a CUDA
graph capture, and it costs seconds at large sizes in the middle of a timed step. After warmup() at the
training shapes (and the evaluation's gallery sizes, if it uses the ops), every later call of those
shapes, or of any size in the same buckets, launches straight away: the steady-state step is capturable.

    ops.warmup(batch=256, dim=2048, classes=395, device="cuda", dtype=torch.bfloat16)

It warms whatever backend the ops would pick (``backend`` as in the ops). It returns the calls it made,
as (op, shapes) pairs, for logs and tests.
"""
from __future__ import annotations

import numbers

import torch

from .hard_mining import hard_mining
from .hetero_center import hetero_center_loss
from .normalized_softmax import normalized_cross_entropy
from .pairwise_distance import pairwise_distance


def warmup(*, batch: int, dim: int, classes: int | None = None, galleries: tuple[int, ...] = (),
           device: str | torch.device = "cuda", dtype: torch.dtype = torch.float32,
           backend: str | None = None) -> list[tuple[str, tuple]]:
    """Call each op forward + backward at ``batch`` x ``dim`` (a P x K batch of two modalities), the
    classifier at ``classes``, and pairwise distances against each gallery size in ``galleries``."""
    for name, value in (("batch", batch), ("dim", dim), ("classes", classes),
                        *((f"galleries[{i}]", g) for i, g in enumerate(galleries))):
        if value is None and name == "classes":
            continue
        least = 2 if name in ("batch", "dim") else 1
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
            raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
    if dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        raise TypeError(f"dtype must be float32, float16, bfloat16 or float64, got {dtype}")
    device = torch.device(device)
    g = torch.Generator().manual_seed(0)

    def features(n):
        return torch.randn(n, dim, generator=g).to(device, dtype).requires_grad_(True)

    labels = (torch.arange(batch) // 2).to(device)          # two samples per identity ...
    modality = (torch.arange(batch) % 2).to(device)         # ... one of each modality
    calls = []

    def run(op, shapes, fn):
        out = fn()
        (out if out.dim() == 0 else out.float().sum()).backward()
        calls.append((op, shapes))

    x = features(batch)
    run("pairwise_distance", (batch, batch, dim),
        lambda: pairwise_distance(x, backend=backend))
    run("hard_mining", (batch, batch, dim),
        lambda: hard_mining(x, labels, anchor_modality=modality, negative="cross", backend=backend)
        .pos_dist.float().sum())
    run("hetero_center_loss", (batch, dim),
        lambda: hetero_center_loss(x, labels, modality, backend=backend))
    if classes:
        w = features(classes)
        target = labels % classes
        run("normalized_cross_entropy", (batch, classes, dim),
            lambda: normalized_cross_entropy(x, w, target, scale=14.0, backend=backend))
    for m in galleries:
        y = features(m)
        with torch.no_grad():
            pairwise_distance(x.detach(), y.detach(), backend=backend)
        calls.append(("pairwise_distance", (batch, m, dim)))
    return calls
