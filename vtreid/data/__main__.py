"""python -m vtreid.data check|synth (see vtreid.data)."""
from __future__ import annotations

import argparse
import sys
import time

from . import regdb, synthetic, sysu
from .verify import PrintedProgress

CHECK = """\
Reports every problem of a dataset folder, one line each, and exits 1 if there is one: missing folders
and lists, identities without images in a modality the protocol needs, empty identity folders, and
every image that does not decode (all are decoded, in parallel, with progress on stderr). A complete
folder prints a summary and exits 0."""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vtreid.data")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="report every missing, empty or undecodable file of a dataset folder",
                           description=CHECK)
    check.add_argument("--dataset", choices=("sysu", "regdb"), required=True, help="which layout the folder holds")
    check.add_argument("--root", required=True, help="the dataset folder (SYSU-MM01/ or RegDB/)")
    check.add_argument("--workers", type=int, default=None,
                       help="threads decoding images (default: twice the CPU count, at most 16)")
    synth = sub.add_parser("synth", help="write a synthetic dataset in a real layout",
                           description="Writes procedurally drawn visible / infrared people in the SYSU-MM01 or RegDB "
                                       "layout, readable by the real readers. Write it outside the source tree, "
                                       "e.g. --out ~/data/SYSU-MM01-synth.")
    synth.add_argument("--layout", choices=("sysu", "regdb"), required=True, help="which dataset's layout")
    synth.add_argument("--out", required=True, help="folder to write (created)")
    synth.add_argument("--ids", type=int, default=24,
                       help="identities (default 24; sysu: half of them are test identities)")
    synth.add_argument("--images", type=int, default=None,
                       help="images per identity and camera (sysu, default 3) / per modality (regdb, default 4)")
    synth.add_argument("--height", type=int, default=128, help="image height in pixels (default 128)")
    synth.add_argument("--width", type=int, default=64, help="image width in pixels (default 64)")
    synth.add_argument("--seed", type=int, default=0, help="seed of the identities and images (default 0)")
    args = parser.parse_args(argv)

    if args.command == "synth":
        for name in ("ids", "height", "width") + (("images",) if args.images is not None else ()):
            if getattr(args, name) < 1:
                synth.error(f"--{name} must be at least 1, got {getattr(args, name)}")
        start = time.time()
        writer = synthetic.write_sysu if args.layout == "sysu" else synthetic.write_regdb
        images = args.images or (3 if args.layout == "sysu" else 4)
        try:
            out = writer(args.out, ids=args.ids, images=images, height=args.height, width=args.width, seed=args.seed)
        except OSError as exc:  # as the other tools report a file they cannot write: status 2
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"wrote a synthetic {args.layout} dataset to {out} in {time.time() - start:.1f}s")
        return 0
    if args.workers is not None and args.workers < 1:
        check.error(f"--workers must be at least 1, got {args.workers}")
    module = sysu if args.dataset == "sysu" else regdb
    problems = module.check(args.root, workers=args.workers, progress=PrintedProgress())
    for line in problems:
        print(f"problem: {line}")
    if problems:
        print(f"{len(problems)} problem(s) in {args.root}")
        return 1
    print(module.summary(args.root))
    return 0


if __name__ == "__main__":
    sys.exit(main())
