"""Lot-level zero-shot scoring: every image of a lot against the other images of the same lot.

Most parts of a lot are normal, so a patch that has a close match in most other images is normal and a
defect patch is not (the mutual-scoring idea of zero-shot methods such as MuSc, Li et al. 2024). For each
patch of each image: its nearest-patch cosine distance in every *other* image of the lot, and the mean of
the smallest ``closest_frac`` of those distances is its anomaly value (a defect shared by a few images is
still far from the rest). The image score is the mean of its ``top_k`` largest patch values. No reference
and no training are needed.

Features: the frozen tower's unit-norm stride-8 patch features, average-pooled 2 x 2 to stride 16 and
renormalised (256 patches at 256 px): a quarter of the patches, so a lot of N images costs
N^2 * 256^2 dot products.

The lot's threshold comes from its own scores (:func:`lot_threshold`): no label and no reference needed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from adcopilot.model.baseline import normalized_patch_features
from adcopilot.model.vision import PatchTower


@torch.inference_mode()
def lot_features(tower: PatchTower, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) in [0, 1] -> (B, P, C) unit-norm patch features at stride 16 (P = (S/16)^2)."""
    f = normalized_patch_features(tower, images)  # (B, C, S/8, S/8)
    f = F.normalize(F.avg_pool2d(f, 2), dim=1)  # (B, C, S/16, S/16)
    return f.flatten(2).transpose(1, 2).contiguous()


@torch.inference_mode()
def mutual_patch_scores(
    features: torch.Tensor,
    closest_frac: float = 0.3,
    chunk: int = 64,
    progress: Callable[[int], None] | None = None,
    rows: Sequence[int] | None = None,
) -> torch.Tensor:
    """(N, P, C) unit-norm features of a lot -> (R, P) patch anomaly values (see the module doc) of the
    images ``rows`` (all N by default): each still against every other image of the lot."""
    n, p, _ = features.shape
    if n < 2:
        raise ValueError("mutual scoring needs a lot of two images or more")
    keep = max(1, math.ceil(closest_frac * (n - 1)))
    wanted = list(range(n)) if rows is None else list(rows)
    out = torch.empty(len(wanted), p)
    for r, i in enumerate(wanted):
        nearest = []  # per other image: (P,) nearest-patch distance of each of image i's patches
        for start in range(0, n, chunk):
            block = features[start : start + chunk]  # (J, P, C)
            sim = torch.einsum("pc,jqc->jpq", features[i], block)  # (J, P, P)
            d = 1.0 - sim.amax(dim=2)  # (J, P)
            if start <= i < start + len(block):
                d = torch.cat([d[: i - start], d[i - start + 1 :]])
            nearest.append(d)
        dist = torch.cat(nearest).clamp_min(0)  # (N-1, P)
        out[r] = dist.topk(keep, dim=0, largest=False).values.mean(0)
        if progress:
            progress(1)
    return out


def image_scores(patch_scores: torch.Tensor, top_k: int = 3) -> torch.Tensor:
    """(N, P) patch values -> (N,) image scores: the mean of each image's ``top_k`` largest."""
    return patch_scores.topk(min(top_k, patch_scores.shape[1]), dim=1).values.mean(1)


#: Robust standard deviations above the lot's median image score at which a mutual score is anomalous:
#: about 4 % false alarms on lots of ELPV cells with 5-10 % defective (``benchmarks/bench_mutual.py``).
MAD_K = 1.5
#: Floor of the lot's spread (cosine distance): a lot of near-identical images is not split by rounding noise.
MIN_SPREAD = 0.01


def lot_threshold(scores: Sequence[float], k: float = MAD_K) -> float:
    """The lot's own threshold for mutual image scores: median + k * 1.4826 * MAD.

    Most of a lot is normal, so the median and the median absolute deviation (scaled to a standard
    deviation for a normal distribution) describe the normal images' scores however many outliers
    the lot holds (up to half); a defect is an image ``k`` robust deviations above them."""
    if len(scores) == 0:
        raise ValueError("a lot threshold needs at least one score")
    x = np.asarray(scores, dtype=np.float64)
    med = float(np.median(x))
    mad = float(np.median(np.abs(x - med)))
    return med + k * max(1.4826 * mad, MIN_SPREAD)
