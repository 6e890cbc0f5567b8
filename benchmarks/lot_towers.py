"""Lot-level zero-shot on ELPV with two frozen towers: EfficientNet-Lite0, Lite2, and the two together.

Each cell type's split is one lot with no references. For each tower the lot is scored by the one-pass mutual
score (``MutualRecipe()``: joint view, closest 30 %, top 3) and by PaDiM fitted on the lot itself and again
without the half it scored highest (``benchmarks/lot_padim.py``'s trim 0.5). The towers are combined at
the patch level (the mean of the two towers' patch values on the same stride-16 grid, then the top 3) and at
the image level (robust z-scores on the lot added: median and MAD, no labels). Image AUROC of probability 1
against 0. The per-cell scores are cached in ``--cache`` so the combinations can be read again without
scoring. Run (Lite2 needs ``pip install -e '.[lite2]'``):

    python benchmarks/lot_towers.py --split train     # choosing
    python benchmarks/lot_towers.py --split test      # measuring
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from lot_padim import BATCH, area, padim_scores, robust_z
from tqdm import tqdm

from adcopilot.data.elpv import split
from adcopilot.imaging import load_image, to_float_array
from adcopilot.model.backbone import load_backbone
from adcopilot.model.detector import to_batch
from adcopilot.model.mutual import LotViews, MutualRecipe, image_scores, lot_features, mutual_patch_scores
from adcopilot.model.vision import FusedPatchTower

SIZE = 256
TOWERS = ("efficientnet-lite0", "efficientnet-lite2")


def score_lot(tower_name: str, paths: list[str], cache: Path) -> dict[str, np.ndarray]:
    """Mutual patch values (N, P) and trimmed lot-PaDiM image scores (N,) of one lot with one tower."""
    if cache.exists():
        return dict(np.load(cache))
    tower = FusedPatchTower.from_tower(load_backbone(tower_name))
    scales: dict[str, list[torch.Tensor]] = {"s8": [], "s16": []}
    views = []
    with torch.inference_mode():
        for start in tqdm(range(0, len(paths), BATCH), desc=f"{tower_name} features"):
            x = to_batch([to_float_array(load_image(p), SIZE) for p in paths[start : start + BATCH]])
            for k, v in tower.patch_features(x).items():
                scales[k].append(v.half())
            views.append(lot_features(tower, x))
    raw = {k: torch.cat(v) for k, v in scales.items()}
    lot = LotViews.cat(views)
    bar = tqdm(total=len(paths), desc=f"{tower_name} mutual")
    patches = mutual_patch_scores(lot, MutualRecipe().interval, progress=bar.update).numpy()
    bar.close()
    first = padim_scores(raw, list(range(len(paths))))
    trimmed = padim_scores(raw, list(np.argsort(first)[: len(paths) // 2]))
    out = {"patches": patches, "padim": trimmed}
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", default="test", choices=("train", "test"))
    ap.add_argument("--kinds", nargs="+", default=["mono", "poly"])
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache/adcopilot/benchmarks/lot_towers")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for kind in args.kinds:
        cells = [c for c in split(seed=0)[args.split] if c.kind == kind]
        prob = np.array([c.probability for c in cells])
        got = {t: score_lot(t, [str(c.path) for c in cells], args.cache / f"{args.split}-{kind}-{t}.npz") for t in TOWERS}
        mutual = {t: image_scores(torch.from_numpy(g["patches"])).numpy() for t, g in got.items()}
        both_patch = image_scores(torch.from_numpy((got[TOWERS[0]]["patches"] + got[TOWERS[1]]["patches"]) / 2)).numpy()
        rows = {
            "mutual lite0": mutual[TOWERS[0]],
            "mutual lite2": mutual[TOWERS[1]],
            "mutual, towers' patch values averaged": both_patch,
            "mutual, towers' z-scores added": robust_z(mutual[TOWERS[0]]) + robust_z(mutual[TOWERS[1]]),
            "lot PaDiM lite0": got[TOWERS[0]]["padim"],
            "lot PaDiM lite2": got[TOWERS[1]]["padim"],
            "mutual + PaDiM lite0 (w 0.5)": robust_z(mutual[TOWERS[0]]) + robust_z(got[TOWERS[0]]["padim"]),
            "mutual + PaDiM lite2 (w 0.5)": robust_z(mutual[TOWERS[1]]) + robust_z(got[TOWERS[1]]["padim"]),
            "all four z-scores": sum(robust_z(mutual[t]) + robust_z(got[t]["padim"]) for t in TOWERS),
            "patch-averaged mutual + both PaDiMs": 2 * robust_z(both_patch)
            + sum(robust_z(got[t]["padim"]) for t in TOWERS),
        }
        print(f"ELPV {kind} {args.split} ({len(cells)} cells)", flush=True)
        for name, s in rows.items():
            print(f"  {name:40s} {area(np.asarray(s), prob)}", flush=True)


if __name__ == "__main__":
    main()
