"""warmup(): run every op once, forward and backward, at the shapes a job will use, before it starts.

The Triton kernels autotune on their first call in a size bucket (kernels/_launch.bucket: the next power
of two of each size). Tuning benchmarks every config and synchronises, so it cannot happen inside a CUDA
graph capture, and it costs seconds at large sizes in the middle of a timed step. After warmup() at the
training shapes (and the evaluation's gallery sizes, if it uses the ops), every later call of those
shapes, or of any size in the same buckets, launches straight away: the steady-state step is capturable.

    ops.warmup(batch=256, dim=2048, classes=395, device="cuda", dtype=torch.bfloat16)

A tuning is kept per bucket and per distance metric, and for hard mining per (positive, negative) rule
pair too: ``metrics`` lists the pairwise distances' metrics and ``mining`` the (metric, positive, negative)
minings the job calls. The defaults are what vtreid's own losses call: Euclidean distances, and HSME's
reciprocal ranking loss's two minings (Euclidean, cross-modality positives, same- and cross-modality
negatives); an evaluation by cosine distance adds "cosine" to ``metrics``.

It warms whatever backend the ops would pick (``backend`` as in the ops). It returns the calls it made,
as (op, shapes) pairs, for logs and tests.
"""
from __future__ import annotations

import numbers

import torch

from ._checks import check_choice
from .hard_mining import RULES, hard_mining
from .hetero_center import hetero_center_loss
from .normalized_softmax import normalized_cross_entropy
from .pairwise_distance import METRICS, pairwise_distance

#: the (metric, positive, negative) of vtreid's own mining calls (losses/ranking.py)
LIBRARY_MINING = (("euclidean", "cross", "same"), ("euclidean", "cross", "cross"))


def warmup(*, batch: int, dim: int, classes: int | None = None, galleries: tuple[int, ...] = (),
           metrics: tuple[str, ...] = ("euclidean",), mining: tuple[tuple[str, str, str], ...] = LIBRARY_MINING,
           device: str | torch.device = "cuda", dtype: torch.dtype = torch.float32,
           backend: str | None = None) -> list[tuple[str, tuple]]:
    """Call each op forward + backward at ``batch`` x ``dim`` (a P x K batch of two modalities), the
    classifier at ``classes``, and pairwise distances against each gallery size in ``galleries``; the
    distances once per metric in ``metrics``, the mining once per (metric, positive, negative) in ``mining``."""
    for name, value in (("batch", batch), ("dim", dim), ("classes", classes),
                        *((f"galleries[{i}]", g) for i, g in enumerate(galleries))):
        if value is None and name == "classes":
            continue
        least = 2 if name in ("batch", "dim") else 1
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
            raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
    for name, value in (("metrics", metrics), ("mining", mining)):
        if isinstance(value, str) or not isinstance(value, (tuple, list)):
            raise TypeError(f"{name} must be a tuple, got {value!r}")
    for i, metric in enumerate(metrics):
        check_choice(metric, f"metrics[{i}]", METRICS)
    for i, rules in enumerate(mining):
        if not (isinstance(rules, (tuple, list)) and len(rules) == 3):
            raise ValueError(f"mining[{i}] must be a (metric, positive, negative) triple, got {rules!r}")
        check_choice(rules[0], f"mining[{i}] metric", METRICS)
        check_choice(rules[1], f"mining[{i}] positive", RULES)
        check_choice(rules[2], f"mining[{i}] negative", RULES)
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
    for metric in metrics:
        run("pairwise_distance", (batch, batch, dim),
            lambda: pairwise_distance(x, metric=metric, backend=backend))
    for metric, positive, negative in mining:
        run("hard_mining", (batch, batch, dim),
            lambda: hard_mining(x, labels, anchor_modality=modality, metric=metric, positive=positive,
                                negative=negative, backend=backend).pos_dist.float().sum())
    run("hetero_center_loss", (batch, dim),
        lambda: hetero_center_loss(x, labels, modality, backend=backend))
    if classes:
        w = features(classes)
        target = labels % classes
        run("normalized_cross_entropy", (batch, classes, dim),
            lambda: normalized_cross_entropy(x, w, target, scale=14.0, backend=backend))
    for m in galleries:
        y = features(m)
        for metric in metrics:
            with torch.no_grad():
                pairwise_distance(x.detach(), y.detach(), metric=metric, backend=backend)
            calls.append(("pairwise_distance", (batch, m, dim)))
    return calls
