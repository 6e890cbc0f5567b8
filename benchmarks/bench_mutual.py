"""Lot-level zero-shot scoring on ELPV: the test split of each cell type taken as one lot, no references.

Every cell of the type's test split (seed 0; all defect probabilities, as a real lot) is scored against the
other cells of the lot (:mod:`adcopilot.model.mutual`); image AUROC of probability 1 against 0, as
``bench_elpv.py``. Run:

    python benchmarks/bench_mutual.py [--closest 0.3] [--top-k 3] [--limit N]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from tqdm import tqdm

from adcopilot import Copilot
from adcopilot.data.elpv import split
from adcopilot.eval.detection import auroc
from adcopilot.imaging import load_image, to_float_array
from adcopilot.model.detector import to_batch
from adcopilot.model.mutual import image_scores, lot_features, mutual_patch_scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--closest", type=float, nargs="+", default=[0.3], help="share of the other images kept per patch")
    ap.add_argument("--top-k", type=int, default=3)
    ap.add_argument("--limit", type=int, default=None, help="a seeded subset of each lot, for quick runs")
    ap.add_argument("--kinds", nargs="+", default=["mono", "poly"])
    args = ap.parse_args()
    torch.set_num_threads(1)
    cp = Copilot.load()
    tower, size = cp.detector.fused_tower, cp.detector.image_size
    parts = split(seed=0)
    for kind in args.kinds:
        cells = [c for c in parts["test"] if c.kind == kind]
        if args.limit:
            rng = np.random.default_rng(0)
            cells = [cells[i] for i in sorted(rng.permutation(len(cells))[: args.limit])]
        t0 = time.perf_counter()
        feats = []
        for start in tqdm(range(0, len(cells), 16), desc=f"{kind} features"):
            batch = [to_float_array(load_image(c.path), size) for c in cells[start : start + 16]]
            feats.append(lot_features(tower, to_batch(batch)))
        features = torch.cat(feats)  # (N, P, C)
        t1 = time.perf_counter()
        keep = [i for i, c in enumerate(cells) if c.probability in (0.0, 1.0)]
        labels = [int(cells[i].probability == 1.0) for i in keep]
        for frac in args.closest:
            t2 = time.perf_counter()
            with tqdm(total=len(cells), desc=f"{kind} mutual {frac}") as bar:
                patches = mutual_patch_scores(features, frac, progress=bar.update)
            scores = image_scores(patches, args.top_k).numpy()
            a = auroc(scores[keep], labels)
            print(f"ELPV {kind}: lot of {len(cells)} cells, closest {frac}, top {args.top_k}: image AUROC "
                  f"{a:.4f} ({sum(labels)} defective / {len(labels) - sum(labels)} normal); features "
                  f"{t1 - t0:.0f} s, scoring {time.perf_counter() - t2:.0f} s", flush=True)


if __name__ == "__main__":
    main()
