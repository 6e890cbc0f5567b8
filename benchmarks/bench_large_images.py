"""Inspecting large camera frames: where the time goes past the detector. Before: the JPEG decoded at full
size and the boxes found on the full-size map; after (the default): the JPEG decoded at the reduced scale the
model's input needs (``imaging.DRAFT``) and the boxes found on a map shrunk to ``BOX_WORK_PIXELS``.

An ELPV demo pair (a defective cell and a normal one) upscaled to a square of each ``--sides`` and saved as
JPEG (quality 90), inspected with the shipped model, one thread, the reference cached; the two ways
alternating, median of ``--rounds`` each, with the scores and the boxes' largest coordinate difference.

    OMP_NUM_THREADS=1 python benchmarks/bench_large_images.py --sides 2048 4500 8000 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from adcopilot import Copilot
from adcopilot import api as api_module
from adcopilot.data.elpv import split
from adcopilot.model import boxes as boxes_module


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sides", type=int, nargs="+", default=[2048, 4500, 8000])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cells = split(seed=0)["test"]
    normal = next(c for c in cells if c.kind == "mono" and c.probability == 0.0)
    defective = next(c for c in cells if c.kind == "mono" and c.probability == 1.0)
    cp = Copilot.load("default")
    cap, draft = boxes_module.BOX_MAX_PIXELS, api_module.DRAFT
    with tempfile.TemporaryDirectory() as tmp:
        for side in args.sides:
            q, r = Path(tmp) / f"q{side}.jpg", Path(tmp) / f"r{side}.jpg"
            for src, dst in ((defective.path, q), (normal.path, r)):
                Image.open(src).convert("RGB").resize((side, side), Image.BILINEAR).save(dst, quality=90)
            cp.inspect(q, [r])  # the reference encoded once
            times: dict[str, list[float]] = {"full": [], "capped": []}
            found, scores = {}, {}
            for _ in range(args.rounds):
                for mode in ("full", "capped"):
                    boxes_module.BOX_MAX_PIXELS = 10**12 if mode == "full" else cap
                    api_module.DRAFT = 10**6 if mode == "full" else draft
                    cp.inspect(q, [r])  # the reference as this way decodes it, cached
                    t = time.perf_counter()
                    res = cp.inspect(q, [r])
                    times[mode].append((time.perf_counter() - t) * 1e3)
                    found[mode], scores[mode] = [b.bbox_2d for b in res.boxes], res.score
            boxes_module.BOX_MAX_PIXELS, api_module.DRAFT = cap, draft
            diff = (max(int(np.abs(np.array(a) - np.array(b)).max()) for a, b in zip(found["full"], found["capped"], strict=True))
                    if len(found["full"]) == len(found["capped"]) and found["full"] else None)
            full, capped = statistics.median(times["full"]), statistics.median(times["capped"])
            print(f"{side} x {side} ({side * side / 1e6:.1f} MP): inspect {full:.0f} ms before, {capped:.0f} ms after "
                  f"({full / capped:.2f}x); score {scores['full']:.4f} / {scores['capped']:.4f}; boxes "
                  f"{len(found['full'])} / {len(found['capped'])}, largest coordinate difference {diff} px", flush=True)


if __name__ == "__main__":
    main()
