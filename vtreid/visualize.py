"""python -m vtreid.visualize: rank lists of queries, CMC curves, training curves, as PNG.

    python -m vtreid.visualize ranks --features feats.pt --out ranks/ [--queries 0,5,9] [--worst 10]
    python -m vtreid.visualize cmc --results run1/results.json run2/results.json --out cmc.png
    python -m vtreid.visualize cmc --features feats.pt --out cmc.png        # the full curve, ranks 1..20
    python -m vtreid.visualize curves --metrics run/metrics.jsonl --out curves.png

ranks: one PNG per query (Pillow only): the query, then its top-k gallery images in rank order. Every image
has a frame (query: blue; a correct match: green; a wrong one: red), a badge marking it visible (V,
yellow) or infrared (IR, purple), and a caption (query: index, identity, camera, AP; gallery: rank,
identity, camera). The ranking is the one the evaluation uses: SYSU (default): infrared queries against
trial ``--trial``'s gallery (``--mode``, ``--shots``; a camera-3 query never sees camera-2 images);
RegDB: ``--direction``. The list shows every gallery image in distance order (the SYSU CMC counts an
identity once, so its first correct match may sit lower in the picture than the CMC rank says). Queries:
``--queries`` (indices among the query rows) and / or ``--worst N`` (the N lowest-AP queries); neither:
the first 10.

cmc and curves need matplotlib (``pip install 'vtreid[plot]'``); see vtreid.plots.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from vtreid import _cli as cli
from vtreid.eval import rank_metrics, sysu_galleries, sysu_gallery
from vtreid.evaluate import check_protocol
from vtreid.evaluate import load_features as _load_features
from vtreid.ops import pairwise_distance

def load_features(path) -> dict:
    """evaluate.load_features, with any unreadable file reported as "not a features file"."""
    try:
        return _load_features(path)
    except (ValueError, FileNotFoundError):
        raise
    except Exception as exc:  # noqa: BLE001 - torch.load / numpy raise many types for a foreign file
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ValueError(f"{path} is not a features file ({type(exc).__name__}: {first})") from None


# -- the rank-list picture -----------------------------------------------------------------------
TILE = (64, 128)          # width, height of one image
BORDER = 4                # frame width
GAP = 6                   # between cells
SEPARATOR = 18            # extra space between the query and the first gallery image
MARGIN = 8
CAPTION = 30              # two caption lines above each cell
BADGE = (18, 12)          # width, height of the modality badge, in the tile's top-left corner
QUERY_COLOR = (40, 90, 220)
MATCH_COLOR = (0, 180, 0)
WRONG_COLOR = (220, 0, 0)
BADGE_COLORS = {0: ((250, 200, 0), (0, 0, 0)), 1: ((120, 40, 200), (255, 255, 255))}   # fill, text
MODALITY = {0: "V", 1: "IR"}


def cell_width(tile=TILE) -> int:
    return tile[0] + 2 * BORDER


def cell_box(position: int, tile=TILE) -> tuple[int, int, int, int]:
    """(left, top, right, bottom), inclusive, of the framed cell at ``position`` (0 = query, 1.. = ranks)."""
    w, h = tile[0] + 2 * BORDER, tile[1] + 2 * BORDER
    left = MARGIN + position * (w + GAP) + (SEPARATOR if position else 0)
    top = MARGIN + CAPTION
    return left, top, left + w - 1, top + h - 1


def canvas_size(k: int, tile=TILE) -> tuple[int, int]:
    """(width, height) of a rank list with k gallery images."""
    right, bottom = cell_box(k, tile)[2:]
    return right + 1 + MARGIN, bottom + 1 + MARGIN


def _font():
    try:
        return ImageFont.load_default(size=11)
    except TypeError:    # Pillow < 10.1
        return ImageFont.load_default()


def _tile(path: str, modality: int, tile=TILE) -> Image.Image:
    if not Path(path).is_file():
        raise FileNotFoundError(f"image not found: {path} (use --image-root if the paths are relative)")
    try:
        with Image.open(path) as img:
            img = img.convert("L").convert("RGB") if modality == 1 else img.convert("RGB")
            return img.resize(tile, Image.BILINEAR)
    except OSError as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from None


def rank_list_image(query: dict, gallery: list[dict], tile=TILE) -> Image.Image:
    """query: {path, modality, id, cam, caption}; gallery: [{path, modality, id, cam, match, caption}]
    in rank order. Returns the picture (see the module docstring)."""
    image = Image.new("RGB", canvas_size(len(gallery), tile), "white")
    draw = ImageDraw.Draw(image)
    font = _font()
    for position, item in enumerate([query, *gallery]):
        left, top, right, bottom = cell_box(position, tile)
        color = QUERY_COLOR if position == 0 else (MATCH_COLOR if item["match"] else WRONG_COLOR)
        draw.rectangle((left, top, right, bottom), fill=color)
        image.paste(_tile(item["path"], item["modality"], tile), (left + BORDER, top + BORDER))
        fill, ink = BADGE_COLORS[item["modality"]]
        bx, by = left + BORDER, top + BORDER
        draw.rectangle((bx, by, bx + BADGE[0] - 1, by + BADGE[1] - 1), fill=fill)
        draw.text((bx + 2, by), MODALITY[item["modality"]], fill=ink, font=font)
        for line, text in enumerate(item["caption"].split("\n")[:2]):
            draw.text((left, MARGIN + line * 13), text, fill=(0, 0, 0), font=font)
    return image


# -- rankings ------------------------------------------------------------------------------------
def rankings(data: dict, *, protocol: str = "sysu", mode: str = "all", shots: int = 1, trial: int = 1,
             direction: str = "visible_to_thermal", metric: str = "euclidean", k: int = 10, rand_perm=None) -> dict:
    """The evaluation's ranking of every query: query rows (indices into ``data``), the top-k gallery rows
    [Q, k'] and whether each is a correct match, AP and the CMC's first-match rank per query. SYSU:
    ``rand_perm`` (vtreid.eval.load_rand_perm's) for the official galleries, else the seeded draw."""
    modalities = data["modalities"].numpy()
    if protocol == "sysu":
        query_rows, candidates = np.where(modalities == 1)[0], np.where(modalities == 0)[0]
        paths = [data["paths"][i] for i in candidates]
        chosen = sysu_gallery(data["ids"].numpy()[candidates], data["cams"].numpy()[candidates], paths, mode=mode,
                              shots=shots, trial=trial, rand_perm=rand_perm)
        gallery_rows = candidates[chosen]
    else:
        q = 0 if direction == "visible_to_thermal" else 1
        query_rows, gallery_rows = np.where(modalities == q)[0], np.where(modalities == 1 - q)[0]
    if not len(query_rows) or not len(gallery_rows):
        raise ValueError(f"the features hold {len(query_rows)} query and {len(gallery_rows)} gallery rows for "
                         f"protocol {protocol}; both must be non-empty")
    qr, gr = torch.as_tensor(query_rows), torch.as_tensor(gallery_rows)
    feats, ids, cams = data["features"], data["ids"], data["cams"]
    sysu = protocol == "sysu"
    metrics = rank_metrics(feats[qr], feats[gr], ids[qr], ids[gr], cams[qr] if sysu else None,
                           cams[gr] if sysu else None, metric=metric, ranks=(1,), sysu_rules=sysu)
    dist = pairwise_distance(feats[qr], feats[gr], metric=metric).float()
    if sysu:   # the SYSU camera rule: a camera-3 query ignores camera-2 images
        dist = dist.masked_fill((cams[qr][:, None] == 3) & (cams[gr][None, :] == 2), float("inf"))
    order = torch.sort(dist, dim=1, stable=True).indices[:, :k]
    shown = torch.isfinite(dist.gather(1, order))
    top = gr[order]
    return {"query_rows": qr, "top": top, "shown": shown, "match": ids[top] == ids[qr][:, None],
            "ap": metrics["ap"].cpu(), "valid": metrics["valid"].cpu(), "first_match": metrics["first_match"].cpu()}


def select_queries(ranked: dict, queries: list[int] | None, worst: int | None) -> list[int]:
    """Indices among the query rows: those asked for, then the ``worst`` lowest-AP valid queries."""
    n = len(ranked["query_rows"])
    chosen = []
    for q in queries or []:
        if not 0 <= q < n:
            raise ValueError(f"--queries {q} is out of range: there are {n} queries (0..{n - 1})")
        chosen.append(q)
    if worst:
        ap = torch.where(ranked["valid"], ranked["ap"], torch.full_like(ranked["ap"], float("inf")))
        order = torch.sort(ap, stable=True).indices.tolist()
        chosen += [q for q in order[:min(worst, int(ranked["valid"].sum()))]]
    if not queries and not worst:
        chosen = list(range(min(10, n)))
    return list(dict.fromkeys(chosen))


def write_rank_lists(data: dict, out: str | Path, *, queries=None, worst=None, image_root=None, tile=TILE,
                     **ranking) -> list[Path]:
    out = Path(out)
    ranked = rankings(data, **ranking)
    picked = select_queries(ranked, queries, worst)
    paths = [str(Path(image_root) / p) if image_root else p for p in data["paths"]]
    ids, cams, mods = (data[k].numpy() for k in ("ids", "cams", "modalities"))
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for q in picked:
        row = int(ranked["query_rows"][q])
        valid = bool(ranked["valid"][q])
        ap = f"AP {100 * float(ranked['ap'][q]):.1f}%" if valid else "no match"
        query = {"path": paths[row], "modality": int(mods[row]), "id": int(ids[row]), "cam": int(cams[row]),
                 "caption": f"query {q}\nid {ids[row]} cam {cams[row]} {MODALITY[int(mods[row])]}"}
        gallery = []
        for rank, (g, shown, match) in enumerate(zip(ranked["top"][q].tolist(), ranked["shown"][q].tolist(),
                                                     ranked["match"][q].tolist()), 1):
            if shown:
                gallery.append({"path": paths[g], "modality": int(mods[g]), "id": int(ids[g]), "cam": int(cams[g]),
                                "match": bool(match), "caption": f"#{rank}\nid {ids[g]} c{cams[g]}"})
        image = rank_list_image(query, gallery, tile)
        name = out / f"query{q:05d}_id{ids[row]}_cam{cams[row]}.png"
        image.save(name)
        written.append(name)
        print(f"{name}: {ap}, first match at CMC rank {int(ranked['first_match'][q]) or '-'}")
    return written


# -- CMC from features ---------------------------------------------------------------------------
def cmc_from_features(data: dict, *, protocol="sysu", mode="all", shots=1, trials=10, direction="visible_to_thermal",
                      metric="euclidean", max_rank=20, rand_perm=None) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) over trials of the CMC at ranks 1..max_rank, as the evaluation counts it (SYSU galleries
    as in ``rankings``)."""
    modalities = data["modalities"].numpy()
    feats, ids, cams = data["features"], data["ids"], data["cams"]
    curves = []
    if protocol == "sysu":
        qr, candidates = np.where(modalities == 1)[0], np.where(modalities == 0)[0]
        for trial in range(1, trials + 1):
            chosen = sysu_gallery(ids.numpy()[candidates], cams.numpy()[candidates],
                                  [data["paths"][i] for i in candidates], mode=mode, shots=shots, trial=trial,
                                  rand_perm=rand_perm)
            gr = torch.as_tensor(candidates[chosen])
            curves.append(rank_metrics(feats[qr], feats[gr], ids[qr], ids[gr], cams[qr], cams[gr], metric=metric,
                                       ranks=(max_rank,), sysu_rules=True)["cmc"].cpu().numpy())
    else:
        q = 0 if direction == "visible_to_thermal" else 1
        qr, gr = np.where(modalities == q)[0], np.where(modalities == 1 - q)[0]
        curves.append(rank_metrics(feats[qr], feats[gr], ids[qr], ids[gr], metric=metric,
                                   ranks=(max_rank,))["cmc"].cpu().numpy())
    curves = np.stack(curves)
    return curves.mean(0), curves.std(0)


# -- command line --------------------------------------------------------------------------------
def _indices(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--queries takes indices like 0,5,9, got {text!r}") from None


def _protocol_options(p: argparse.ArgumentParser, trials: bool) -> None:
    p.add_argument("--protocol", choices=("sysu", "regdb"), default="sysu")
    p.add_argument("--mode", choices=("all", "indoor"), default="all", help="SYSU search mode")
    p.add_argument("--shots", type=int, choices=(1, 10), default=1, help="SYSU single- or multi-shot")
    if trials:
        p.add_argument("--trials", type=cli.positive_int, default=10, help="SYSU gallery draws averaged")
    else:
        p.add_argument("--trial", type=cli.positive_int, default=1, help="SYSU gallery draw shown (1, 2, ...)")
    p.add_argument("--direction", choices=("visible_to_thermal", "thermal_to_visible"), default="visible_to_thermal",
                   help="RegDB query modality")
    p.add_argument("--metric", choices=("euclidean", "cosine"), default="euclidean")
    p.add_argument("--rand-perm", help="SYSU exp/rand_perm_cam.mat: the official galleries (default: the seeded "
                   "draw, as vtreid.evaluate --features)")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m vtreid.visualize", description=__doc__.splitlines()[0],
                                     epilog=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("ranks", help="rank-list PNGs, one per query")
    r.add_argument("--features", required=True, help="features file with paths (python -m vtreid.extract)")
    r.add_argument("--out", required=True, type=cli.output_folder, help="folder for the PNGs")
    r.add_argument("--queries", type=_indices, help="query indices, e.g. 0,5,9")
    r.add_argument("--worst", type=cli.positive_int, help="the N queries with the lowest AP")
    r.add_argument("--top", type=cli.positive_int, default=10, help="gallery images per query")
    r.add_argument("--image-root", help="folder the features file's relative paths start from")
    _protocol_options(r, trials=False)
    c = sub.add_parser("cmc", help="CMC curves of several runs on one chart (matplotlib)")
    c.add_argument("--results", nargs="+", default=[], help="results JSON files: points at ranks 1, 5, 10, 20")
    c.add_argument("--features", nargs="+", default=[], help="features files: the full curve")
    c.add_argument("--labels", nargs="+", help="one label per file (results first, then features)")
    c.add_argument("--max-rank", type=cli.positive_int, default=20)
    c.add_argument("--title", default="CMC")
    c.add_argument("--out", required=True, type=cli.png_file, help="the PNG to write")
    _protocol_options(c, trials=True)
    t = sub.add_parser("curves", help="loss terms, lr and R1 / mAP over the steps (matplotlib)")
    t.add_argument("--metrics", nargs="+", required=True, help="metrics.jsonl of one or more runs")
    t.add_argument("--labels", nargs="+", help="one label per file")
    t.add_argument("--out", required=True, type=cli.png_file, help="the PNG to write")
    args = parser.parse_args(argv)
    if args.command == "cmc" and not args.results and not args.features:
        parser.error("cmc needs --results FILE... and / or --features FILE...")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        # --rand-perm's official permutations for the features' SYSU galleries, or None for the seeded draw
        wanted = getattr(args, "rand_perm", None) and getattr(args, "protocol", None) == "sysu" \
            and (args.command == "ranks" or args.features)
        rand_perm = sysu_galleries("official", args.rand_perm).rand_perm if wanted else None
        if args.command == "ranks":
            data = load_features(args.features)
            if not data["paths_given"]:
                raise ValueError(f"{args.features} has no image paths; rank lists need them (python -m vtreid.extract "
                                 f"writes them)")
            written = write_rank_lists(data, args.out, queries=args.queries, worst=args.worst,
                                       image_root=args.image_root, protocol=args.protocol, mode=args.mode,
                                       shots=args.shots, trial=args.trial, direction=args.direction,
                                       metric=args.metric, k=args.top, rand_perm=rand_perm)
            print(f"wrote {len(written)} rank list(s) to {args.out}")
        elif args.command == "cmc":
            from vtreid import plots
            labels = args.labels or []
            curves = plots.results_curves(args.results, labels[:len(args.results)])
            for n, path in enumerate(args.features):
                data = load_features(path)
                try:   # a file without queries or gallery rows drew a flat 0 % curve
                    check_protocol(data, args.protocol)
                except ValueError as exc:
                    raise ValueError(f"{path}: {exc}") from None
                mean, std = cmc_from_features(data, protocol=args.protocol, mode=args.mode,
                                              shots=args.shots, trials=args.trials, direction=args.direction,
                                              metric=args.metric, max_rank=args.max_rank,
                                              rand_perm=rand_perm)
                label = labels[len(args.results) + n] if len(labels) > len(args.results) + n else Path(path).stem
                curves.append((label, np.arange(1, args.max_rank + 1), mean, std if args.protocol == "sysu" else None))
            print(f"wrote {plots.cmc_plot(curves, args.out, args.title)}")
        else:
            from vtreid import plots
            print(f"wrote {plots.curves_plot(args.metrics, args.out, args.labels)}")
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
