"""Lot-level zero-shot on ELPV with PaDiM fitted on the lot itself, beside and fused with mutual scoring.

ELPV cells are aligned, so a lot without references can also be modelled per position: PaDiM's Gaussian
per position (:mod:`adcopilot.model.padim`) fitted on *every* cell of the lot, defective ones included, then
(``trim`` q) fitted again without the q share of cells it scored highest. Each cell is scored by PaDiM's
own image score (the maximum of its blurred map) and by the one-pass mutual score (``MutualRecipe()``'s first pass); the
fusion adds the two scores after a robust standardisation on the lot (median and 1.4826 x MAD: no labels),
with PaDiM at weight w. Image AUROC of probability 1 against 0, each cell type's split one lot. Run:

    python benchmarks/lot_padim.py --split train     # choosing
    python benchmarks/lot_padim.py --split test      # measuring
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from tqdm import tqdm

from adcopilot import Copilot
from adcopilot.data.elpv import split
from adcopilot.eval.detection import auroc
from adcopilot.imaging import load_image, to_float_array
from adcopilot.model.detector import to_batch
from adcopilot.model.mutual import LotViews, MutualRecipe, lot_features, lot_image_scores, mutual_patch_scores
from adcopilot.model.padim import PadimAccumulator, PadimStats, channel_subset

BATCH = 32


def robust_z(x: np.ndarray) -> np.ndarray:
    med = np.median(x)
    return (x - med) / (1.4826 * np.median(np.abs(x - med)))


def area(scores: np.ndarray, prob: np.ndarray) -> str:
    """Image AUROC of probability 1 against 0 (cells of other probabilities left out)."""
    keep = np.isin(prob, (0.0, 1.0))
    return f"{auroc(scores[keep], (prob[keep] == 1.0).astype(int).tolist()):.4f}"


def padim_scores(scales: dict[str, torch.Tensor], rows: list[int]) -> np.ndarray:
    """Fit on the cells ``rows`` of the lot, score every cell: (N,) PaDiM image scores."""
    acc = PadimAccumulator(channel_subset(scales["s8"].shape[1] + scales["s16"].shape[1]))
    for start in range(0, len(rows), BATCH):
        r = rows[start : start + BATCH]
        acc.add({k: v[r].float() for k, v in scales.items()})
    stats: PadimStats = acc.finish()
    n = len(scales["s8"])
    return torch.cat([stats.anomalib_map({k: v[s : s + BATCH].float() for k, v in scales.items()}, 256)[0]
                      for s in range(0, n, BATCH)]).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", default="test", choices=("train", "test"))
    ap.add_argument("--kinds", nargs="+", default=["mono", "poly"])
    ap.add_argument("--trims", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.3, 0.5])
    ap.add_argument("--weights", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    args = ap.parse_args()
    torch.set_num_threads(1)
    cp = Copilot.load()
    tower, size = cp.detector.fused_tower, cp.detector.image_size
    for kind in args.kinds:
        cells = [c for c in split(seed=0)[args.split] if c.kind == kind]
        scales: dict[str, list[torch.Tensor]] = {"s8": [], "s16": []}
        views = []
        with torch.inference_mode():
            for start in tqdm(range(0, len(cells), BATCH), desc=f"{kind} features"):
                x = to_batch([to_float_array(load_image(c.path), size) for c in cells[start : start + BATCH]])
                for k, v in tower.patch_features(x).items():
                    scales[k].append(v.half())  # raw stage outputs, kept in half precision for the lot
                views.append(lot_features(tower, x))
        raw = {k: torch.cat(v) for k, v in scales.items()}
        lot = LotViews.cat(views)
        bar = tqdm(total=len(cells), desc=f"{kind} mutual")
        mutual = lot_image_scores(mutual_patch_scores(lot, progress=bar.update), lot.global_features,
                                  MutualRecipe()).numpy()
        bar.close()
        prob = np.array([c.probability for c in cells])
        print(f"ELPV {kind} {args.split} ({len(cells)} cells): mutual {area(mutual, prob)}", flush=True)
        first = padim_scores(raw, list(range(len(cells))))
        for q in args.trims:
            pd = first if q == 0 else padim_scores(raw, list(np.argsort(first)[: int(len(cells) * (1 - q))]))
            fused = "  ".join(f"w {w}: {area((1 - w) * robust_z(mutual) + w * robust_z(pd), prob)}" for w in args.weights)
            print(f"  lot PaDiM, trim {q}: {area(pd, prob)}  fused with mutual  {fused}", flush=True)


if __name__ == "__main__":
    main()
