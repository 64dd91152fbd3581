"""python -m vtreid.data check|synth (see vtreid.data)."""
from __future__ import annotations

import argparse
import sys
import time

from . import regdb, synthetic, sysu


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vtreid.data")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="report what a dataset folder holds and every missing or malformed file")
    check.add_argument("--dataset", choices=("sysu", "regdb"), required=True)
    check.add_argument("--root", required=True)
    synth = sub.add_parser("synth", help="write a synthetic dataset in a real layout")
    synth.add_argument("--layout", choices=("sysu", "regdb"), required=True)
    synth.add_argument("--out", required=True)
    synth.add_argument("--ids", type=int, default=24)
    synth.add_argument("--images", type=int, default=None, help="per camera (sysu, default 3) / per modality (regdb, 4)")
    synth.add_argument("--height", type=int, default=128)
    synth.add_argument("--width", type=int, default=64)
    synth.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if args.command == "synth":
        start = time.time()
        writer = synthetic.write_sysu if args.layout == "sysu" else synthetic.write_regdb
        images = args.images or (3 if args.layout == "sysu" else 4)
        out = writer(args.out, ids=args.ids, images=images, height=args.height, width=args.width, seed=args.seed)
        print(f"wrote a synthetic {args.layout} dataset to {out} in {time.time() - start:.1f}s")
        return 0
    module = sysu if args.dataset == "sysu" else regdb
    problems = module.check(args.root)
    for line in problems:
        print(f"problem: {line}")
    if problems:
        print(f"{len(problems)} problem(s) in {args.root}")
        return 1
    print(module.summary(args.root))
    return 0


if __name__ == "__main__":
    sys.exit(main())
