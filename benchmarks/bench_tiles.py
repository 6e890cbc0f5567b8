"""Elongated images (a strip of cells, a line-scan frame): squeezed whole into the model's square, or cut
into square tiles? Measured, not built (``benchmarks/RESULTS.md``, "Elongated images").

A strip of ``--cells`` ELPV test cells of one type side by side (a row of a module in an EL image): normal
strips of normal cells, defective strips with one defective cell at a random place, each inspected against
one reference strip of other normal cells. Five scores, all from the shipped model in one run (one thread):

- ``whole``: the strip as the product inspects it (resized to the model's square);
- ``same``: overlapping square tiles (side = the strip's height, steps of at most 0.8 of it), each against
  the reference's tile at the same place; the strip's score is the highest tile's;
- ``near``: each tile against the reference's tiles within two places of it (up to five references),
  each tile's score taken above the model's threshold for that many references, the highest kept;
- ``every``: each tile against every tile of the reference strip (a periodic product only), likewise;
- ``cell``: the defect's place alone, the query's cell against the reference's cell there (the model's
  figure for one cell, the ceiling of what a strip can give).

Image AUROC, and verdicts at the model's thresholds (false alarms on normal strips, defective strips caught).

    OMP_NUM_THREADS=1 python benchmarks/bench_tiles.py --kinds mono poly --strips 15 --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from adcopilot import Copilot
from adcopilot.data.elpv import split

MODES = ("whole", "same", "near", "every", "cell")


def tile_windows(width: int, height: int, step: float = 0.8) -> list[tuple[int, int, int, int]]:
    """Square windows of side ``height`` along a wide image, evenly spaced, at most ``step`` x side apart."""
    n = math.ceil((width - height) / (step * height)) + 1
    starts = [round(i * (width - height) / (n - 1)) for i in range(n)]
    return [(s, 0, s + height, height) for s in starts]


def _strip(cells: list) -> np.ndarray:
    return np.concatenate([np.array(Image.open(c.path).convert("L")) for c in cells], axis=1)


def _margin(cp: Copilot, query: np.ndarray, refs: list[np.ndarray]) -> tuple[float, float]:
    """(score above the threshold for this many references, milliseconds)."""
    t = time.perf_counter()
    r = cp.inspect(query, refs)
    return r.score - r.threshold, (time.perf_counter() - t) * 1e3


def _run(cp: Copilot, kind: str, n_strips: int, n_cells: int, seed: int) -> dict:
    test = split(0)["test"]
    good = [c for c in test if c.kind == kind and c.probability == 0]
    bad = [c for c in test if c.kind == kind and c.probability == 1]
    rng = random.Random(seed)
    ref_cells = rng.sample(good, n_cells)
    ref = _strip(ref_cells)
    pool = [c for c in good if c not in ref_cells]
    windows = tile_windows(ref.shape[1], ref.shape[0])
    rt = [np.ascontiguousarray(ref[y0:y1, x0:x1]) for x0, y0, x1, y1 in windows]
    rows = []
    for i in range(2 * n_strips):
        cells = rng.sample(pool, n_cells)
        place = rng.randrange(n_cells)
        defective = i >= n_strips
        if defective:
            cells[place] = rng.choice(bad)
        strip = _strip(cells)
        side = strip.shape[0]
        qt = [np.ascontiguousarray(strip[y0:y1, x0:x1]) for x0, y0, x1, y1 in windows]
        row: dict = {"defective": defective}
        row["whole"], row["whole_ms"] = _margin(cp, strip, [ref])
        for mode, refs_of in (("same", lambda k: [rt[k]]),
                              ("near", lambda k: rt[max(0, k - 2):k + 3]),
                              ("every", lambda k: rt)):
            parts = [_margin(cp, q, refs_of(k)) for k, q in enumerate(qt)]
            row[mode], row[f"{mode}_ms"] = max(p[0] for p in parts), sum(p[1] for p in parts)
        cell = slice(place * side, (place + 1) * side)
        row["cell"], row["cell_ms"] = _margin(cp, np.ascontiguousarray(strip[:, cell]), [np.ascontiguousarray(ref[:, cell])])
        rows.append(row)
    y = [r["defective"] for r in rows]
    out = {"kind": kind, "seed": seed, "strips": n_strips, "cells": n_cells, "tiles": len(windows)}
    for mode in MODES:
        out[mode] = {
            "auroc": roc_auc_score(y, [r[mode] for r in rows]),
            "false_alarms": sum(r[mode] >= 0 for r in rows if not r["defective"]) / n_strips,
            "caught": sum(r[mode] >= 0 for r in rows if r["defective"]) / n_strips,
            "ms_median": statistics.median(r[f"{mode}_ms"] for r in rows),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kinds", nargs="+", default=["mono", "poly"])
    ap.add_argument("--strips", type=int, default=15, help="normal and defective strips each, per draw")
    ap.add_argument("--cells", type=int, default=6, help="cells per strip")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--model", default="default")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/tiles.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    cp = Copilot.load(args.model)
    runs = []
    for kind in args.kinds:
        for seed in args.seeds:
            r = _run(cp, kind, args.strips, args.cells, seed)
            runs.append(r)
            print(f"{kind} seed {seed} ({r['tiles']} tiles): " + " | ".join(
                f"{m} {r[m]['auroc']:.3f} ({100 * r[m]['false_alarms']:.0f} % / {100 * r[m]['caught']:.0f} %, "
                f"{r[m]['ms_median']:.0f} ms)" for m in MODES), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
