"""Draw benchmark results as PNG bar charts: python -m bench.plot [results.jsonl ...] [--op NAME]

One chart per (op, dtype, mode): for every shape, a bar per provider showing its speed-up over the
baseline (reference, or numpy for the evaluation: baseline time / provider time; higher is faster), from
the newest run that measured that shape. Eager runs only (no --cuda-graph run, no bench.overhead or
bench.profile line). Drawn with Pillow so plotting adds no dependency.
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from PIL import Image, ImageDraw

from bench.goals import is_measurement
from bench.harness import RESULTS_DIR

COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127)]


def load(paths):
    """The measurement records of the files (other lines, e.g. bench.overhead's, are left out)."""
    records = []
    for path in paths:
        for line in Path(path).read_text().splitlines():
            if line.strip():
                records.append(json.loads(line))
    return [r for r in records if is_measurement(r)]


def _shape(r) -> str:
    return ",".join(f"{k}={v}" for k, v in r["case"].items())


def latest_run(records):
    """Keep, per (device, op, dtype, mode, shape), only the records of the newest run that measured it (a
    later run of other shapes, e.g. --large, does not hide it)."""
    def key(r):
        return r["device"], r["op"], r["dtype"], r["mode"], _shape(r)
    newest = {}
    for r in records:
        newest[key(r)] = max(newest.get(key(r), ""), r["time"])
    return [r for r in records if r["time"] == newest[key(r)]]


def baseline_of(op: str) -> str:
    return "numpy" if op == "sysu_evaluation" else "reference"


def speedups(records):
    """{(device, op, dtype, mode): {shape: {provider: baseline_ms / provider_ms}}}"""
    table = defaultdict(lambda: defaultdict(dict))
    for r in records:
        table[(r["device"], r["op"], r["dtype"], r["mode"])][_shape(r)][r["provider"]] = r["median_ms"]
    out = {}
    for key, shapes in table.items():
        base = baseline_of(key[1])
        out[key] = {s: {p: t[base] / ms for p, ms in t.items()} for s, t in shapes.items() if base in t}
    return out


def draw(title, shapes: dict, path: Path):
    providers = sorted({p for v in shapes.values() for p in v})
    width, height, left, bottom, top = 140 + 40 * len(providers) * len(shapes), 420, 60, 90, 40
    top_value = max([v for s in shapes.values() for v in s.values()] + [1.0]) * 1.1
    img = Image.new("RGB", (max(width, 480), height), "white")
    pen = ImageDraw.Draw(img)
    pen.text((left, 10), title, fill="black")
    plot_h = height - bottom - top

    def y_of(v):
        return top + plot_h * (1 - v / top_value)

    pen.line([(left, top), (left, height - bottom), (img.width - 10, height - bottom)], fill="black")
    pen.line([(left, y_of(1.0)), (img.width - 10, y_of(1.0))], fill=(180, 180, 180))
    pen.text((5, y_of(1.0) - 6), "1.0x", fill="black")
    pen.text((5, top - 6), f"{top_value:.1f}x", fill="black")
    x = left + 10
    for shape, values in shapes.items():
        start = x
        for i, provider in enumerate(providers):
            if provider in values:
                v = values[provider]
                pen.rectangle([x, y_of(v), x + 30, height - bottom], fill=COLOURS[i % len(COLOURS)])
                pen.text((x, y_of(v) - 12), f"{v:.2f}", fill="black")
            x += 36
        pen.text((start, height - bottom + 5), shape, fill="black")
        x += 24
    for i, provider in enumerate(providers):
        pen.rectangle([left + 130 * i, height - 30, left + 130 * i + 10, height - 20], fill=COLOURS[i % len(COLOURS)])
        pen.text((left + 130 * i + 14, height - 32), provider, fill="black")
    img.save(path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path)
    parser.add_argument("--op", default=None)
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    files = args.files or sorted(RESULTS_DIR.glob("*.jsonl"))
    records = [r for r in latest_run(load(files)) if args.op in (None, r["op"])]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for (device, op, dtype, mode), shapes in sorted(speedups(records).items()):
        slug = "".join(c if c.isalnum() else "-" for c in device.lower())[:40]
        path = args.out_dir / f"{op}-{slug}-{dtype}-{mode}.png"
        draw(f"{op} {mode} {dtype} on {device}: speed-up over {baseline_of(op)}", shapes, path)
        print(path)


if __name__ == "__main__":
    main()
