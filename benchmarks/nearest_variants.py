"""The nearest-reference score with one or five references, other ways: which tower stages, PatchCore's 3 x 3
aggregation, and each reference patch's own density.

On ELPV poly cells with one reference the training-free baseline (each query patch's cosine distance to its nearest
reference patch on the stride-8 and stride-16 stages, the smoothed map's maximum) ranks above the default model, and
neither ranks 2 points above the other. Three label-free changes to that distance, each scored as the baseline is:

* ``stages``: other stages of the tower (numbered as :data:`adcopilot.model.vision.LITE0_STAGES`: 2 the stride-8
  stage the product reads, 3 and 4 the two stride-16 stages, 4 the product's, 5 and 6 the stride-32 ones), each
  L2-normalised, bilinearly resized to the stride-8 grid and joined;
* ``a3``: each stage's outputs first averaged over each position's 3 x 3 neighbours (anomalib's PatchCore);
  ``a1+a3``: the two distances added;
* ``ratio c`` / ``minus a``: the distance divided by (or lowered by ``a`` times) the nearest reference patch's own
  distance to its nearest other patch of the reference more than 3 grid steps away (``own``; ``own5``: its fifth
  nearest), plus ``c``: a reference patch unlike the rest of its image (a grain boundary) stands for a part of the
  product that varies, so a query patch far from it is less surprising.

``_v8``: the nearest of the reference's eight flips and quarter turns too (one reference only). The query is aligned
onto the first reference as the product aligns it. Validation only (ELPV training cells, the sets of
``image_score_evidence.py``): choices are made there. Image AUROC per cell type. Run:

    python benchmarks/nearest_variants.py --shots 1      # stages, aggregation and density, one reference
    python benchmarks/nearest_variants.py --shots 5      # stages and aggregation, five references
"""

from __future__ import annotations

import argparse
import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from image_score_evidence import _arr, elpv_pairs
from tqdm import tqdm

from adcopilot.metrics import auroc
from adcopilot.model.detector import to_batch
from adcopilot.model.inspection import align
from adcopilot.model.score import SELF_RADIUS, dihedral_views, self_distance
from adcopilot.model.upsample import upsample_centered
from adcopilot.model.vision import load_vision_tower

SIZE = 256
GRID = SIZE // 8
#: name -> the stages joined
STAGES = {"s8+s16 (the product's)": (2, 4), "s16": (4,), "s8": (2,), "both s16 stages": (3, 4), "s16+s32": (4, 5),
          "s8+s16+s32": (2, 4, 5)}


def stage_outputs(tower, image: np.ndarray) -> dict[int, torch.Tensor]:
    """Every stage's last output for one (S, S, 3) image: {stage: (1, C, H, W)}."""
    ends, total = {}, 0
    for i, stage in enumerate(tower.stages):
        total += stage[0]
        ends[total - 1] = i
    h, out = tower.stem(to_batch([image])), {}
    for i, block in enumerate(tower._blocks):
        h = block(h)
        if i in ends and ends[i] >= 2:  # the stride-4 and earlier stages are not read
            out[ends[i]] = h
    return out


def patches(outs: dict[int, torch.Tensor], stages: tuple[int, ...], aggregate: int = 1) -> torch.Tensor:
    """(N, C) unit-norm patch vectors on the stride-8 grid, row-major, of the ``stages`` joined."""
    parts = []
    for s in stages:
        x = outs[s]
        if aggregate > 1:
            x = F.avg_pool2d(x, aggregate, 1, aggregate // 2, count_include_pad=False)
        x = F.normalize(x, dim=1)
        if x.shape[-1] != GRID:
            x = F.normalize(F.interpolate(x, size=(GRID, GRID), mode="bilinear", align_corners=False), dim=1)
        parts.append(x)
    return (torch.cat(parts, 1) / math.sqrt(len(parts)))[0].flatten(1).T


def map_max(distance: torch.Tensor) -> float:
    """The baseline's image score of (N,) patch distances on the stride-8 grid."""
    up = upsample_centered(distance.view(1, 1, GRID, GRID).float(), SIZE // GRID)[0, 0].numpy()
    return float(cv2.GaussianBlur(up, (0, 0), 4.0).max())


def kth_self_distance(tokens: torch.Tensor, k: int) -> torch.Tensor:
    """(N,) each patch's distance to its ``k``-th nearest patch of the same image more than 3 steps away."""
    yy, xx = torch.arange(GRID * GRID) // GRID, torch.arange(GRID * GRID) % GRID
    near = torch.maximum((yy[:, None] - yy[None]).abs(), (xx[:, None] - xx[None]).abs()) <= SELF_RADIUS
    return (1 - (tokens @ tokens.T).masked_fill_(near, -2.0).topk(k, dim=1).values[:, -1]).clamp_min(0)


def nearest(query: torch.Tensor, bank: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(distance, index) of each query row's nearest bank row."""
    sim, idx = (query @ bank.T).max(1)
    return (1 - sim).clamp_min(0), idx


@torch.inference_mode()
def pair_scores(ref_outs: list[list[dict[int, torch.Tensor]]], q_outs: dict[int, torch.Tensor], views: bool
                ) -> dict[str, float]:
    """Every variant's image score for one query's and its references' stage outputs (each reference's views)."""
    row = {}
    for name, stages in STAGES.items():
        for agg in (1, 3):
            q = patches(q_outs, stages, agg)
            firsts = torch.cat([patches(r[0], stages, agg) for r in ref_outs])
            d1 = nearest(q, firsts)[0]
            row[f"{name}, a{agg}"] = map_max(d1)
            if views:
                d8 = nearest(q, torch.cat([patches(o, stages, agg) for r in ref_outs for o in r]))[0]
                row[f"{name}, a{agg}_v8"] = map_max(d8)
            if agg == 1:
                plain = d1
            else:
                row[f"{name}, a1+a3"] = map_max(plain + d1)
    if len(ref_outs) == 1:  # the reference patches' own density
        q = patches(q_outs, STAGES["s8+s16 (the product's)"])
        ref = patches(ref_outs[0][0], STAGES["s8+s16 (the product's)"])
        d1, j = nearest(q, ref)
        for tag, own in (("own", self_distance(ref, (GRID, GRID))), ("own5", kth_self_distance(ref, 5))):
            for c in (0.05, 0.2, 0.4):
                row[f"ratio {c}, {tag}"] = map_max(d1 / (own[j] + c))
            for a in (0.5, 1.0):
                row[f"minus {a}, {tag}"] = map_max((d1 - a * own[j]).clamp_min(0))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shots", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--per-side", type=int, default=100, help="normal and defective training cells per type")
    args = ap.parse_args()
    torch.set_num_threads(2)
    tower = load_vision_tower().eval()
    rows, labels, groups = [], [], []
    views = args.shots == 1
    cache: dict[tuple[str, str], list[dict[int, torch.Tensor]]] = {}  # (reference, first reference) -> its views
    pairs = elpv_pairs("elpv-val", args.seed, args.shots, args.per_side, None, 20)  # references from a pool of 20
    for group, label, ref_paths, query_path in tqdm(pairs, desc="pairs", mininterval=30):
        first = _arr(ref_paths[0], SIZE)
        ref_outs = []
        for p in ref_paths:
            key = (str(p), str(ref_paths[0]))
            if key not in cache:
                ref = first if p == ref_paths[0] else align(_arr(p, SIZE), first).compared
                with torch.inference_mode():
                    cache[key] = [stage_outputs(tower, v) for v in (dihedral_views(ref) if views else [ref])]
            ref_outs.append(cache[key])
        with torch.inference_mode():
            q_outs = stage_outputs(tower, align(_arr(query_path, SIZE), first).compared)
        rows.append(pair_scores(ref_outs, q_outs, views))
        labels.append(label)
        groups.append(group)
    y, g = np.array(labels), np.array(groups)
    for key in rows[0]:
        sc = np.array([r[key] for r in rows])
        print(f"{key:>28}: " + " | ".join(f"{k} {auroc(sc[g == k], y[g == k]):.3f}" for k in ("mono", "poly")),
              flush=True)


if __name__ == "__main__":
    main()
