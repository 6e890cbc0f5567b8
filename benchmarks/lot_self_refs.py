"""Lot-level zero-shot on ELPV: the lot's own normal-looking images as references for the model.

Mutual scoring (``batch --mutual``) ranks each image by how far its patches lie from the rest of the lot.
The model itself is never asked. Here, with no reference given, the images the mutual score judged normal
(its second pass's scores below the lot threshold at k = ``--pool-k``; no label) become a reference bank:
each image is inspected by the model against its ``k`` nearest bank images by global feature (itself
left out), as ``batch --refs`` chooses references, and that image score is measured alone and fused with
the mutual score (robust z-scores on the lot added, or the larger of the two scores each divided by its
lot threshold, as ``batch --mutual --refs`` decides). Image AUROC of probability 1 against 0.

The lot's nearest-patch distances are those of ``benchmarks/lot_trim.py --windows`` (radius 15: the
global search), read from its cache or computed and cached there. Run:

    python benchmarks/lot_self_refs.py --split train --kinds mono --shots 1 3 5
    python benchmarks/lot_self_refs.py --split train --kinds mono --shots 3 --draws 4   # mostly normal lots
"""

from __future__ import annotations

import argparse
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from bench_mutual import folder_lot
from lot_padim import area, robust_z
from lot_trim import pooled_patch_values, window_distances
from tqdm import tqdm

from adcopilot import Copilot
from adcopilot.data.elpv import split
from adcopilot.imaging import load_image, to_float_array
from adcopilot.line.references import GLOBAL_SIZE, ReferenceBank, global_features, tower_for
from adcopilot.model.mutual import image_scores, lot_threshold, pool_of


def mutual_passes(dist: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(first pass, second pass) image scores, as ``batch --mutual`` computes them by default."""
    n = len(dist)
    first = image_scores(pooled_patch_values(dist, np.ones(n, bool), 0.3))
    pool = np.zeros(n, bool)
    pool[pool_of(first, 2.0)] = True
    second = image_scores(pooled_patch_values(dist, pool, 0.05))
    return first.numpy(), second.numpy()


@lru_cache(maxsize=4)
def _copilot(model: str) -> Copilot:
    """One load per model for the whole run (its scores' cache is read or written many times)."""
    return Copilot.load(model)


def model_scores(model: str, paths: list[Path], bank_paths: list[Path], shots: int, cache: Path) -> np.ndarray:
    """(N,) the model's image score of every image against its ``shots`` nearest bank images (cached with the name
    of the image score the model gives that many references: a file of another score is computed again)."""
    cop = _copilot(model)
    kind = cop.detector.image_score_for(shots)
    if cache.exists():
        held = np.load(cache)
        # Files written before the name was kept: the one-reference score was then the pooled map.
        stored = str(held["image_score"]) if "image_score" in held else ("map" if shots == 1 else "fused")
        if stored == kind:
            return held["score"]
    cop._cache_size = len(bank_paths) + 8  # every bank image's encoding kept: each is a reference many times
    cop._cache_bytes = None  # (about 7 MB each at 256 px once the blend has made its views)
    tower = tower_for(cop.detector)
    bank = ReferenceBank.from_paths(bank_paths, tower)
    out = np.empty(len(paths))
    for i, p in enumerate(tqdm(paths, desc=f"{model} against {shots} lot references")):
        img = load_image(p)
        feature = global_features(tower, [to_float_array(img, GLOBAL_SIZE)])[0]
        refs = [str(r) for r, _ in bank.nearest(feature, shots, exclude=p)]
        out[i] = cop.analyze(img, refs).score
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, score=out, image_score=np.array(kind))
    return out


def model_scores_each(model: str, paths: list[Path], bank_paths: list[Path], shots: int, cache: Path) -> np.ndarray:
    """(N, shots) the model's image score of every image against each of its ``shots`` nearest bank images alone
    (the one-reference score), cached as :func:`model_scores` caches."""
    cop = _copilot(model)
    kind = cop.detector.image_score_for(1)
    if cache.exists():
        held = np.load(cache)
        if str(held["image_score"]) == kind:
            return held["score"]
    cop._cache_size = len(bank_paths) + 8
    cop._cache_bytes = None
    tower = tower_for(cop.detector)
    bank = ReferenceBank.from_paths(bank_paths, tower)
    out = np.empty((len(paths), shots))
    for i, p in enumerate(tqdm(paths, desc=f"{model} against each of {shots} lot references", mininterval=10)):
        img = load_image(p)
        feature = global_features(tower, [to_float_array(img, GLOBAL_SIZE)])[0]
        for j, (r, _) in enumerate(bank.nearest(feature, shots, exclude=p)):
            out[i, j] = cop.analyze(img, [str(r)]).score
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, score=out, image_score=np.array(kind))
    return out


def fused(second: np.ndarray, model: np.ndarray) -> np.ndarray:
    """The mutual score's and the model's robust z-scores on the lot, added."""
    return robust_z(second) + robust_z(model)


def draws(name: str, kind: str, paths: list[Path], prob: np.ndarray, dist: torch.Tensor, models: list[str],
          shots: int, pool_k: float, n_draws: int, ks: list[float], cache: Path) -> None:
    """Lots of all the normal cells with 5 % / 10 % of the defective ones drawn in, each a lot of its own
    (its own mutual passes, bank and model scores): AUROC of the mutual score and of the fused score, and
    at the lot threshold (median + k robust deviations) the false alarms and misses of each."""
    normal, bad = np.flatnonzero(prob == 0.0), np.flatnonzero(prob == 1.0)
    rng = np.random.default_rng(0)
    for share in (0.05, 0.10):
        rows: dict[str, list[tuple[float, ...]]] = {}
        for d in range(n_draws):
            drawn = rng.choice(bad, int(round(share * len(normal) / (1 - share))), replace=False)
            idx = np.concatenate([normal, drawn])
            is_bad = np.r_[np.zeros(len(normal), bool), np.ones(len(drawn), bool)]
            t = torch.from_numpy(idx)
            _, second = mutual_passes(dist[t][:, t])
            bank = idx[pool_of(torch.from_numpy(second), pool_k)]
            scores = {"mutual": second}
            for model in models:
                sc = model_scores(model, [paths[i] for i in idx], [paths[i] for i in bank], shots,
                                  cache / f"selfrefs-{name}-{model}-k{pool_k}-{shots}-lot{share}-{d}.npz")
                scores[f"mutual + {model}"] = fused(second, sc)
            for tag, sc in scores.items():
                row = [float(area(sc, is_bad.astype(float)))]
                for k in ks:
                    thr = lot_threshold(sc, k)
                    row += [float(np.mean(sc[~is_bad] >= thr)), float(np.mean(sc[is_bad] < thr))]
                rows.setdefault(tag, []).append(tuple(row))
        for tag, got in rows.items():
            m = np.mean(got, axis=0)
            line = f"  {kind} {share:.0%} defective, {tag}: AUROC {m[0]:.4f}"
            for j, k in enumerate(ks):
                line += f"; k {k}: FA {m[1 + 2 * j]:.3f} miss {m[2 + 2 * j]:.3f}"
            print(line + f" ({n_draws} lots)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", default="train", choices=("train", "test"))
    ap.add_argument("--kinds", nargs="+", default=["mono", "poly"])
    ap.add_argument("--shots", type=int, nargs="+", default=[1, 3, 5])
    ap.add_argument("--models", nargs="+", default=["default"])
    ap.add_argument("--pool-k", type=float, default=2.0, help="the bank: second-pass scores below the lot "
                    "threshold at this k")
    ap.add_argument("--lots", nargs="+", type=Path, default=[],
                    help="folders scored as lots instead of ELPV (images under a 'good' folder are normal)")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache/adcopilot/benchmarks/lot_trim")
    ap.add_argument("--draws", type=int, default=0, help="only mostly normal lots (5 %% / 10 %% defective), "
                    "this many of each, at the first of --shots")
    ap.add_argument("--rounds", type=int, default=1, help="2: the pool and bank chosen again by the joined score")
    ap.add_argument("--mad-k", type=float, nargs="+", default=[1.5, 2.0])
    ap.add_argument("--each", action="store_true", help="also the model against each lot reference alone, its "
                    "one-reference scores averaged (mean, median, smallest) instead of one comparison with all")
    ap.add_argument("--stretch", action="store_true", help="the mutual score on stretched grey levels (batch --mutual's "
                    "default); the model inspects the images as taken, as the product does")
    args = ap.parse_args()
    torch.set_num_threads(1)
    lots = {d.name: folder_lot(d) for d in args.lots} or {
        kind: [c for c in split(seed=0)[args.split] if c.kind == kind] for kind in args.kinds}
    for kind, cells in lots.items():
        paths = [Path(c.path) for c in cells]
        prob = np.array([c.probability for c in cells])
        name = (f"lot-{kind}" if args.lots else f"{args.split}-{kind}") + ("-stretch" if args.stretch else "")
        dist = window_distances([str(p) for p in paths], args.cache / f"{name}.npz", [15], stretch=args.stretch)[15]
        if args.draws:
            draws(name, kind, paths, prob, dist, args.models, args.shots[0], args.pool_k, args.draws, args.mad_k,
                  args.cache)
            continue
        first, second = mutual_passes(dist)
        bank_idx = np.array(pool_of(torch.from_numpy(second), args.pool_k))  # as batch --mutual's pool
        bad_in_bank = np.mean(prob[bank_idx] > 0)
        print(f"## {name}: {len(cells)} images, bank of {len(bank_idx)} ({bad_in_bank:.1%} not of probability 0); "
              f"mutual one pass {area(first, prob)}, two passes {area(second, prob)}", flush=True)
        zm = robust_z(second)
        tm = lot_threshold(second, 1.5)
        for model in args.models:
            for shots in args.shots:
                sc = model_scores(model, paths, [paths[i] for i in bank_idx], shots,
                                  args.cache / f"selfrefs-{name}-{model}-k{args.pool_k}-{shots}.npz")
                both = fused(second, sc)
                larger = np.maximum(second / tm, sc / lot_threshold(sc, 1.5))
                print(f"  {model} against {shots} lot references: alone {area(sc, prob)}; z added {area(both, prob)}; "
                      f"z added, model at half weight {area(zm + 0.5 * robust_z(sc), prob)}; "
                      f"larger of the two over their lot thresholds {area(larger, prob)}", flush=True)
                if args.each:  # the one-reference score against each lot reference alone, aggregated
                    each = model_scores_each(model, paths, [paths[i] for i in bank_idx], shots,
                                             args.cache / f"selfrefs-{name}-{model}-k{args.pool_k}-{shots}-each.npz")
                    for agg in ("mean", "median", "min"):
                        sa = getattr(np, agg)(each, axis=1)
                        print(f"    each alone, {agg}: alone {area(sa, prob)}; z added {area(fused(second, sa), prob)}; "
                              f"z added, model at half weight {area(zm + 0.5 * robust_z(sa), prob)}", flush=True)
                if args.rounds > 1:  # again: the pool and the bank from the joined score, both scores again
                    pool = np.zeros(len(paths), bool)
                    pool[pool_of(torch.from_numpy(both), args.pool_k)] = True
                    again = image_scores(pooled_patch_values(dist, pool, 0.05)).numpy()
                    sc2 = model_scores(model, paths, [paths[i] for i in np.flatnonzero(pool)], shots,
                                       args.cache / f"selfrefs-{name}-{model}-k{args.pool_k}-{shots}-round2.npz")
                    print(f"    round 2 (bank of {pool.sum()}, {np.mean(prob[pool] > 0):.1%} not of probability 0): "
                          f"mutual {area(again, prob)}, model alone {area(sc2, prob)}, z added "
                          f"{area(fused(again, sc2), prob)}; mutual of round 2 + model of round 1 "
                          f"{area(fused(again, sc), prob)}", flush=True)


if __name__ == "__main__":
    main()
