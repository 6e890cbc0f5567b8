"""Lot-level zero-shot scoring on ELPV: the test split of each cell type taken as one lot, no references.

Every cell of the type's test split (seed 0; all defect probabilities, as a real lot) is scored against the
other cells of the lot (:mod:`adcopilot.model.mutual`); image AUROC of probability 1 against 0, as
``bench_elpv.py``. Also measured: the patch features averaged over a ``w x w`` window before scoring
(``--windows 1 3``: the patch values of each window size are averaged, MuSc's neighbourhood
aggregation), each image's score re-scored with its nearest images by global feature (``--rescore``:
``a * own + (1 - a) * mean of the n nearest``), and the lot's own threshold (``--mad-k``): the false
alarms and misses of median + k robust deviations on the whole split and on lots of its normal cells
with 5 % / 10 % of its defective cells drawn in (200 draws). Run:

    python benchmarks/bench_mutual.py [--closest 0.3] [--top-k 3] [--windows 1] [--rescore 50 0.7]
                                      [--mad-k 1.5 3] [--limit N]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from adcopilot import Copilot
from adcopilot.data.elpv import split
from adcopilot.eval.detection import auroc
from adcopilot.imaging import load_image, to_float_array
from adcopilot.model.detector import to_batch
from adcopilot.model.mutual import image_scores, lot_features, lot_threshold, mutual_patch_scores


def aggregated(features: torch.Tensor, window: int) -> torch.Tensor:
    """(N, P, C) unit-norm features on a square grid -> the same, averaged over ``window`` x ``window``."""
    if window == 1:
        return features
    n, p, c = features.shape
    side = int(round(p**0.5))
    grid = features.transpose(1, 2).reshape(n, c, side, side)
    grid = F.avg_pool2d(grid, window, 1, window // 2, count_include_pad=False)
    return F.normalize(grid, dim=1).flatten(2).transpose(1, 2).contiguous()


def rescored(scores: np.ndarray, features: torch.Tensor, nearest: int, own: float) -> np.ndarray:
    """Each image's score blended with the mean score of its ``nearest`` images by global feature."""
    g = F.normalize(features.mean(1), dim=1).numpy()
    sim = g @ g.T
    np.fill_diagonal(sim, -np.inf)
    idx = np.argsort(-sim, axis=1)[:, :nearest]
    return own * scores + (1 - own) * scores[idx].mean(1)


def threshold_report(kind: str, scores: np.ndarray, prob: np.ndarray, k: float) -> None:
    normal, bad = scores[prob == 0.0], scores[prob == 1.0]
    t = lot_threshold(scores, k)
    line = f"ELPV {kind}: lot threshold k={k}: whole split FA {np.mean(normal >= t):.3f} miss {np.mean(bad < t):.3f}"
    rng = np.random.default_rng(0)
    for share in (0.05, 0.10):
        fa, miss = [], []
        for _ in range(200):
            drawn = rng.choice(bad, int(round(share * len(normal) / (1 - share))), replace=False)
            t = lot_threshold(np.concatenate([normal, drawn]), k)
            fa.append(np.mean(normal >= t))
            miss.append(np.mean(drawn < t))
        line += f"; {share:.0%} defective: FA {np.mean(fa):.3f} miss {np.mean(miss):.3f}"
    print(line, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--closest", type=float, nargs="+", default=[0.3], help="share of the other images kept per patch")
    ap.add_argument("--top-k", type=int, default=3)
    ap.add_argument("--windows", type=int, nargs="+", default=[1], help="feature aggregation windows (odd)")
    ap.add_argument("--rescore", type=float, nargs=2, default=None, metavar=("NEAREST", "OWN"))
    ap.add_argument("--mad-k", type=float, nargs="*", default=[], help="report the lot threshold at these k")
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
        prob = np.array([c.probability for c in cells])
        keep = np.isin(prob, (0.0, 1.0))
        labels = (prob[keep] == 1.0).astype(int).tolist()
        for frac in args.closest:
            t2 = time.perf_counter()
            patches = []
            for w in args.windows:
                with tqdm(total=len(cells), desc=f"{kind} mutual {frac} window {w}") as bar:
                    patches.append(mutual_patch_scores(aggregated(features, w), frac, progress=bar.update))
            scores = image_scores(torch.stack(patches).mean(0), args.top_k).numpy()
            a = auroc(scores[keep], labels)
            print(f"ELPV {kind}: lot of {len(cells)} cells, closest {frac}, windows {args.windows}, top {args.top_k}: "
                  f"image AUROC {a:.4f} ({sum(labels)} defective / {len(labels) - sum(labels)} normal); features "
                  f"{t1 - t0:.0f} s, scoring {time.perf_counter() - t2:.0f} s", flush=True)
            if args.rescore:
                n, own = int(args.rescore[0]), args.rescore[1]
                print(f"ELPV {kind}: re-scored with the {n} nearest images ({own} own): image AUROC "
                      f"{auroc(rescored(scores, features, n, own)[keep], labels):.4f}", flush=True)
            for k in args.mad_k:
                threshold_report(kind, scores, prob, k)


if __name__ == "__main__":
    main()
