"""Lot-level zero-shot on ELPV: the mutual score, the model against lot references and a lot PaDiM, joined.

Three no-label scores of every image of a lot, each measured alone before: the two-pass mutual score
(``batch --mutual``), the default model against 3 lot references (``--lot-refs 3``, the bank the images
the second pass judged normal) and PaDiM's Gaussians per position fitted on the lot's images (aligned
products only), fitted on the bank (the images the mutual score judged normal) or on all but the share
PaDiM itself scored highest (the half: ``batch --mutual --aligned``'s :func:`lot_padim_scores`). Joined as
``batch --mutual --lot-refs`` joins two: robust z-scores on the lot, added, PaDiM at weight w; also the mutual
score and PaDiM alone (``--aligned`` without ``--lot-refs``). The distances and the model's scores are those
``lot_trim.py`` and ``lot_self_refs.py`` cached (run them first, with ``--stretch`` for ``--stretch`` here). Image
AUROC of probability 1 against 0, each cell type's split one lot, or each folder of ``--lots`` one lot. Run:

    python benchmarks/lot_three.py --split train --stretch    # choosing
    python benchmarks/lot_three.py --split test --stretch     # measuring
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from bench_mutual import folder_lot
from lot_padim import BATCH, area, padim_scores, robust_z
from lot_self_refs import mutual_passes
from tqdm import tqdm

from adcopilot import Copilot
from adcopilot.data.elpv import split
from adcopilot.eval.detection import auroc
from adcopilot.imaging import load_image, to_float_array
from adcopilot.line.lot import LOT_PADIM_WEIGHT, LOT_REFS_WEIGHT
from adcopilot.model.detector import to_batch
from adcopilot.model.lot_padim import lot_padim_scores, rank_agreement
from adcopilot.model.mutual import lot_threshold, pool_of
from adcopilot.model.padim import PadimAccumulator, channel_subset, stretch_grey


def raw_scales(cells: list, cache: Path, stretch: bool = False) -> dict[str, torch.Tensor]:
    """The tower's raw stage outputs of every cell (float16; ``stretch``: of its stretched grey levels, as
    ``adapt`` fits PaDiM), cached."""
    if cache.exists():
        z = np.load(cache)
        return {k: torch.from_numpy(z[k]) for k in z.files}
    cp = Copilot.load()
    tower, size = cp.detector.fused_tower, cp.detector.image_size
    parts: dict[str, list[torch.Tensor]] = {"s8": [], "s16": []}
    with torch.inference_mode():
        for start in tqdm(range(0, len(cells), BATCH), desc="features"):
            arrays = [to_float_array(load_image(c.path), size) for c in cells[start : start + BATCH]]
            x = to_batch([stretch_grey(a) for a in arrays] if stretch else arrays)
            for k, v in tower.patch_features(x).items():
                parts[k].append(v.half())
    out = {k: torch.cat(v) for k, v in parts.items()}
    np.savez(cache, **{k: v.numpy() for k, v in out.items()})
    return out


def padim_variant(raw: dict[str, torch.Tensor], channels: int = 100, trim: float = 0.5, fits: int = 2,
                  regularisation: float = 0.01) -> np.ndarray:
    """The lot PaDiM with other settings: ``channels`` of the 152, ``fits`` fits each without the ``trim`` share the
    one before scored highest, the covariance's ``regularisation``."""
    n = len(raw["s8"])
    rows = list(range(n))
    for _ in range(fits):
        acc = PadimAccumulator(channel_subset(152, channels))
        for s in range(0, len(rows), BATCH):
            acc.add({k: v[rows[s : s + BATCH]].float() for k, v in raw.items()})
        stats = acc.finish(regularisation)
        sc = torch.cat([stats.anomalib_map({k: v[s : s + BATCH].float() for k, v in raw.items()}, 256)[0]
                        for s in range(0, n, BATCH)]).numpy()
        rows = sorted(np.argsort(sc)[: int(n * (1 - trim))].tolist())
    return sc


VARIANTS = {"all 152 channels": {"channels": 152}, "three fits": {"fits": 3}, "trim 0.3": {"trim": 0.3},
            "trim 0.7": {"trim": 0.7}, "regularisation 0.1": {"regularisation": 0.1}}


def roc(scores: np.ndarray, is_bad: np.ndarray) -> float:
    return float(auroc(scores, is_bad.astype(int)))


def draws(kind: str, prob: np.ndarray, dist: torch.Tensor, raw: dict[str, torch.Tensor], n_draws: int,
          ks: tuple[float, ...] = (1.5, 2.0)) -> None:
    """Mostly normal lots drawn from one split, each scored as a lot of its own (its mutual passes, its PaDiM)."""
    normal, bad = np.flatnonzero(prob == 0.0), np.flatnonzero(prob == 1.0)
    rng = np.random.default_rng(0)
    for share in (0.05, 0.10):
        rows: dict[str, list[list[float]]] = {}
        for _ in tqdm(range(n_draws), desc=f"{kind} {share:.0%}"):
            drawn = rng.choice(bad, int(round(share * len(normal) / (1 - share))), replace=False)
            idx = np.concatenate([normal, drawn])
            is_bad = np.r_[np.zeros(len(normal), bool), np.ones(len(drawn), bool)]
            t = torch.from_numpy(idx)
            _, second = mutual_passes(dist[t][:, t])
            padim = lot_padim_scores({k: v[t] for k, v in raw.items()}, 256)
            for tag, sc in (("mutual", second), ("mutual + lot PaDiM", robust_z(second) + LOT_PADIM_WEIGHT * robust_z(padim))):
                row = [roc(sc, is_bad)]
                for k in ks:
                    thr = lot_threshold(sc, k)
                    row += [float(np.mean(sc[~is_bad] >= thr)), float(np.mean(sc[is_bad] < thr))]
                rows.setdefault(tag, []).append(row)
        for tag, got in rows.items():
            m = np.mean(got, axis=0)
            at = "; ".join(f"k {k}: FA {m[1 + 2 * j]:.3f} miss {m[2 + 2 * j]:.3f}" for j, k in enumerate(ks))
            print(f"  {kind} {share:.0%} defective, {tag}: AUROC {m[0]:.4f} (draws {np.min(got, 0)[0]:.4f}-"
                  f"{np.max(got, 0)[0]:.4f}); {at} ({n_draws} lots)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", default="train", choices=("train", "test"))
    ap.add_argument("--kinds", nargs="+", default=["mono", "poly"])
    ap.add_argument("--weights", type=float, nargs="+", default=[0.25, 0.5, 0.75, 1.0])
    ap.add_argument("--stretch", action="store_true", help="every score on stretched grey levels: the mutual "
                    "score and PaDiM as the product computes them, the model's lot-reference score joined at "
                    "LOT_REFS_WEIGHT (lot_trim.py and lot_self_refs.py run with --stretch first)")
    ap.add_argument("--lots", nargs="+", type=Path, default=[],
                    help="folders scored as lots instead of ELPV (images under a 'good' folder are normal)")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache/adcopilot/benchmarks/lot_trim")
    ap.add_argument("--variants", action="store_true", help="also the lot PaDiM's variants (VARIANTS) at weight 0.75")
    ap.add_argument("--draws", type=int, default=0, help="only mostly normal lots (all normal cells with 5 %% / 10 %% "
                    "of the defective ones drawn in, this many of each): the mutual score alone and joined with the lot "
                    "PaDiM (--aligned), AUROC and the false alarms and misses at the lot threshold")
    args = ap.parse_args()
    torch.set_num_threads(1)
    lots = {d.name: folder_lot(d) for d in args.lots} or {
        kind: [c for c in split(seed=0)[args.split] if c.kind == kind] for kind in args.kinds}
    for kind, cells in lots.items():
        name = (f"lot-{kind}" if args.lots else f"{args.split}-{kind}") + ("-stretch" if args.stretch else "")
        prob = np.array([c.probability for c in cells])
        dist = torch.from_numpy(np.load(args.cache / f"{name}-w15.npz")["dist"]).float()
        _, second = mutual_passes(dist)
        raw = raw_scales(cells, args.cache / f"{name}-raw.npz", args.stretch)
        if args.draws:
            draws(kind, prob, dist, raw, args.draws)
            continue
        model = np.load(args.cache / f"selfrefs-{name}-default-k2.0-3.npz")["score"]
        bank = pool_of(torch.from_numpy(second), 2.0)
        t0 = time.perf_counter()
        product = lot_padim_scores(raw, 256)  # batch --mutual --aligned's
        print(f"  {name}: the lot PaDiM of {len(cells)} images (two fits, two scorings) in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
        padims = {"bank": padim_scores(raw, bank), "trim 0.5": product}
        two = robust_z(second) + (LOT_REFS_WEIGHT if args.stretch else 1.0) * robust_z(model)
        print(f"## {name} ({len(cells)} cells): mutual {area(second, prob)}, model {area(model, prob)}, "
              f"mutual + model {area(two, prob)}", flush=True)
        for tag, pd in padims.items():
            row = "  ".join(f"w {w}: {area(two + w * robust_z(pd), prob)}" for w in args.weights)
            print(f"  lot PaDiM ({tag}) {area(pd, prob)} (rank agreement with the mutual score "
                  f"{rank_agreement(second, pd):.3f}); mutual + model + w x PaDiM: {row}", flush=True)
            row = "  ".join(f"w {w}: {area(robust_z(second) + w * robust_z(pd), prob)}" for w in args.weights)
            print(f"    mutual + w x PaDiM (no model): {row}", flush=True)
        for tag, kw in VARIANTS.items() if args.variants else ():
            pd = padim_variant(raw, **kw)
            print(f"  variant {tag}: alone {area(pd, prob)}; mutual + 0.75 x PaDiM {area(robust_z(second) + 0.75 * robust_z(pd), prob)}; "
                  f"mutual + model + 0.75 x PaDiM {area(two + 0.75 * robust_z(pd), prob)}", flush=True)


if __name__ == "__main__":
    main()
