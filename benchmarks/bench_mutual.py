"""Lot-level zero-shot scoring on ELPV: one split of each cell type taken as one lot, no references.

Every cell of the type's split (seed 0; all defect probabilities, as a real lot) is scored against the
other cells of the lot (:mod:`adcopilot.model.mutual`); image AUROC of probability 1 against 0, as
``bench_elpv.py``. Each view (``layer:window``, e.g. ``s8:1 s16:3``; ``joint:1`` is the scoring before
the recipe had views) is scored once, with every ``--intervals`` share at the same cost; then the
recipes in ``--recipes`` (views joined by ``+``, an interval ``lo-hi``, and optionally ``floor=Q``,
``top=K``, ``graph=K,K``) are put together from those patch values, one part at a time. The last recipe
is also measured with the lot's own threshold (``--mad-k``): the false alarms and misses of median + k
robust deviations on the whole split and on lots of its normal cells with 5 % / 10 % of its defective
cells drawn in (200 draws). Times are of the views a recipe uses, per image of the lot. Every recipe
here is one pass: the second pass against what the first judged normal (``MutualRecipe.pool_k``) is
measured by ``benchmarks/lot_trim.py``. Run:

    python benchmarks/bench_mutual.py [--split test] [--kinds mono poly] [--views joint:1 s8:1 s16:1]
        [--intervals 0-0.3] [--recipes "joint:1 0-0.3" "s8:1+s16:1 0-0.3 floor=0.25 top=10"]
        [--mad-k 1.5] [--limit N]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from adcopilot import Copilot
from adcopilot.data.elpv import split
from adcopilot.data.folders import list_images
from adcopilot.eval.detection import auroc
from adcopilot.imaging import load_image, to_float_array
from adcopilot.model.detector import to_batch
from adcopilot.model.mutual import (
    LotViews,
    MutualRecipe,
    interval_mean,
    lot_features,
    lot_image_scores,
    lot_threshold,
    view_distances,
)
from adcopilot.model.padim import stretch_grey


@dataclass(frozen=True)
class Measured:
    """A recipe of the command line: its views (``layer:window``) and the scoring settings."""

    views: tuple[str, ...]
    recipe: MutualRecipe


def parse_recipe(text: str) -> Measured:
    views, interval, *extra = text.split()
    lo, hi = (float(v) for v in interval.split("-"))
    opts = dict(item.split("=") for item in extra)
    names = tuple(views.split("+"))
    recipe = MutualRecipe(
        layers=tuple(dict.fromkeys(v.split(":")[0] for v in names)),
        windows=tuple(dict.fromkeys(int(v.split(":")[1]) for v in names)),
        interval=(lo, hi),
        top_k=int(opts.get("top", 3)),
        floor=float(opts["floor"]) if "floor" in opts else None,
        neighbours=tuple(int(k) for k in opts["graph"].split(",")) if "graph" in opts else (),
    )
    return Measured(names, recipe)


@dataclass(frozen=True)
class LotImage:
    path: Path
    probability: float  # 0 normal, 1 defective (ELPV's convention)


def folder_lot(folder: Path) -> list[LotImage]:
    paths = [p for p in list_images(folder) if "ground_truth" not in p.parts]
    return [LotImage(p, 0.0 if "good" in p.relative_to(folder).parts else 1.0) for p in paths]


def encode(cells: list, tower, size: int, recipe: MutualRecipe, kind: str, stretch: bool = False) -> LotViews:
    parts = []
    read = stretch_grey if stretch else (lambda x: x)
    for start in tqdm(range(0, len(cells), 16), desc=f"{kind} features"):
        batch = [read(to_float_array(load_image(c.path), size)) for c in cells[start : start + 16]]
        parts.append(lot_features(tower, to_batch(batch), recipe))
    return LotViews.cat(parts)


def view_values(view: torch.Tensor, intervals: list[tuple[float, float]], kind: str, name: str) -> list[torch.Tensor]:
    """(N, P, C) one view -> per interval (N, P) patch values, from one pass over the lot."""
    n, p, _ = view.shape
    out = [torch.empty(n, p) for _ in intervals]
    for start in tqdm(range(0, n, 8), desc=f"{kind} {name}"):
        rows = list(range(start, min(n, start + 8)))
        d = view_distances(view, rows)  # (R, N, P)
        for o, iv in zip(out, intervals, strict=True):
            o[start : start + len(rows)] = interval_mean(d, iv, n - 1)
    return out


def threshold_report(kind: str, scores: np.ndarray, prob: np.ndarray, k: float) -> None:
    normal, bad = scores[prob == 0.0], scores[prob == 1.0]
    t = lot_threshold(scores, k)
    line = f"{kind}: lot threshold k={k}: whole split FA {np.mean(normal >= t):.3f} miss {np.mean(bad < t):.3f}"
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
    ap.add_argument("--split", default="test", choices=("train", "test"))
    ap.add_argument("--kinds", nargs="+", default=["mono", "poly"])
    ap.add_argument("--lots", nargs="+", type=Path, default=[],
                    help="folders scored as lots instead of ELPV (images under any 'good' folder are normal, the rest "
                    "defective; 'ground_truth' folders left out)")
    ap.add_argument("--views", nargs="+", default=["joint:1", "s8:1", "s16:1"], help="layer:window, scored once each")
    ap.add_argument("--intervals", nargs="+", default=["0-0.3"], help="lo-hi shares of the other images")
    ap.add_argument("--recipes", nargs="+", default=["joint:1 0-0.3", "s8:1+s16:1 0-0.3"])
    ap.add_argument("--mad-k", type=float, nargs="*", default=[], help="report the last recipe's lot threshold at these k")
    ap.add_argument("--limit", type=int, default=None, help="a seeded subset of each lot, for quick runs")
    ap.add_argument("--stretch", action="store_true", help="every image's grey-level 1st-99th percentiles stretched to "
                    "0-1 before its features (model/padim.py stretch_grey)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    intervals = [tuple(float(v) for v in iv.split("-")) for iv in args.intervals]
    recipes = [parse_recipe(r) for r in args.recipes]
    views = list(dict.fromkeys(args.views))
    for m in recipes:
        missing = set(m.views) - set(views) or ({m.recipe.interval} - set(intervals))
        if missing or m.recipe.problems():
            raise SystemExit(f"recipe {m}: {missing or m.recipe.problems()} not measured (--views / --intervals)")
    every = MutualRecipe(layers=tuple(dict.fromkeys(v.split(":")[0] for v in views)),
                         windows=tuple(dict.fromkeys(int(v.split(":")[1]) for v in views)))
    cp = Copilot.load()
    tower, size = cp.detector.fused_tower, cp.detector.image_size
    lots = {d.name: folder_lot(d) for d in args.lots} or {
        f"ELPV {kind} {args.split}": [c for c in split(seed=0)[args.split] if c.kind == kind] for kind in args.kinds}
    for kind, cells in lots.items():
        if args.limit:
            rng = np.random.default_rng(0)
            cells = [cells[i] for i in sorted(rng.permutation(len(cells))[: args.limit])]
        t0 = time.perf_counter()
        lot = encode(cells, tower, size, every, kind, args.stretch)
        per_image = (time.perf_counter() - t0) / len(cells)
        prob = np.array([c.probability for c in cells])
        keep = np.isin(prob, (0.0, 1.0))
        labels = (prob[keep] == 1.0).astype(int).tolist()
        values: dict[tuple[str, tuple[float, float]], torch.Tensor] = {}
        seconds: dict[str, float] = {}
        names = [f"{layer}:{r}" for layer in every.layers for r in every.windows]  # the lot's view order
        for name in views:
            t = time.perf_counter()
            for iv, v in zip(intervals, view_values(lot.views[names.index(name)], intervals, kind, name), strict=True):
                values[(name, iv)] = v
            seconds[name] = time.perf_counter() - t
            print(f"{kind}: view {name} scored in {seconds[name]:.0f} s "
                  f"({seconds[name] / len(cells):.3f} s per image)", flush=True)
        for m in recipes:
            patch = torch.stack([values[(v, m.recipe.interval)] for v in m.views]).mean(0)  # (N, P)
            scores = lot_image_scores(patch, lot.global_features, m.recipe).numpy()
            cost = sum(seconds[v] for v in m.views) / len(cells)
            print(f"{kind}: lot of {len(cells)} ({sum(labels)} defective / {len(labels) - sum(labels)} "
                  f"normal): {' + '.join(m.views)} interval {m.recipe.interval} floor {m.recipe.floor} top "
                  f"{m.recipe.top_k} graph {m.recipe.neighbours}: image AUROC {auroc(scores[keep], labels):.4f}; "
                  f"{cost:.3f} s per image scoring, {per_image:.3f} s features (all views)", flush=True)
        for k in args.mad_k:
            threshold_report(kind, scores, prob, k)


if __name__ == "__main__":
    main()
