"""RegDB (PROTOCOLS.md): Visible/<pid>/*.bmp, Thermal/<pid>/*.bmp and the trial lists
idx/{train,test}_{visible,thermal}_{1..10}.txt, each line "relative/path label".

Trial k trains on its train lists (206 identities) and tests on its test lists; two directions,
visible -> thermal and thermal -> visible. One camera per modality: visible is camera 1, thermal 2.
"""
from __future__ import annotations

from pathlib import Path

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


def check(root: str | Path, trials=TRIALS) -> list[str]:
    """Problems found in a RegDB folder, one line each (empty when it is complete)."""
    root = Path(root)
    problems = [f"missing folder {root / name}" for name in ("Visible", "Thermal", "idx") if not (root / name).is_dir()]
    for trial in trials:
        for part in ("train", "test"):
            for modality in ("visible", "thermal"):
                try:
                    records = read_list(root, part, modality, trial)
                except (FileNotFoundError, ValueError) as exc:
                    problems.append(str(exc))
                    continue
                problems += [f"{list_path(root, part, modality, trial)}: listed file missing: {r.path}"
                             for r in records if not Path(r.path).is_file()]
    return problems


def summary(root: str | Path, trial: int = 1) -> str:
    split = load(root, trial)
    return (f"RegDB at {root}, trial {trial}: train {len({r.pid for r in split.train})} ids, {len(split.train)} images; "
            f"test {len(split.query)} visible / {len(split.gallery)} thermal images")
