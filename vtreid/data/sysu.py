"""SYSU-MM01 (PROTOCOLS.md): cam1..cam6/<pid:04d>/<idx:04d>.jpg, exp/{train,val,test}_id.txt.

Visible cameras 1, 2, 4, 5; infrared 3, 6 (cam1, cam2, cam3 indoor). Some copies nest the cameras under
ori_data/; both are accepted. Training uses train + val identities (395 in the release).
"""
from __future__ import annotations

from pathlib import Path

from . import verify
from .records import INFRARED, VISIBLE, Record, Split, relabel

VISIBLE_CAMS = (1, 2, 4, 5)
INFRARED_CAMS = (3, 6)
INDOOR_VISIBLE_CAMS = (1, 2)
CAMERAS = (1, 2, 3, 4, 5, 6)


def modality_of(cam: int) -> int:
    return INFRARED if cam in INFRARED_CAMS else VISIBLE


def camera_root(root: str | Path) -> Path:
    """The folder holding cam1..cam6: root itself or root/ori_data."""
    root = Path(root)
    for candidate in (root, root / "ori_data"):
        if any((candidate / f"cam{c}").is_dir() for c in CAMERAS):
            return candidate
    raise FileNotFoundError(f"{root}: no cam1..cam6 folders (nor under {root / 'ori_data'}); is this SYSU-MM01?")


def rand_perm_path(root: str | Path) -> Path:
    """Where the official release keeps its gallery permutations (it may be absent; PROTOCOLS.md)."""
    return Path(root) / "exp" / "rand_perm_cam.mat"


def read_ids(path: Path) -> list[int]:
    """An exp/*_id.txt file: comma-separated identity numbers on one line."""
    if not path.is_file():
        raise FileNotFoundError(f"SYSU-MM01 id list not found: {path}")
    text = path.read_text().strip()
    try:
        return [int(tok) for tok in text.replace("\n", ",").split(",") if tok.strip()]
    except ValueError as exc:
        raise ValueError(f"{path}: expected comma-separated identity numbers ({exc})") from exc


def images_of(cams: Path, pid: int, cam: int) -> list[Path]:
    folder = cams / f"cam{cam}" / f"{pid:04d}"
    return sorted(folder.glob("*.jpg")) if folder.is_dir() else []


def records_for(root: str | Path, ids: list[int], cams=CAMERAS) -> list[Record]:
    base = camera_root(root)
    return [Record(str(path), pid, pid, cam, modality_of(cam))
            for pid in ids for cam in cams for path in images_of(base, pid, cam)]


def load(root: str | Path, train_ids: str = "trainval") -> Split:
    """train (train + val ids, labels 0..K-1), query (every infrared image of the test ids) and gallery
    candidates (every visible image of the test ids; eval/ picks each trial's gallery from them).
    train_ids="train" trains on train_id.txt alone (296 identities: expAT keeps val for validation)."""
    if train_ids not in ("trainval", "train"):
        raise ValueError(f"train_ids must be 'trainval' or 'train', got {train_ids!r}")
    exp = Path(root) / "exp"
    train_ids = read_ids(exp / "train_id.txt") + (read_ids(exp / "val_id.txt") if train_ids == "trainval" else [])
    test_ids = read_ids(exp / "test_id.txt")
    return Split(relabel(records_for(root, train_ids)), records_for(root, test_ids, INFRARED_CAMS),
                 records_for(root, test_ids, VISIBLE_CAMS))


def check(root: str | Path, *, decode: bool = True, workers: int | None = None, progress=None,
          reuse_verified: bool = False, share: verify.WorkShare | None = None) -> list[str]:
    """Problems found in a SYSU-MM01 folder, one line each (empty when it is complete): missing folders
    and id lists, identities of a list without a visible or an infrared image, empty identity folders,
    and (``decode``) every image that does not decode, in a pool of ``workers`` threads reporting
    ``progress(done, total)``; ``reuse_verified``: not again for a listing verified before; ``share``: this
    rank's part of the decoding (see vtreid.data.verify)."""
    root = Path(root)
    if not root.is_dir():
        return [f"SYSU-MM01 root {root} does not exist" if not root.exists() else f"{root} is not a folder"]
    problems = []
    try:
        cams = camera_root(root)
    except FileNotFoundError as exc:
        return [str(exc)]
    for c in CAMERAS:
        if not (cams / f"cam{c}").is_dir():
            problems.append(f"missing camera folder {cams / f'cam{c}'}")
    lists = {}
    for name in ("train_id.txt", "val_id.txt", "test_id.txt"):
        try:
            lists[name] = read_ids(root / "exp" / name)
        except (FileNotFoundError, ValueError) as exc:
            problems.append(str(exc))
    for name, ids in lists.items():
        for pid in ids:
            found = {c: len(images_of(cams, pid, c)) for c in CAMERAS}
            if not any(found[c] for c in VISIBLE_CAMS):
                problems.append(f"identity {pid} ({name}) has no visible image under {cams}/cam{{1,2,4,5}}/{pid:04d}")
            if not any(found[c] for c in INFRARED_CAMS):
                problems.append(f"identity {pid} ({name}) has no infrared image under {cams}/cam{{3,6}}/{pid:04d}")
    folders = sorted(p for c in CAMERAS for p in (cams / f"cam{c}").glob("*") if p.is_dir())
    problems += verify.empty_folders(folders, "*.jpg")
    if decode:
        images = [path for folder in folders for path in sorted(folder.glob("*.jpg"))]
        problems += verify.decode_problems(images, workers=workers, progress=progress,
                                           reuse_verified=reuse_verified, share=share)
    return problems


def summary(root: str | Path) -> str:
    split = load(root)
    train_ids = {r.pid for r in split.train}
    vis = sum(r.modality == VISIBLE for r in split.train)
    return (f"SYSU-MM01 at {root}: train {len(train_ids)} ids, {vis} visible / {len(split.train) - vis} infrared images; "
            f"test {len({r.pid for r in split.query})} ids, {len(split.query)} query, "
            f"{len(split.gallery)} gallery candidates")
