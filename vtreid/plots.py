"""Charts of results as PNG: CMC curves of several runs on one chart, training curves from metrics.jsonl.

matplotlib is an optional extra (``pip install 'vtreid[plot]'``); without it these functions raise a
RuntimeError that says how to install it. Rank-list pictures (vtreid.visualize) need only Pillow.

CMC sources: a results JSON (the trainer's ``results.json``, ``python -m vtreid.evaluate --out``) holds
the CMC at ranks 1, 5, 10 and 20 only (mean and std over trials): those points are drawn, joined by
lines, with the std as error bars. A features file gives the whole curve, ranks 1..max_rank, averaged
over the protocol's trials (``cmc_from_features``).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

RANKS = (1, 5, 10, 20)


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise RuntimeError("plotting needs matplotlib, which is not installed: pip install 'vtreid[plot]' "
                           "(or pip install matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"results file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not a JSON results file ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a results file (a JSON object is expected)")
    return data


def read_results(path: str | Path) -> dict[str, dict]:
    """{protocol name: summary} of a results JSON: the trainer's results.json / evaluate --checkpoint's
    ({"results": {name: summary}}) or evaluate --features' ({"protocol": name, rank1: ..., ...})."""
    return read_results_file(path)[1]


def read_results_file(path: str | Path) -> tuple[dict, dict[str, dict]]:
    """(the whole JSON object, read_results' entries) of a results file, read once."""
    path = Path(path)
    data = _read_json(path)
    entries = data["results"] if isinstance(data.get("results"), dict) else {data.get("protocol", path.stem): data}
    for name, summary in entries.items():
        if not isinstance(summary, dict) or any(
                not isinstance(summary.get(f"rank{k}"), dict)
                or not all(isinstance(summary[f"rank{k}"].get(v), (int, float)) for v in ("mean", "std"))
                for k in RANKS):
            raise ValueError(f"{path} is not a vtreid results file ({name!r} lacks rank1/5/10/20 mean and std)")
    return data, entries


def cmc_plot(curves: list[tuple[str, np.ndarray, np.ndarray, np.ndarray | None]], out: str | Path,
             title: str = "CMC") -> Path:
    """curves: (label, ranks, cmc in [0, 1], std or None) each; one line per curve, in percent."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4), dpi=100)
    for label, ranks, cmc, std in curves:
        ranks, cmc = np.asarray(ranks), 100 * np.asarray(cmc)
        marker = "o" if len(ranks) <= len(RANKS) else None
        if std is not None:
            ax.errorbar(ranks, cmc, yerr=100 * np.asarray(std), marker=marker, capsize=3, label=label)
        else:
            ax.plot(ranks, cmc, marker=marker, label=label)
    ax.set_xlabel("rank")
    ax.set_ylabel("matching rate (%)")
    ax.set_ylim(0, 100)
    ax.set_xlim(left=1)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return _save(fig, plt, out)


def results_curves(paths, labels=None) -> list[tuple]:
    """CMC points (ranks 1, 5, 10, 20) of every protocol entry of every results file."""
    curves = []
    for n, path in enumerate(paths):
        path = Path(path)
        entries = read_results(path)
        base = labels[n] if labels and n < len(labels) else (path.parent.name or path.stem)
        for name, summary in entries.items():
            label = base if len(entries) == 1 else f"{base}: {name}"
            curves.append((label, np.array(RANKS), np.array([summary[f"rank{k}"]["mean"] for k in RANKS]),
                           np.array([summary[f"rank{k}"]["std"] for k in RANKS])))
    return curves


def read_metrics(path: str | Path) -> tuple[list[dict], list[dict]]:
    """(training lines, evaluation lines) of a metrics.jsonl."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"metrics file not found: {path}")
    train, evals = [], []
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a text file; is it a metrics.jsonl of vtreid.train?") from None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise ValueError(f"{path}:{number} is not a JSON line; is it a metrics.jsonl of vtreid.train?") from None
        if not isinstance(record, dict) or "step" not in record:
            raise ValueError(f"{path}:{number} has no 'step'; is it a metrics.jsonl of vtreid.train?")
        if "eval" in record:
            if not isinstance(record["eval"], dict):
                raise ValueError(f"{path}:{number}: 'eval' must hold the metrics (rank1, mAP, ...), got "
                                 f"{record['eval']!r}")
            evals.append(record)
        elif "loss" in record:
            if not all(isinstance(record.get(k), (int, float)) for k in ("loss", "lr")):
                raise ValueError(f"{path}:{number}: a training line needs numbers 'loss' and 'lr'")
            train.append(record)
    if not train and not evals:
        raise ValueError(f"{path} holds no training or evaluation line")
    return train, evals


def curves_plot(paths, out: str | Path, labels=None) -> Path:
    """Loss and its terms, the learning rate, and R1 / mAP of the evaluations over the steps, one column
    of panels, every run of ``paths`` on the same panels."""
    plt = _pyplot()
    runs = [(labels[n] if labels and n < len(labels) else Path(p).parent.name or Path(p).stem, *read_metrics(p))
            for n, p in enumerate(paths)]
    has_eval = any(evals for _, _, evals in runs)
    panels = 3 if has_eval else 2
    fig, axes = plt.subplots(panels, 1, figsize=(6.5, 2.4 * panels), dpi=100, sharex=True)
    many = len(runs) > 1
    for name, train, evals in runs:
        prefix = f"{name}: " if many else ""
        if train:
            steps = [r["step"] for r in train]
            marker = "." if len(steps) < 30 else None   # a short run's few points stay visible
            axes[0].plot(steps, [r["loss"] for r in train], linewidth=2, marker=marker, label=f"{prefix}loss")
            for term in dict.fromkeys(k for r in train for k in r.get("terms", {})):
                axes[0].plot(steps, [r.get("terms", {}).get(term, np.nan) for r in train], linewidth=1,
                             marker=marker, label=f"{prefix}{term}")
            axes[1].plot(steps, [r["lr"] for r in train], marker=marker, label=f"{prefix}lr")
        if evals:
            steps = [r["step"] for r in evals]
            for key, label in (("rank1", "R1"), ("mAP", "mAP")):
                axes[2].plot(steps, [100 * r["eval"].get(key, np.nan) for r in evals], marker="o",
                             label=f"{prefix}{label}")
    axes[0].set_ylabel("loss")
    axes[1].set_ylabel("learning rate")
    if has_eval:
        axes[2].set_ylabel("%")
    axes[-1].set_xlabel("step")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return _save(fig, plt, out)


def _save(fig, plt, out) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
