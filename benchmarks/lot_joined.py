"""Lot-level zero-shot on ELPV: the joined score's own verdict as the normal set for a second round.

``batch --mutual --aligned --lot-refs 3`` joins three no-label scores of every image of a lot (the mutual score's
second pass, the model against three lot references, the lot PaDiM), each of which chose its normal images on its
own evidence: the mutual score's bank is what its first pass judged normal, the lot PaDiM's second fit leaves out
what its own first fit scored highest. The joined score ranks the lot better than any of them, so its verdict is a
cleaner normal set. Here a second round takes it: the mutual second pass against the images the joined score judged
normal (the lot threshold at k = 2, as the product's bank), the lot PaDiM fitted on the half it scored lowest, and
the two joined again with the model's score as before. Also the lot PaDiM on features averaged over each position's
3 x 3 neighbourhood (a cell a patch off its neighbours' place still meets its Gaussians). Image AUROC of probability
1 against 0, each cell type's split one lot. The distances, stage outputs and the model's scores are those
``lot_self_refs.py`` and ``lot_three.py`` cached, both with ``--stretch``. Run:

    python benchmarks/lot_joined.py --split train    # choosing
    python benchmarks/lot_joined.py --split test     # measuring
    python benchmarks/lot_joined.py --lots DIR ...   # folders as lots (their caches: lot_self_refs.py --lots DIR ...)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from bench_mutual import folder_lot
from lot_padim import area, padim_scores, robust_z
from lot_self_refs import mutual_passes
from lot_three import raw_scales
from lot_trim import pooled_patch_values

from adcopilot.data.elpv import split
from adcopilot.line.lot import LOT_PADIM_WEIGHT, LOT_REFS_WEIGHT
from adcopilot.model.lot_padim import lot_padim_scores, rank_agreement
from adcopilot.model.mutual import image_scores, pool_of
from adcopilot.model.padim import neighbourhood_means


def lowest(scores: np.ndarray, share: float) -> list[int]:
    """The indices of the ``share`` of a lot scored lowest, in order."""
    return sorted(np.argsort(scores, kind="stable")[: max(2, int(len(scores) * share))].tolist())


def second_pass(dist: torch.Tensor, rows: list[int], top_k: int = 3) -> np.ndarray:
    """The mutual score's second pass (its closest 5 %) against the images ``rows``."""
    pool = np.zeros(len(dist), bool)
    pool[rows] = True
    return image_scores(pooled_patch_values(dist, pool, 0.05), top_k).numpy()


def joined(second: np.ndarray, model: np.ndarray, padim: np.ndarray) -> np.ndarray:
    return robust_z(second) + LOT_REFS_WEIGHT * robust_z(model) + LOT_PADIM_WEIGHT * robust_z(padim)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", default="train", choices=("train", "test"))
    ap.add_argument("--kinds", nargs="+", default=["mono", "poly"])
    ap.add_argument("--lots", nargs="+", type=Path, default=[],
                    help="folders scored as lots instead of ELPV (images under a 'good' folder are normal)")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache/adcopilot/benchmarks/lot_trim")
    args = ap.parse_args()
    torch.set_num_threads(1)
    lots = {d.name: folder_lot(d) for d in args.lots} or {
        kind: [c for c in split(seed=0)[args.split] if c.kind == kind] for kind in args.kinds}
    for kind, cells in lots.items():
        name = (f"lot-{kind}" if args.lots else f"{args.split}-{kind}") + "-stretch"
        prob = np.array([c.probability for c in cells])
        dist = torch.from_numpy(np.load(args.cache / f"{name}-w15.npz")["dist"]).float()
        first, second = mutual_passes(dist)
        raw = raw_scales(cells, args.cache / f"{name}-raw.npz", True)
        model = np.load(args.cache / f"selfrefs-{name}-default-k2.0-3.npz")["score"]
        padim = lot_padim_scores(raw, 256, neighbourhood=1)  # the product before the neighbourhood means
        j1 = joined(second, model, padim)
        rows: dict[str, np.ndarray] = {"mutual + model + lot PaDiM (each position alone)": j1}
        bank, half = pool_of(torch.from_numpy(j1), 2.0), lowest(j1, 0.5)
        second_j = second_pass(dist, bank)
        padim_j = padim_scores(raw, half)
        rows["mutual against the joined bank"] = joined(second_j, model, padim)
        rows["lot PaDiM on the joined half"] = joined(second, model, padim_j)
        rows["both"] = joined(second_j, model, padim_j)
        j2 = rows["both"]
        rows["both, a third round"] = joined(second_pass(dist, pool_of(torch.from_numpy(j2), 2.0)), model,
                                             padim_scores(raw, lowest(j2, 0.5)))
        product_bank = pool_of(torch.from_numpy(first), 2.0)  # the second pass's bank, as the product's
        rows["mutual top 10"] = joined(second_pass(dist, product_bank, top_k=10), model, padim)
        rows["lot PaDiM on 5 x 5 means"] = joined(second, model, lot_padim_scores(raw, 256, neighbourhood=5))
        padim3 = lot_padim_scores(raw, 256, neighbourhood=3)
        rows["lot PaDiM on 3 x 3 means"] = joined(second, model, padim3)
        rows["both + lot PaDiM on 3 x 3 means"] = joined(second_j, model, padim_scores(neighbourhood_means(raw, 3), half))
        rows["mutual + lot PaDiM, no model (each position alone)"] = robust_z(second) + LOT_PADIM_WEIGHT * robust_z(padim)
        rows["mutual + lot PaDiM on 3 x 3 means, no model"] = robust_z(second) + LOT_PADIM_WEIGHT * robust_z(padim3)
        for w in (0.5, 1.0):
            rows[f"lot PaDiM on 3 x 3 means at weight {w} (with the model / without)"] = np.stack([
                robust_z(second) + LOT_REFS_WEIGHT * robust_z(model) + w * robust_z(padim3),
                robust_z(second) + w * robust_z(padim3)])
        print(f"## {name} ({len(cells)} cells); alone: mutual {area(second, prob)}, model {area(model, prob)}, "
              f"lot PaDiM {area(padim, prob)}, on 3 x 3 means {area(padim3, prob)}, on the joined half "
              f"{area(padim_j, prob)}; mutual against the joined bank {area(second_j, prob)} "
              f"(bank {len(bank)} of {len(cells)}); the lot PaDiM's rank agreement with the mutual score "
              f"{rank_agreement(second, padim):.3f}, on 3 x 3 means {rank_agreement(second, padim3):.3f}", flush=True)
        for tag, sc in rows.items():
            print(f"  {tag}: {' / '.join(area(x, prob) for x in np.atleast_2d(sc))}", flush=True)


if __name__ == "__main__":
    main()
