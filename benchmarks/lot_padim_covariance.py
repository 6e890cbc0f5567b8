"""Lot-level zero-shot on ELPV: the lot PaDiM's covariance estimate and image pooling, other ways.

``batch --mutual --aligned`` fits PaDiM's Gaussian per position on the lot itself (each position's features averaged
over its 3 x 3 neighbours, two fits, the second without the half the first scored highest; anomalib's covariance with
0.01 added to its diagonal; the image score the map's maximum). A lot holds a few hundred images for 100 feature
dimensions per position, so the covariance is noisy; here it is estimated otherwise: shrunk towards its own mean
variance (Ledoit and Wolf's weight per position, or a fixed one), with a larger or smaller ridge; and the image score
taken as the mean of the map's top ``k`` pixels instead of its maximum. Printed: the lot PaDiM alone and joined with
the mutual score as the product joins them without lot references (image AUROC of probability 1 against 0, each
cell type's split one lot; the caches of ``lot_self_refs.py`` and ``lot_three.py --stretch``). Run:

    python benchmarks/lot_padim_covariance.py --split train    # choosing
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from lot_padim import area, robust_z
from lot_self_refs import mutual_passes
from lot_three import raw_scales

from adcopilot.data.elpv import split
from adcopilot.line.lot import LOT_PADIM_WEIGHT
from adcopilot.model.lot_padim import NEIGHBOURHOOD, TRIM
from adcopilot.model.padim import (
    SIGMA,
    STABILISER,
    channel_subset,
    embedding,
    gaussian_blur,
    neighbourhood_means,
)

#: (name, covariance rule, its parameter, image pooling: "max" or the number of top pixels averaged)
VARIANTS = (
    ("the product (ridge 0.01, maximum)", "ridge", 0.01, "max"),
    ("ridge 0.001", "ridge", 0.001, "max"),
    ("ridge 0.1", "ridge", 0.1, "max"),
    ("ridge 1", "ridge", 1.0, "max"),
    ("Ledoit-Wolf shrinkage", "ledoit-wolf", 0.0, "max"),
    ("shrinkage 0.1", "shrink", 0.1, "max"),
    ("shrinkage 0.3", "shrink", 0.3, "max"),
    ("top 10 pixels", "ridge", 0.01, 10),
    ("top 100 pixels", "ridge", 0.01, 100),
    ("top 1000 pixels", "ridge", 0.01, 1000),
)


def embeddings(raw: dict[str, torch.Tensor]) -> torch.Tensor:
    """The lot's raw stage outputs -> (N, 100, h, w) float64 PaDiM embeddings of 3 x 3 means."""
    idx = channel_subset(raw["s8"].shape[1] + raw["s16"].shape[1])
    out = []
    for s in range(0, len(raw["s8"]), 64):
        out.append(embedding(neighbourhood_means({k: v[s : s + 64] for k, v in raw.items()}, NEIGHBOURHOOD), idx).double())
    return torch.cat(out)


def fit(emb: torch.Tensor, rows: list[int], rule: str, value: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Means (P, d) and Cholesky factors (P, d, d) of the inverse covariances of the images ``rows``."""
    x = emb[rows]
    n, d, h, w = x.shape
    x = x.reshape(n, d, h * w).permute(2, 0, 1)  # (P, n, d)
    mean = x.mean(1)
    xc = x - mean[:, None]
    cov = xc.transpose(1, 2) @ xc / (n - 1)  # (P, d, d)
    eye = torch.eye(d, dtype=torch.float64)
    level = cov.diagonal(dim1=1, dim2=2).mean(1)  # (P,) the mean variance, the shrinkage target's scale
    if rule == "ridge":
        cov = cov + value * eye
    else:
        if rule == "ledoit-wolf":  # the weight that minimises the expected Frobenius error, per position
            spread = ((cov - level[:, None, None] * eye) ** 2).sum((1, 2))
            sq = (xc**2).sum(2)  # (P, n)
            noise = ((sq**2).sum(1) - 2 * torch.einsum("pnd,pde,pne->p", xc, cov, xc) + n * (cov**2).sum((1, 2))) / n**2
            weight = torch.minimum(noise, spread) / spread
        else:
            weight = torch.full_like(level, value)
        cov = (1 - weight)[:, None, None] * cov + (weight * level)[:, None, None] * eye
    inv = torch.linalg.inv(cov + STABILISER * eye)
    return mean.float(), torch.linalg.cholesky((inv + inv.transpose(1, 2)) / 2).float()


def scores(emb: torch.Tensor, mean: torch.Tensor, factor: torch.Tensor, pool: str | int, size: int = 256) -> np.ndarray:
    """(N,) image scores: the blurred Mahalanobis map's maximum or the mean of its top ``pool`` pixels."""
    n, d, h, w = emb.shape
    out = []
    for s in range(0, n, 64):
        delta = emb[s : s + 64].float().reshape(-1, d, h * w).permute(2, 0, 1) - mean[:, None]  # (P, B, d)
        dist = (torch.bmm(delta, factor) ** 2).sum(2).permute(1, 0).clamp(0).sqrt().reshape(-1, 1, h, w)
        amap = gaussian_blur(F.interpolate(dist, size=(size, size), mode="bilinear", align_corners=False), SIGMA)
        flat = amap.reshape(len(amap), -1)
        out.append(flat.amax(1) if pool == "max" else flat.topk(int(pool), 1).values.mean(1))
    return torch.cat(out).numpy().astype(np.float64)


def lot_scores(emb: torch.Tensor, rule: str, value: float, pool: str | int) -> np.ndarray:
    """The product's two fits with this covariance rule and pooling."""
    n = len(emb)
    first = scores(emb, *fit(emb, list(range(n)), rule, value), pool)
    keep = sorted(np.argsort(first, kind="stable")[: max(2, int(n * (1 - TRIM)))].tolist())
    return scores(emb, *fit(emb, keep, rule, value), pool)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", default="train", choices=("train", "test"))
    ap.add_argument("--kinds", nargs="+", default=["mono", "poly"])
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache/adcopilot/benchmarks/lot_trim")
    args = ap.parse_args()
    torch.set_num_threads(2)
    for kind in args.kinds:
        cells = [c for c in split(seed=0)[args.split] if c.kind == kind]
        name = f"{args.split}-{kind}-stretch"
        prob = np.array([c.probability for c in cells])
        dist = torch.from_numpy(np.load(args.cache / f"{name}-w15.npz")["dist"]).float()
        second = mutual_passes(dist)[1]
        emb = embeddings(raw_scales(cells, args.cache / f"{name}-raw.npz", True))
        print(f"## {name} ({len(cells)} cells); the mutual score alone {area(second, prob)}", flush=True)
        for tag, rule, value, pool in VARIANTS:
            t = time.time()
            padim = lot_scores(emb, rule, value, pool)
            joined = robust_z(second) + LOT_PADIM_WEIGHT * robust_z(padim)
            print(f"  {tag}: lot PaDiM {area(padim, prob)}, joined {area(joined, prob)} ({time.time() - t:.0f} s)",
                  flush=True)


if __name__ == "__main__":
    main()
