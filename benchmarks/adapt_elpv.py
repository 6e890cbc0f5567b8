"""Make the ``nano-elpv`` model: adapt the default model to ELPV solar cells, then measure it.

The ELPV images are CC BY-NC-SA 4.0, so the adapted model is non-commercial and is never
committed; this script is the command that makes it. It writes the ELPV *training* split (seed 0)
as folders under ``$ADCOPILOT_HOME/data/elpv-train/{good,defective}/<type>`` (symlinks to the
installed package's files), runs ``adcopilot adapt`` on them, and the test split is left untouched.
``adapt`` holds a fifth of that training split out of fine-tuning (its validation, ``validation.json``).

    python benchmarks/adapt_elpv.py --out $ADCOPILOT_HOME/models/nano-elpv --steps 1000 --size 256
    python benchmarks/bench_elpv.py --model $ADCOPILOT_HOME/models/nano-elpv --shots 1 5 --seeds 0 1
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from adcopilot import assets
from adcopilot.cli import main as cli_main
from adcopilot.data.elpv import LICENCE, split


def export_train_folders() -> tuple[Path, Path]:
    root = assets.home() / "data" / "elpv-train"
    good, bad = root / "good", root / "defective"
    for cell in split(seed=0)["train"]:
        if cell.probability == 0.0:
            dst = good / cell.kind / cell.name
        elif cell.probability == 1.0:
            dst = bad / cell.kind / cell.name
        else:
            continue  # uncertain labels (1/3, 2/3) are not used
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.exists():
            os.symlink(cell.path, dst)
    return good, bad


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(assets.home() / "models" / "nano-elpv"))
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--size", type=int, default=None, help="training image size (adapt --size; default its own)")
    ap.add_argument("--memory-patches", type=int, default=None, help="adapt --memory-patches (0: no memory)")
    ap.add_argument("--memory-weight", default=None, help="adapt --memory-weight (a number in 0-1, or auto)")
    ap.add_argument("--no-defects", action="store_true", help="adapt from good images only")
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args()
    good, bad = export_train_folders()
    argv = ["adapt", "--normals", str(good), "--out", args.out, "--steps", str(args.steps),
            "--licence", f"ELPV dataset images: {LICENCE} (non-commercial); this model inherits it"]
    if args.size:
        argv += ["--size", str(args.size)]
    if args.memory_patches is not None:
        argv += ["--memory-patches", str(args.memory_patches)]
    if args.memory_weight is not None:
        argv += ["--memory-weight", args.memory_weight]
    if not args.no_defects:
        argv += ["--defects", str(bad)]
    if args.resume:
        argv.append("--resume")
    cli_main(argv)


if __name__ == "__main__":
    main()
