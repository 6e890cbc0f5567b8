"""Lot-level zero-shot on ELPV: mutual scoring again against only the images the first pass found normal.

The one-pass mutual score compares each image with the closest 30 % of *every* other image of the lot.
When many of the lot's images are defective and their defects look alike (dark cells, cracks of one
kind), a defect finds its look-alikes among them and scores low. A second pass scores every image again
against its closest ``closest`` share of a pool (the image itself left out): the ``keep`` share of the
lot the first pass scored lowest, or with ``--by-z`` the images below the first pass's lot threshold at
k = ``keep`` (``pool_of``, what ``batch --mutual`` does); ``rounds`` > 2 repeats it. The trim that lifted
PaDiM fitted on the lot (``benchmarks/lot_padim.py``), applied to the mutual score; no label is used.

Each lot's nearest-patch distances (N, N, P) are computed once (the joint view, the default tower or
``--tower``) and cached in float16, so every setting is read from the same tensor. Image AUROC of
probability 1 against 0, each cell type's split one lot, or folders as lots (``--lots``). Also:
``--thresholds`` scores lots of all normal cells with 5 % / 10 % of the defective ones drawn in, each as
a lot of its own (AUROC, and the lot threshold's false alarms and misses); ``--fuse`` adds Lite2 and
the lot PaDiM of ``benchmarks/lot_towers.py``. Run:

    python benchmarks/lot_trim.py --split train --by-z --keeps 1 1.5 2 3 --closest 0.3 0.1 0.05   # choosing
    python benchmarks/lot_trim.py --split train --kinds mono --thresholds one z:1.5:0.05 z:2:0.05
    python benchmarks/lot_trim.py --split test --by-z --keeps 2 --closest 0.05 --rounds 2          # measuring
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
import torch
from bench_mutual import folder_lot
from lot_padim import BATCH, area, robust_z
from tqdm import tqdm

from adcopilot import Copilot
from adcopilot.data.elpv import split
from adcopilot.eval.detection import auroc
from adcopilot.imaging import load_image, to_float_array
from adcopilot.model.backbone import load_backbone
from adcopilot.model.detector import to_batch
from adcopilot.model.mutual import (
    MATMUL_DTYPE,
    LotViews,
    image_scores,
    interval_mean,
    lot_features,
    lot_threshold,
    pool_of,
    relative_patch_values,
    view_distances,
)
from adcopilot.model.padim import stretch_grey
from adcopilot.model.vision import FusedPatchTower

SIZE = 256


def lot_view(paths: list[str], cache: Path, tower_name: str | None = None, stretch: bool = False) -> torch.Tensor:
    """(N, P, C) the lot's joint view (unit-norm patch features) on the default model's tower or the named
    frozen backbone, each image's grey levels stretched first if ``stretch`` (as ``batch --mutual`` reads
    them), cached beside its distances."""
    path = cache.with_suffix(".view.npy")
    if not path.exists():
        tower = (FusedPatchTower.from_tower(load_backbone(tower_name)) if tower_name
                 else Copilot.load().detector.fused_tower)
        views = []
        with torch.inference_mode():
            for start in tqdm(range(0, len(paths), BATCH), desc="features"):
                arrays = [to_float_array(load_image(p), SIZE) for p in paths[start : start + BATCH]]
                x = to_batch([stretch_grey(a) for a in arrays] if stretch else arrays)
                views.append(lot_features(tower, x))
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, LotViews.cat(views).views[0].float().numpy().astype(np.float16))
    return torch.from_numpy(np.load(path).astype(np.float32))


def lot_distances(paths: list[str], cache: Path, tower_name: str | None = None,
                  stretch: bool = False) -> torch.Tensor:
    """(N, N, P) float16: each patch of image i's nearest-patch distance to image j (inf for j = i)."""
    if cache.exists():
        return torch.from_numpy(np.load(cache)["dist"])
    view = lot_view(paths, cache, tower_name, stretch).to(MATMUL_DTYPE)
    n, p, _ = view.shape
    dist = torch.empty(n, n, p, dtype=torch.float16)
    for start in tqdm(range(0, n, 8), desc="distances"):
        rows = list(range(start, min(n, start + 8)))
        dist[rows] = view_distances(view, rows).clamp_max(60000).half()  # (R, N, P), inf kept as a large value
    np.savez(cache, dist=dist.numpy())
    return dist


def window_mask(p: int, radius: int) -> torch.Tensor:
    """(P, P) bool: patch q lies within ``radius`` grid steps of patch p (both axes) on the square grid."""
    side = int(round(p**0.5))
    yx = torch.stack(torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij"), -1).reshape(p, 2)
    return (yx[:, None] - yx[None]).abs().amax(dim=2) <= radius


@torch.inference_mode()
def window_distances(paths: list[str], cache: Path, radii: list[int], tower_name: str | None = None,
                     chunk: int = 32, stretch: bool = False) -> dict[int, torch.Tensor]:
    """{radius: (N, N, P) float16}: each patch of image i's nearest-patch distance to image j searched only
    within ``radius`` grid steps of its own place (aligned products), all radii from one product per pair;
    cached as ``<cache stem>-w<radius>.npz``."""
    files = {r: cache.with_name(f"{cache.stem}-w{r}.npz") for r in radii}
    todo = [r for r in radii if not files[r].exists()]
    if todo:
        view = lot_view(paths, cache, tower_name, stretch).to(MATMUL_DTYPE)
        n, p, c = view.shape
        outside = {r: ~window_mask(p, r) for r in todo}
        dist = {r: torch.empty(n, n, p, dtype=torch.float16) for r in todo}
        with torch.inference_mode():
            for start in tqdm(range(0, n, 8), desc=f"window distances {todo}"):
                rows = list(range(start, min(n, start + 8)))
                queries = view[rows].reshape(len(rows) * p, c)
                for j0 in range(0, n, chunk):
                    block = view[j0 : j0 + chunk]
                    sim = (queries @ block.reshape(-1, c).T).float().view(len(rows), p, len(block), p)  # (R, P, J, P)
                    for r in todo:
                        best = sim.masked_fill(outside[r][None, :, None, :], -1.0).amax(dim=3)  # (R, P, J)
                        dist[r][rows, j0 : j0 + len(block)] = (1.0 - best).clamp_min(0).transpose(1, 2).half()
                for i in rows:
                    for r in todo:
                        dist[r][i, i] = 60000.0  # the image itself: never among its closest
        for r in todo:
            np.savez(files[r], dist=dist[r].numpy())
    return {r: torch.from_numpy(np.load(files[r])["dist"]) for r in radii}


@torch.inference_mode()
def masked_distances(view: torch.Tensor, rows: list[int], usable: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """(N, P, C) view, (N, P) bool usable patches -> (R, N, P): each patch of the images ``rows``'s distance to
    its nearest *usable* patch of every image (2 where an image has none; inf for the image itself)."""
    n, p, c = view.shape
    r = len(rows)
    queries = view[rows].reshape(r * p, c).to(torch.bfloat16)
    out = torch.empty(r, n, p)
    for start in range(0, n, chunk):
        block = view[start : start + chunk].to(torch.bfloat16)  # (J, P, C)
        sim = (queries @ block.reshape(-1, c).T).float().view(r, p, len(block), p)  # (R, P, J, P)
        sim.masked_fill_(~usable[start : start + chunk][None, None], -1.0)
        out[:, start : start + len(block)] = (1.0 - sim.amax(dim=3)).transpose(1, 2)
    out[torch.arange(r), torch.as_tensor(rows)] = float("inf")
    return out.clamp_min_(0)


def patch_pool_scores(view: torch.Tensor, first: torch.Tensor, k: float, closest: float, image_pool: np.ndarray | None,
                      top_k: int = 3) -> np.ndarray:
    """Second pass with a pool of *patches*: every patch whose first-pass value is below the lot's patch
    threshold at ``k`` (median + k robust deviations over all the lot's patch values), in the images of
    ``image_pool`` (all when None); each image against its closest ``closest`` share of the others."""
    n, p, _ = view.shape
    usable = first < lot_threshold(first.flatten().numpy(), k)  # (N, P)
    if image_pool is not None:
        usable &= torch.from_numpy(image_pool)[:, None]
    cols = np.flatnonzero(usable.any(dim=1).numpy())
    out = torch.empty(n, p)
    for start in tqdm(range(0, n, 8), desc=f"patch pool k {k}", leave=False):
        rows = list(range(start, min(n, start + 8)))
        d = masked_distances(view, rows, usable)[:, cols]  # (R, M, P)
        for k_row, i in enumerate(rows):
            mine = cols != i
            out[i] = interval_mean(d[k_row : k_row + 1, mine], (0.0, closest), int(mine.sum()))[0]
    return image_scores(out, top_k).numpy()


def pooled_patch_values(dist: torch.Tensor, pool: np.ndarray, closest: float) -> torch.Tensor:
    """(N, N, P) distances, (N,) bool pool -> (N, P): each image's patch values against the pool less itself."""
    n = len(dist)
    out = torch.empty(n, dist.shape[2])
    cols = torch.from_numpy(np.flatnonzero(pool))
    for i in range(n):
        others = cols[cols != i]
        out[i] = interval_mean(dist[i, others].float().unsqueeze(0), (0.0, closest), len(others))[0]
    return out


def trimmed_scores(dist: torch.Tensor, keep: float, closest: float, rounds: int, top_k: int = 3,
                   by_z: bool = False, first: float = 0.3, floor: float | None = None) -> np.ndarray:
    """Image scores after ``rounds`` passes: the first against the whole lot (its closest ``first`` share),
    each later one against the ``keep`` share of the lot the previous pass scored lowest, or with
    ``by_z`` against the images whose previous score is below ``keep`` robust deviations above the
    lot's median (the lot's own threshold: what the previous pass judged normal). ``floor``: the last pass's
    patch values less each image's own quantile of them (``mutual.relative_patch_values``)."""
    n = len(dist)
    values = pooled_patch_values(dist, np.ones(n, bool), first)
    scores = image_scores(relative_patch_values(values, floor if rounds == 1 else None), top_k).numpy()
    for r in range(rounds - 1):
        if by_z:  # the product's pool: below the lot threshold at k = keep
            pool = np.zeros(n, bool)
            pool[pool_of(torch.from_numpy(scores), keep)] = True
        else:
            pool = np.zeros(n, bool)
            pool[np.argsort(scores, kind="stable")[: max(2, int(round(keep * n)))]] = True
        values = pooled_patch_values(dist, pool, closest)
        scores = image_scores(relative_patch_values(values, floor if r == rounds - 2 else None), top_k).numpy()
    return scores


def fusions(split_name: str, kind: str, prob: np.ndarray, setting: tuple[float, float, int], cache: Path,
            padim_cache: Path, by_z: bool = False) -> None:
    """The trimmed mutual score of both towers beside and fused with the lot PaDiM of
    ``benchmarks/lot_towers.py`` (its cached per-cell scores): robust z-scores on the lot added."""
    keep, closest, rounds = setting
    trimmed, padim = {}, {}
    for tower, suffix in (("efficientnet-lite0", ""), ("efficientnet-lite2", "-efficientnet-lite2")):
        dist = lot_distances([], cache / f"{split_name}-{kind}{suffix}.npz")
        trimmed[tower] = trimmed_scores(dist, keep, closest, rounds, by_z=by_z)
        padim[tower] = np.load(padim_cache / f"{split_name}-{kind}-{tower}.npz")["padim"]
    z = {k: robust_z(v) for k, v in trimmed.items()}
    zp = {k: robust_z(v) for k, v in padim.items()}
    lite0, lite2 = "efficientnet-lite0", "efficientnet-lite2"
    rows = {
        "trimmed mutual lite0": trimmed[lite0],
        "trimmed mutual lite2": trimmed[lite2],
        "trimmed mutual, towers' z added": z[lite0] + z[lite2],
        "trimmed mutual + lot PaDiM, lite0 (w 0.5)": z[lite0] + 0.5 * zp[lite0],
        "trimmed mutual + lot PaDiM, lite2 (w 0.5)": z[lite2] + 0.5 * zp[lite2],
        "all four z-scores": z[lite0] + z[lite2] + zp[lite0] + zp[lite2],
        "both trimmed mutual + both PaDiMs at 0.5": z[lite0] + z[lite2] + 0.5 * (zp[lite0] + zp[lite2]),
    }
    print(f"## fusions, {split_name} {kind}, {'k' if by_z else 'keep'} {keep} closest {closest} rounds {rounds}")
    for name, v in rows.items():
        print(f"  {name:45s} {area(v, prob)}", flush=True)


def threshold_draws(kind: str, dist: torch.Tensor, prob: np.ndarray, variants: list[str], draws: int,
                    ks: list[float]) -> None:
    """Lots of all the normal cells with 5 % / 10 % defective cells drawn in, each scored as a lot of its own
    (the pool depends on the lot): image AUROC, and at the lot threshold (median + k robust deviations) the
    false alarms on its normal cells and the misses on its defective ones. A variant is ``share:KEEP:CLOSEST``
    or ``z:K:CLOSEST`` (two passes), or ``one`` (today's one pass)."""
    normal, bad = np.flatnonzero(prob == 0.0), np.flatnonzero(prob == 1.0)
    rng = np.random.default_rng(0)
    for share in (0.05, 0.10):
        got: dict[tuple[str, float], list[tuple[float, float]]] = {}
        areas: dict[str, list[float]] = {}
        for _ in tqdm(range(draws), desc=f"{kind} {share:.0%} lots"):
            drawn = rng.choice(bad, int(round(share * len(normal) / (1 - share))), replace=False)
            idx = torch.from_numpy(np.concatenate([normal, drawn]))
            sub = dist[idx][:, idx]
            is_bad = np.r_[np.zeros(len(normal), bool), np.ones(len(drawn), bool)]
            for v in variants:
                if v == "one":
                    sc = trimmed_scores(sub, 1.0, 0.3, 1)
                else:
                    how, keep, closest = v.split(":")
                    sc = trimmed_scores(sub, float(keep), float(closest), 2, by_z=how == "z")
                areas.setdefault(v, []).append(auroc(sc, is_bad.astype(int).tolist()))
                for k in ks:
                    t = lot_threshold(sc, k)
                    got.setdefault((v, k), []).append((np.mean(sc[~is_bad] >= t), np.mean(sc[is_bad] < t)))
        for v in variants:
            line = f"  {kind} {share:.0%} defective, {v}: AUROC {np.mean(areas[v]):.4f}"
            for k in ks:
                fa, miss = np.mean(got[(v, k)], axis=0)
                line += f"; k {k}: FA {fa:.3f} miss {miss:.3f}"
            print(line + f" ({draws} lots)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", default="test", choices=("train", "test"))
    ap.add_argument("--kinds", nargs="+", default=["mono", "poly"])
    ap.add_argument("--keeps", type=float, nargs="+", default=[0.8, 0.6, 0.5, 0.4])
    ap.add_argument("--closest", type=float, nargs="+", default=[0.3, 0.1])
    ap.add_argument("--by-z", action="store_true", help="keeps are robust deviations above the median, not shares")
    ap.add_argument("--first", type=float, nargs="+", default=[0.3], help="the first pass's closest shares")
    ap.add_argument("--rounds", type=int, nargs="+", default=[2, 3])
    ap.add_argument("--tower", default=None, help="a frozen backbone's name (default: the default model's tower)")
    ap.add_argument("--lots", nargs="+", type=Path, default=[],
                    help="folders scored as lots instead of ELPV (images under a 'good' folder are normal)")
    ap.add_argument("--thresholds", nargs="+", default=None, help="variants (one, share:KEEP:CLOSEST, z:K:CLOSEST): "
                    "only mostly normal lots, their AUROC and lot threshold")
    ap.add_argument("--tops", type=int, nargs="+", default=[3], help="the image score's top-k patches")
    ap.add_argument("--draws", type=int, default=10)
    ap.add_argument("--mad-k", type=float, nargs="+", default=[1.0, 1.5, 2.0])
    ap.add_argument("--patch-pool", type=float, nargs="+", default=None,
                    help="k's of the patch pool (patches below the lot's patch threshold), second pass at --closest")
    ap.add_argument("--windows", type=int, nargs="+", default=None,
                    help="radii (grid steps) of a search restricted to each patch's own place; scored beside the "
                    "global search with the first --keeps / --closest / --rounds setting")
    ap.add_argument("--fuse", default=None, help="keep,closest,rounds: only the fusions with lot PaDiM and Lite2")
    ap.add_argument("--padim-cache", type=Path, default=Path.home() / ".cache/adcopilot/benchmarks/lot_towers")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache/adcopilot/benchmarks/lot_trim")
    ap.add_argument("--floors", type=float, nargs="+", default=None,
                    help="only the default two passes (k 2, closest 0.05), without and with each image floor (quantiles)")
    ap.add_argument("--stretch", action="store_true", help="every image's grey levels stretched before its features "
                    "(MutualRecipe.stretch, batch --mutual's default)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    lots = {d.name: folder_lot(d) for d in args.lots} or {
        kind: [c for c in split(seed=0)[args.split] if c.kind == kind] for kind in args.kinds}
    for kind, cells in lots.items():
        prob = np.array([c.probability for c in cells])
        if args.fuse:
            keep, closest, rounds = args.fuse.split(",")
            fusions(args.split, kind, prob, (float(keep), float(closest), int(rounds)), args.cache, args.padim_cache,
                    args.by_z)
            continue
        name = ((f"lot-{kind}" if args.lots else f"{args.split}-{kind}") + (f"-{args.tower}" if args.tower else "")
                + ("-stretch" if args.stretch else ""))
        if args.windows:
            keep, closest, rounds = args.keeps[0], args.closest[0], args.rounds[0]
            # radius 15 on the 16 x 16 grid is the global search (the same products, read the same way)
            windowed = window_distances([str(c.path) for c in cells], args.cache / f"{name}.npz",
                                        sorted(set(args.windows) | {15}), args.tower, stretch=args.stretch)
            plain = trimmed_scores(windowed.pop(15), keep, closest, rounds, by_z=args.by_z)
            print(f"## {name}: global search, keep {keep} closest {closest} rounds {rounds}: {area(plain, prob)}")
            for r, wd in windowed.items():
                got = trimmed_scores(wd, keep, closest, rounds, by_z=args.by_z)
                print(f"window {r}: {area(got, prob)}; z-scores added to the global's: "
                      f"{area(robust_z(got) + robust_z(plain), prob)}", flush=True)
            continue
        dist = lot_distances([str(c.path) for c in cells], args.cache / f"{name}.npz", args.tower, args.stretch)
        if args.thresholds:
            threshold_draws(kind, dist, prob, args.thresholds, args.draws, args.mad_k)
            continue
        print(f"## {'' if args.lots else args.split} {kind} ({len(cells)} images)")
        if args.patch_pool:
            view = lot_view([str(c.path) for c in cells], args.cache / f"{name}.npz", args.tower, args.stretch)
            first = pooled_patch_values(dist, np.ones(len(cells), bool), 0.3)
            image_pool = np.zeros(len(cells), bool)
            image_pool[pool_of(image_scores(first), 2.0)] = True
            for k, closest in itertools.product(args.patch_pool, args.closest):
                for tag, ip in (("patches", None), ("patches of the image pool (k 2)", image_pool)):
                    got = patch_pool_scores(view, first, k, closest, ip)
                    print(f"patch pool k {k}, {tag}, closest {closest}: {area(got, prob)}", flush=True)
            continue
        if args.floors:
            for fl in [None, *args.floors]:
                got = trimmed_scores(dist, 2.0, 0.05, 2, by_z=True, floor=fl)
                print(f"two passes (k 2, closest 0.05), floor {fl}: {area(got, prob)}", flush=True)
            continue
        print(f"plain (closest 30 %, one pass): {area(trimmed_scores(dist, 1.0, 0.3, 1), prob)}")
        for first, keep, closest, rounds, top in itertools.product(args.first, args.keeps, args.closest, args.rounds,
                                                                    args.tops):
            got = trimmed_scores(dist, keep, closest, rounds, top_k=top, by_z=args.by_z, first=first)
            tag = ("" if first == 0.3 else f"first {first} ") + ("" if top == 3 else f"top {top} ")
            print(f"{tag}keep {keep} closest {closest} rounds {rounds}: {area(got, prob)}", flush=True)


if __name__ == "__main__":
    main()
