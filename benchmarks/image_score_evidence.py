"""Collect the default model's per-pair evidence once, to compare image-score rules offline.

For each query and its drawn reference(s), the inspection core's steps are run (registration onto the
first reference, the nano detector in the reference frame) and saved: the comparison model's smoothed
probability map (S, S) and the nearest-reference patch distance (h, w) from which the training-free
baseline's map and score come (the same frozen features). Rules for the image score are then
compared on these arrays without rerunning the model (``benchmarks/bench_image_score.py``).

Sets:

* ``elpv-val``: ELPV *training* split only (for choosing a rule): per cell type, up to ``--per-side``
  normal and defective (probability 1) training cells as queries, references drawn from the other
  training normals of that type.
* ``elpv-test``: ELPV test split (probability 0 and 1), references from the training normals, drawn as
  ``bench_elpv.py`` draws them for the same seed.
* ``photos``: the bundled benchmark's held-out photo classes (test images, a reference drawn from the
  class's template shots).
* ``surfaces``: the outside surfaces of ``benchmarks/surfaces.py`` (built on demand), in the photos' layout.
* ``synth``: stage-1-style synthetic pairs (procedural products and licensed training photos with
  synthetic defects) from a seed training never used.

    python benchmarks/image_score_evidence.py --set elpv-test --seeds 0 1 --out /tmp/evidence
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from adcopilot.assets import home
from adcopilot.data.elpv import split
from adcopilot.data.pairs import PairSampler
from adcopilot.eval.bundled import PHOTOS_DATASET, bundled_dir, ensure_bundled
from adcopilot.imaging import load_image, to_float_array
from adcopilot.model.inspection import align
from adcopilot.model.nano import NanoDetector
from adcopilot.model.registry import load_detector, resolve_model
from adcopilot.model.score import dihedral_views, nearest_distance, self_distance, view_distance

SURFACES = home() / "benchmarks" / "surfaces" / "Surfaces"  # benchmarks/surfaces.py's output
SYNTH_SEED = 9_000_001  # never a training seed
TWIN_GATE = 0.3  # self3t: twins farther than this from the references are not admitted
TWIN_QUANTILES = {"self3m": 0.5, "self3q": 0.75}  # twins farther from the references than this quantile of the
# query's own distances are not admitted


def aggregated(grid: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) unit-norm features -> each the renormalised mean of its 3 x 3 neighbourhood."""
    return F.normalize(F.avg_pool2d(grid, 3, 1, 1, count_include_pad=False), dim=1)


#: Half-stride shifts (px at the model's size) whose views are searched for ``dist8s``.
SHIFTS = ((4, 0), (0, 4), (4, 4))


def _shift(arr: np.ndarray, shift: tuple[int, int]) -> np.ndarray:
    """(S, S, 3) ``arr`` moved by (dx, dy) px, the edge reflected into the gap."""
    m = np.float32([[1, 0, shift[0]], [0, 1, shift[1]]])
    return cv2.warpAffine(arr, m, arr.shape[1::-1], flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REFLECT)


def _arr(path: Path, size: int) -> np.ndarray:
    return to_float_array(load_image(path, name=str(path)), size)


def stretched(arr: np.ndarray) -> np.ndarray:
    """(S, S, 3) float image with its grey levels' 1st and 99th percentiles stretched to 0 and 1 (a
    photometric normalisation measured with ``--stretch``)."""
    lo, hi = np.percentile(arr.mean(-1), [1, 99])
    return np.clip((arr - lo) / max(hi - lo, 1e-3), 0, 1).astype(np.float32)


def elpv_pairs(
    which: str, seed: int, shots: int, per_side: int, limit: int | None = None, ref_pool: int | None = None
) -> Iterator[tuple[str, int, list[Path], Path]]:
    """(kind, label, reference paths, query path) in bench_elpv.py's order and draws for the test split."""
    parts = split(seed=0)
    for kind in ("mono", "poly"):
        normals = [c for c in parts["train"] if c.kind == kind and c.probability == 0.0]
        rng = np.random.default_rng(seed)
        if which == "elpv-test":
            items = [c for c in parts["test"] if c.kind == kind and c.probability in (0.0, 1.0)]
            if limit:  # bench_elpv.py's subset for this seed
                items = [items[i] for i in sorted(rng.permutation(len(items))[:limit])]
        else:  # validation on the training split: queries never serve as their own reference
            pick = np.random.default_rng(1000 + seed)
            good = normals
            bad = [c for c in parts["train"] if c.kind == kind and c.probability == 1.0]
            items = [good[i] for i in pick.permutation(len(good))[:per_side]]
            items += [bad[i] for i in pick.permutation(len(bad))[:per_side]]
        # A pool of references per type keeps their encodings cached (each is encoded in 8 views).
        pool_all = [normals[i] for i in sorted(rng.permutation(len(normals))[:ref_pool])] if ref_pool else normals
        for c in items:
            pool = [n for n in pool_all if n.path != c.path]
            refs = [pool[i].path for i in rng.choice(len(pool), shots, replace=False)]
            yield kind, int(c.probability == 1.0), refs, c.path


def photo_pairs(seed: int, shots: int, root: Path | None = None) -> Iterator[tuple[str, int, list[Path], Path]]:
    """(class, label, references, query) of a class dataset (the bundled photos unless ``root``)."""
    if root is None:
        ensure_bundled()
        root = bundled_dir() / PHOTOS_DATASET
    elif not root.is_dir():
        raise SystemExit(f"{root}: not built (python benchmarks/surfaces.py)")
    rng = np.random.default_rng(seed)
    for cls in sorted(p.name for p in root.iterdir() if p.is_dir()):
        templates = sorted((root / cls / "train" / "good").glob("*.png"))
        for sub in sorted((root / cls / "test").iterdir()):
            for q in sorted(sub.glob("*.png")):
                refs = [templates[i] for i in rng.choice(len(templates), shots, replace=False)]
                yield cls, int(sub.name != "good"), refs, q


@torch.inference_mode()
def collect(
    detector: NanoDetector, pairs, size: int, registration: bool = True, shifts: bool = False, stretch: bool = False
) -> dict[str, np.ndarray]:
    probs, dists, dists8, dists8s, labels, groups, names, ms = [], [], [], [], [], [], [], []
    dists8_agg, selfs, ref_selfs, selfs_n, selfs_t = [], [], [], [], []
    selfs_q: dict[str, list[np.ndarray]] = {key: [] for key in TWIN_QUANTILES}
    cache: dict[str, object] = {}
    for group, label, refs, query in pairs:
        ref_arrays = []
        for r in refs:
            key = str(r) if isinstance(r, Path) else None
            if key is None or key not in cache:
                arr = _arr(r, size) if isinstance(r, Path) else r
                arr = stretched(arr) if stretch else arr
                grids = [detector.patch_features(v)[0] for v in dihedral_views(arr)]  # 8 x (C, h, w)
                views = torch.cat([g.flatten(1).T for g in grids])  # (8N, C)
                # With ``shifts``, the views at the other half-stride phases too (half a patch: 4 px at stride 8).
                shifted = [detector.patch_features(v)[0].flatten(1).T for s in (SHIFTS if shifts else ())
                           for v in dihedral_views(_shift(arr, s))]
                views_s = torch.cat([views, *shifted])  # (32N, C) with shifts, else the views
                views_agg = torch.cat([aggregated(g[None])[0].flatten(1).T for g in grids])
                side = grids[0].shape[-1]
                ref_self = self_distance(grids[0].flatten(1).T, (side, side)).view(side, side).numpy()  # as taken
                entry = (arr, detector.encode_reference(arr), views, views_agg, ref_self, views_s)
                if key is not None:
                    cache[key] = entry
            else:
                entry = cache[key]
            ref_arrays.append(entry)
        q = _arr(query, size) if isinstance(query, Path) else query
        q = stretched(q) if stretch else q
        t = time.perf_counter()
        q = align(q, ref_arrays[0][0], registration=registration).compared  # as the inspection core aligns it
        d = detector.detection(q, [e[1] for e in ref_arrays])
        ms.append((time.perf_counter() - t) * 1e3)
        h = d.features.shape[-1]
        d8 = nearest_distance(d.features.flatten(1).T, torch.cat([e[2] for e in ref_arrays]))  # (N,)
        dists8.append(d8.view(h, h).numpy().astype(np.float32))
        d8s = nearest_distance(d.features.flatten(1).T, torch.cat([e[5] for e in ref_arrays]))
        dists8s.append(d8s.view(h, h).numpy().astype(np.float32))
        agg = aggregated(d.features[None])[0].flatten(1).T
        dists8_agg.append(nearest_distance(agg, torch.cat([e[3] for e in ref_arrays])).view(h, h).numpy())
        tokens = d.features.flatten(1).T  # (N, C)
        selfs.append(self_distance(tokens, (h, h)).view(h, h).numpy())
        # self3n: each twin counted at its own d8 as the detector computes it (views searched on its candidates)
        d1 = torch.from_numpy(d.distance[:: size // h, :: size // h].astype(np.float32))
        d8c = view_distance(d1, tokens, torch.cat([e[2] for e in ref_arrays])).flatten()
        selfs_n.append(self_distance(tokens, (h, h), twin_cost=d8c).view(h, h).numpy())
        # self3t: only twins the references explain to within the gate count (the others cost 2, no match)
        admitted = torch.where(d8c < TWIN_GATE, d8c, torch.full_like(d8c, 2.0))
        selfs_t.append(self_distance(tokens, (h, h), twin_cost=admitted).view(h, h).numpy())
        # self3m: only twins that are ordinary patches of this query (no farther from the references than its
        # median patch): a large defect's milder parts are not ordinary, so they cannot explain its worst
        for key, quantile in TWIN_QUANTILES.items():
            ordinary = torch.where(d8c <= torch.quantile(d8c, quantile), d8c, torch.full_like(d8c, 2.0))
            selfs_q[key].append(self_distance(tokens, (h, h), twin_cost=ordinary).view(h, h).numpy())
        ref_selfs.append(ref_arrays[0][4])
        probs.append(d.amap.astype(np.float16))
        dists.append(d.distance[:: size // h, :: size // h].astype(np.float32))  # (h, w) patch values
        labels.append(label)
        groups.append(group)
        names.append(str(query) if isinstance(query, Path) else query_name(len(names)))
    return {"prob": np.stack(probs), "dist": np.stack(dists), "dist8": np.stack(dists8),
            **({"dist8s": np.stack(dists8s)} if shifts else {}),
            "dist8_agg": np.stack(dists8_agg).astype(np.float32), "self3": np.stack(selfs).astype(np.float32),
            "ref_self3": np.stack(ref_selfs).astype(np.float32), "self3n": np.stack(selfs_n).astype(np.float32),
            "self3t": np.stack(selfs_t).astype(np.float32),
            **{key: np.stack(v).astype(np.float32) for key, v in selfs_q.items()},
            "label": np.array(labels),
            "group": np.array(groups), "name": np.array(names), "ms": np.array(ms)}


def query_name(i: int) -> str:
    return f"synth-{i:05d}"


def synth_pairs(n: int, seed: int) -> Iterator[tuple[str, int, list[np.ndarray], np.ndarray]]:
    sampler = PairSampler(256, p_normal=0.5, p_general=0.0, seed=SYNTH_SEED + seed)
    for _ in range(n):
        p = sampler.sample()
        yield p.category.split(":")[0], p.label, [p.reference], p.query


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", required=True, choices=["elpv-val", "elpv-test", "photos", "surfaces", "synth"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--shots", type=int, default=1)
    ap.add_argument("--per-side", type=int, default=100, help="elpv-val: normal and defective cells per type")
    ap.add_argument("--limit", type=int, default=None, help="elpv-test: cells per type (bench_elpv.py's subset)")
    ap.add_argument("--ref-pool", type=int, default=None, help="ELPV: draw references from this many normals")
    ap.add_argument("--n", type=int, default=300, help="synth: pairs")
    ap.add_argument("--model", default="default")
    ap.add_argument("--shifts", action="store_true",
                    help="also save dist8s: the views at the other half-stride phases searched too")
    ap.add_argument("--stretch", action="store_true",
                    help="stretch every image's grey-level 1st-99th percentiles to 0-1 before anything else")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    detector, _ = load_detector(resolve_model(args.model))
    args.out.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        if args.set.startswith("elpv"):
            pairs = elpv_pairs(args.set, seed, args.shots, args.per_side, args.limit, args.ref_pool)
        elif args.set == "photos":
            pairs = photo_pairs(seed, args.shots)
        elif args.set == "surfaces":
            pairs = photo_pairs(seed, args.shots, SURFACES)
        else:
            pairs = synth_pairs(args.n, seed)
        data = collect(detector, tqdm(pairs, desc=f"{args.set} seed {seed}"), detector.image_size, shifts=args.shifts,
                       stretch=args.stretch)
        path = args.out / f"{args.set}_{args.shots}shot_seed{seed}.npz"
        np.savez_compressed(path, **data)
        print(f"{path}: {len(data['label'])} pairs, median {np.median(data['ms']):.1f} ms", flush=True)


if __name__ == "__main__":
    main()
