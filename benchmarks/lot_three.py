"""Lot-level zero-shot on ELPV: the mutual score, the model against lot references and a lot PaDiM, joined.

Three no-label scores of every image of a lot, each measured alone before: the two-pass mutual score
(``batch --mutual``), the default model against 3 lot references (``--lot-refs 3``, the bank the images
the second pass judged normal) and PaDiM's Gaussians per position fitted on the lot's images (aligned
products only), fitted on the bank (the images the mutual score judged normal) or on all but the share
PaDiM itself scored highest (``benchmarks/lot_padim.py``'s trim). Joined as ``batch --mutual --lot-refs``
joins two: robust z-scores on the lot, added, PaDiM at weight w. The distances and the model's scores are
those ``lot_trim.py`` and ``lot_self_refs.py`` cached (run them first). Image AUROC of probability 1
against 0, each cell type's split one lot. Run:

    python benchmarks/lot_three.py --split train    # choosing
    python benchmarks/lot_three.py --split test     # measuring
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from lot_padim import BATCH, area, padim_scores, robust_z
from lot_self_refs import mutual_passes
from tqdm import tqdm

from adcopilot import Copilot
from adcopilot.data.elpv import split
from adcopilot.imaging import load_image, to_float_array
from adcopilot.model.detector import to_batch
from adcopilot.model.mutual import pool_of


def raw_scales(cells: list, cache: Path) -> dict[str, torch.Tensor]:
    """The tower's raw stage outputs of every cell (float16), cached."""
    if cache.exists():
        z = np.load(cache)
        return {k: torch.from_numpy(z[k]) for k in z.files}
    cp = Copilot.load()
    tower, size = cp.detector.fused_tower, cp.detector.image_size
    parts: dict[str, list[torch.Tensor]] = {"s8": [], "s16": []}
    with torch.inference_mode():
        for start in tqdm(range(0, len(cells), BATCH), desc="features"):
            x = to_batch([to_float_array(load_image(c.path), size) for c in cells[start : start + BATCH]])
            for k, v in tower.patch_features(x).items():
                parts[k].append(v.half())
    out = {k: torch.cat(v) for k, v in parts.items()}
    np.savez(cache, **{k: v.numpy() for k, v in out.items()})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", default="train", choices=("train", "test"))
    ap.add_argument("--kinds", nargs="+", default=["mono", "poly"])
    ap.add_argument("--weights", type=float, nargs="+", default=[0.25, 0.5, 0.75, 1.0])
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache/adcopilot/benchmarks/lot_trim")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for kind in args.kinds:
        cells = [c for c in split(seed=0)[args.split] if c.kind == kind]
        name = f"{args.split}-{kind}"
        prob = np.array([c.probability for c in cells])
        dist = torch.from_numpy(np.load(args.cache / f"{name}-w15.npz")["dist"]).float()
        _, second = mutual_passes(dist)
        model = np.load(args.cache / f"selfrefs-{name}-default-k2.0-3.npz")["score"]
        raw = raw_scales(cells, args.cache / f"{name}-raw.npz")
        bank = pool_of(torch.from_numpy(second), 2.0)
        first = padim_scores(raw, list(range(len(cells))))
        padims = {"bank": padim_scores(raw, bank),
                  "trim 0.5": padim_scores(raw, list(np.argsort(first)[: len(cells) // 2]))}
        two = robust_z(second) + robust_z(model)
        print(f"## {name} ({len(cells)} cells): mutual {area(second, prob)}, model {area(model, prob)}, "
              f"mutual + model {area(two, prob)}", flush=True)
        for tag, pd in padims.items():
            row = "  ".join(f"w {w}: {area(two + w * robust_z(pd), prob)}" for w in args.weights)
            print(f"  lot PaDiM ({tag}) {area(pd, prob)}; mutual + model + w x PaDiM: {row}", flush=True)


if __name__ == "__main__":
    main()
