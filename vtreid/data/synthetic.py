"""Synthetic visible-infrared people written in the real SYSU-MM01 and RegDB layouts (PROTOCOLS.md).

Each identity is drawn once from its seed: body proportions (height, shoulder and hip width, head size,
leg length, stance), a bag on one side or none, clothing colours and a clothing pattern (plain,
horizontal or vertical stripes, checks) with its frequency, and the heat of each body part. Each image
then draws a camera-dependent placement, scale, viewpoint (a side view narrows the body and may mirror
it), lighting and background, and noise.

The visible rendering shows the colours under the camera's light; the infrared rendering is a single
channel of heat (skin warmest, clothes by identity, the pattern as a weaker modulation, a cool
background) with its own blur and noise, so colour never crosses modalities. What identifies a person
in both is the silhouette and the pattern's geometry: simple grey-level shape statistics retrieve
across modalities well above chance, an untrained network stays near chance, and a trained one learns.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .records import INFRARED
from .sysu import CAMERAS, INFRARED_CAMS

PATTERNS = ("plain", "hstripes", "vstripes", "checks")


@dataclass(frozen=True)
class Person:
    height: float        # fraction of the image height
    shoulders: float     # half-width of the torso, fraction of the image width
    hips: float
    head: float          # head radius, fraction of the image height
    torso: float         # torso share of the body below the head
    stance: float        # gap between the legs, fraction of the image width
    bag: int             # -1 left, 0 none, 1 right
    shirt: tuple
    pants: tuple
    skin: tuple
    pattern: str
    frequency: float
    heat_shirt: float
    heat_pants: float


def draw_person(seed: int, pid: int) -> Person:
    rng = np.random.default_rng([seed, pid, 7])
    # Clothes darker than the (light) backgrounds, so a silhouette shows in every visible image.
    colour = lambda: tuple(float(v) for v in rng.uniform(0.0, 0.45, 3) + rng.uniform(0, 0.15))  # noqa: E731
    return Person(
        height=float(rng.uniform(0.70, 0.95)), shoulders=float(rng.uniform(0.13, 0.26)),
        hips=float(rng.uniform(0.09, 0.2)), head=float(rng.uniform(0.055, 0.09)),
        torso=float(rng.uniform(0.35, 0.55)), stance=float(rng.uniform(0.0, 0.12)),
        bag=int(rng.integers(-1, 2)), shirt=colour(), pants=colour(),
        skin=tuple(float(v) for v in np.array([0.85, 0.65, 0.5]) * rng.uniform(0.5, 1.1)),
        pattern=PATTERNS[int(rng.integers(len(PATTERNS)))], frequency=float(rng.uniform(3.0, 9.0)),
        heat_shirt=float(rng.uniform(0.45, 0.8)), heat_pants=float(rng.uniform(0.35, 0.7)),
    )


def _masks(person: Person, h: int, w: int, rng: np.random.Generator, cam: int):
    """Boolean part masks (head, torso, legs, bag) and torso coordinates for the pattern."""
    scale = (0.8 + 0.05 * (cam % 4)) * rng.uniform(0.92, 1.05)
    side_view = rng.random() < 0.3
    squeeze = 0.85 if side_view else 1.0
    mirror = rng.random() < 0.5
    body_h = person.height * scale * h
    top = (h - body_h) * rng.uniform(0.2, 0.8)
    cx = w * (0.5 + rng.uniform(-0.08, 0.08))
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    dx = (x - cx) * (-1 if mirror else 1)
    head_r = person.head * scale * h
    head_cy = top + head_r
    head = ((dx / (0.8 * head_r)) ** 2 + ((y - head_cy) / head_r) ** 2) <= 1
    torso_top = head_cy + head_r
    below = body_h - 2 * head_r
    torso_bottom = torso_top + person.torso * below
    t = np.clip((y - torso_top) / max(torso_bottom - torso_top, 1), 0, 1)
    half = (person.shoulders * (1 - t) + person.hips * t) * w * squeeze * scale
    torso = (y >= torso_top) & (y < torso_bottom) & (np.abs(dx) <= half)
    leg_half = person.hips * w * squeeze * scale * 0.45
    gap = person.stance * w * squeeze * scale * 0.5
    legs = (y >= torso_bottom) & (y < top + body_h) & (np.abs(dx) >= gap) & (np.abs(dx) <= gap + leg_half)
    bag = np.zeros_like(head)
    if person.bag and not side_view:
        bx = person.bag * (person.shoulders * w * squeeze * scale + 0.06 * w)
        bag = (np.abs(dx - bx) <= 0.06 * w) & (y >= torso_top + 0.3 * (torso_bottom - torso_top)) & (y < torso_bottom)
    u = (dx / max(w * 0.3, 1)) * person.frequency
    v = ((y - torso_top) / max(h * 0.3, 1)) * person.frequency
    return head, torso, legs, bag, u, v


def _pattern(person: Person, u, v):
    if person.pattern == "hstripes":
        return (np.sin(v * math.pi) > 0).astype(np.float32)
    if person.pattern == "vstripes":
        return (np.sin(u * math.pi) > 0).astype(np.float32)
    if person.pattern == "checks":
        return ((np.sin(u * math.pi) > 0) ^ (np.sin(v * math.pi) > 0)).astype(np.float32)
    return np.zeros_like(u)


def render(person: Person, modality: int, cam: int, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """[h, w, 3] uint8 (visible) or [h, w] uint8 (infrared)."""
    head, torso, legs, bag, u, v = _masks(person, h, w, rng, cam)
    pattern = _pattern(person, u, v)
    y = np.linspace(0, 1, h, dtype=np.float32)[:, None]
    if modality == INFRARED:
        base = rng.uniform(0.05, 0.25) + 0.1 * y * rng.uniform(-1, 1)
        img = np.broadcast_to(base, (h, w)).astype(np.float32).copy()
        img[legs] = person.heat_pants * rng.uniform(0.9, 1.1)
        img[torso] = (person.heat_shirt * (0.85 + 0.3 * pattern) * rng.uniform(0.9, 1.1))[torso]
        img[bag] = 0.3
        img[head] = rng.uniform(0.9, 1.0)
        img = _blur(img, rng.integers(1, 3)) + rng.normal(0, 0.04, img.shape)
        return (np.clip(img, 0, 1) * 255).astype(np.uint8)
    light = np.array([1.0, 1.0, 1.0]) * rng.uniform(0.6, 1.2) + np.array([0.15, 0.0, -0.15]) * ((cam % 3) - 1)
    background = rng.uniform(0.6, 0.85) + rng.uniform(-0.06, 0.06, 3)
    img = np.broadcast_to(background + 0.15 * (y[..., None] - 0.5), (h, w, 3)).astype(np.float32).copy()
    shirt = np.array(person.shirt, np.float32)
    img[legs] = person.pants
    img[torso] = (shirt * (1 - 0.5 * pattern[..., None]) + 0.5 * pattern[..., None] * (0.6 - shirt).clip(0))[torso]
    img[bag] = (0.2, 0.15, 0.1)
    img[head] = person.skin
    img = img * light + rng.normal(0, 0.03, img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def _blur(img: np.ndarray, radius: int) -> np.ndarray:
    out = img.copy()
    for axis in (0, 1):
        acc = np.zeros_like(out)
        for k in range(-radius, radius + 1):
            acc += np.roll(out, k, axis=axis)
        out = acc / (2 * radius + 1)
    return out


def _save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if array.ndim == 2 and path.suffix == ".jpg":
        array = np.repeat(array[..., None], 3, axis=2)  # SYSU stores infrared as three equal channels
    image = Image.fromarray(array)
    image.save(path, quality=95) if path.suffix == ".jpg" else image.save(path)


def write_sysu(out: str | Path, ids: int = 24, images: int = 3, height: int = 128, width: int = 64, seed: int = 0,
               test_fraction: float = 0.5) -> Path:
    """SYSU-MM01 layout: every identity in the six cameras with ``images`` images each; the last
    ``test_fraction`` of the identities are test ids, one train id in ten is a val id."""
    out = Path(out)
    pids = list(range(1, ids + 1))
    n_test = max(2, int(round(ids * test_fraction)))
    test, trainval = pids[-n_test:], pids[:-n_test]
    val = trainval[::10][: max(0, len(trainval) // 10)]
    train = [p for p in trainval if p not in val]
    for pid in pids:
        person = draw_person(seed, pid)
        for cam in CAMERAS:
            modality = INFRARED if cam in INFRARED_CAMS else 0
            for idx in range(1, images + 1):
                rng = np.random.default_rng([seed, pid, cam, idx])
                _save(render(person, modality, cam, height, width, rng), out / f"cam{cam}" / f"{pid:04d}" / f"{idx:04d}.jpg")
    (out / "exp").mkdir(parents=True, exist_ok=True)
    for name, group in (("train_id.txt", train), ("val_id.txt", val), ("test_id.txt", test)):
        (out / "exp" / name).write_text(",".join(str(p) for p in group) + "\n")
    return out


def write_regdb(out: str | Path, ids: int = 24, images: int = 4, height: int = 128, width: int = 64, seed: int = 0,
                trials: int = 10) -> Path:
    """RegDB layout: ``images`` visible and thermal images per identity and trial lists 1..trials, each
    a seeded half / half split of the identities, labels 0..K-1 within each list."""
    out = Path(out)
    files = {}
    for pid in range(1, ids + 1):
        person = draw_person(seed, pid)
        for modality, folder, tag in ((0, "Visible", "v"), (INFRARED, "Thermal", "t")):
            for idx in range(1, images + 1):
                rng = np.random.default_rng([seed, pid, 10 + modality, idx])
                rel = Path(folder) / str(pid) / f"person_{tag}_{pid:04d}_{idx}.bmp"
                _save(render(person, modality, 1 + modality, height, width, rng), out / rel)
                files.setdefault((pid, folder), []).append(rel)
    (out / "idx").mkdir(parents=True, exist_ok=True)
    for trial in range(1, trials + 1):
        order = np.random.default_rng([seed, 1000 + trial]).permutation(np.arange(1, ids + 1))
        half = len(order) // 2
        for part, group in (("train", sorted(order[:half])), ("test", sorted(order[half:]))):
            for folder, name in (("Visible", "visible"), ("Thermal", "thermal")):
                lines = [f"{rel.as_posix()} {label}" for label, pid in enumerate(group) for rel in files[(int(pid), folder)]]
                (out / "idx" / f"{part}_{name}_{trial}.txt").write_text("\n".join(lines) + "\n")
    return out
