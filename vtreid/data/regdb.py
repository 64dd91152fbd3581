"""RegDB (PROTOCOLS.md): Visible/<pid>/*.bmp, Thermal/<pid>/*.bmp and the trial lists
idx/{train,test}_{visible,thermal}_{1..10}.txt, each line "relative/path label".

Trial k trains on its train lists (206 identities) and tests on its test lists; two directions,
visible -> thermal and thermal -> visible. One camera per modality: visible is camera 1, thermal 2.
"""
from __future__ import annotations

from pathlib import Path

from . import verify
from .records import INFRARED, VISIBLE, Record, Split, relabel

TRIALS = tuple(range(1, 11))
DIRECTIONS = ("visible_to_thermal", "thermal_to_visible")


def list_path(root: str | Path, part: str, modality: str, trial: int) -> Path:
    return Path(root) / "idx" / f"{part}_{modality}_{trial}.txt"


def read_list(root: str | Path, part: str, modality: str, trial: int) -> list[Record]:
    path = list_path(root, part, modality, trial)
    if not path.is_file():
        raise FileNotFoundError(f"RegDB list not found: {path}")
    mod = VISIBLE if modality == "visible" else INFRARED
    records = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
            raise ValueError(f"{path}:{n}: expected 'relative/path label', got {line!r}")
        label = int(fields[1])
        records.append(Record(str(Path(root) / fields[0]), label, label, 1 if mod == VISIBLE else 2, mod))
    return records


def load(root: str | Path, trial: int = 1, direction: str = "visible_to_thermal") -> Split:
    if trial not in TRIALS:
        raise ValueError(f"trial must be in 1..10, got {trial}")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    train = relabel(read_list(root, "train", "visible", trial) + read_list(root, "train", "thermal", trial))
    visible = read_list(root, "test", "visible", trial)
    thermal = read_list(root, "test", "thermal", trial)
    query, gallery = (visible, thermal) if direction == "visible_to_thermal" else (thermal, visible)
    return Split(train, query, gallery)


def check(root: str | Path, trials=TRIALS, *, decode: bool = True, workers: int | None = None,
          progress=None, reuse_verified: bool = False, share: verify.WorkShare | None = None) -> list[str]:
    """Problems found in a RegDB folder, one line each (empty when it is complete): missing folders and
    lists, malformed list lines, listed files that are missing (once per file), identities a list pair
    holds in one modality only, empty identity folders, and (``decode``) every listed image that does
    not decode, in a pool of ``workers`` threads reporting ``progress(done, total)``; ``reuse_verified``:
    not again for a listing verified before; ``share``: this rank's part of the decoding (vtreid.data.verify)."""
    root = Path(root)
    if not root.is_dir():
        return [f"RegDB root {root} does not exist" if not root.exists() else f"{root} is not a folder"]
    problems = [f"missing folder {root / name}" for name in ("Visible", "Thermal") if not (root / name).is_dir()]
    if not (root / "idx").is_dir():
        lists = "{train,test}_{visible,thermal}_{1..10}.txt"
        return problems + [f"missing folder {root / 'idx'} (the trial lists {lists})"]
    listed: dict[str, list[Path]] = {}
    for trial in trials:
        for part in ("train", "test"):
            labels = {}
            for modality in ("visible", "thermal"):
                try:
                    records = read_list(root, part, modality, trial)
                except (FileNotFoundError, ValueError) as exc:
                    problems.append(str(exc))
                    continue
                labels[modality] = {r.label for r in records}
                for r in records:
                    listed.setdefault(r.path, []).append(list_path(root, part, modality, trial))
            if len(labels) == 2:
                for have, lack in (("visible", "thermal"), ("thermal", "visible")):
                    alone = sorted(labels[have] - labels[lack])
                    if alone:
                        problems.append(f"{list_path(root, part, lack, trial)}: no {lack} image of label(s) {alone}, "
                                        f"which {list_path(root, part, have, trial).name} lists")
    present = []
    for path, lists in listed.items():
        if Path(path).is_file():
            present.append(path)
        else:
            problems.append(f"listed file missing: {path} (in {len(lists)} list(s), e.g. {lists[0]})")
    folders = sorted(p for name in ("Visible", "Thermal") for p in (root / name).glob("*") if p.is_dir())
    problems += verify.empty_folders(folders, "*.bmp")
    if decode:
        problems += verify.decode_problems(present, workers=workers, progress=progress,
                                           reuse_verified=reuse_verified, share=share)
    return problems


def summary(root: str | Path, trial: int = 1) -> str:
    split = load(root, trial)
    return (f"RegDB at {root}, trial {trial}: train {len({r.pid for r in split.train})} ids, {len(split.train)} images; "
            f"test {len(split.query)} visible / {len(split.gallery)} thermal images")
