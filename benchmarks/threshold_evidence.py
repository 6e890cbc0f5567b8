"""Collect per-pair scores once, to compare label-free threshold rules offline (``bench_spread.py``).

Per product ("group"): a pool of normal references, ``--pairs`` reference pairs drawn from it, and
queries (normal and defective). Every query is inspected against every pair (registered as ``inspect``
registers it: onto the pair's first reference; then the detector), and both
image scores come from that one pass: the shipped pooled map (``map``) and the fused score (``fused``, model/score.py; the map is the same, the fused
score adds the references' dihedral views; recorded as it is, with the query's normal level beside it, from
which ``spread_weight``'s relative score is made offline). For every pair the references are also scored against each
other (leave-one-out, both directions) and ``--augs`` light augmentations of each reference against the
other; for every reference, augmentations of it against itself (the 1-reference self-spread).

Sets (the first two for choosing a rule, the last two for measuring it):

* ``elpv-val``: ELPV *training* cells per type (``--n`` normal + ``--n`` defective queries), references
  from other training normals of that type.
* ``photos-val``: the bundled held-out photos, per class, with a first draw of template pairs.
* ``elpv-test``: ELPV *test* cells per type (``--n`` + ``--n``), references from a fresh pool of training
  normals.
* ``photos-test``: the same photos with other template pairs (disjoint from the first draw's).
* ``surfaces-test`` (measuring only, never chosen on): the nine outside surfaces of ``benchmarks/surfaces.py``
  (8 normals, 15 normal and 18 defective test images each), pairs drawn as for ``photos-test``.

    python benchmarks/threshold_evidence.py --set elpv-val --n 40 --pairs 6 --out SPREAD

``--shots 3`` (or more): sets of that many references instead of pairs, query scores only (written as
``SET_kSHOTS_seedSEED.npz``, read by ``threshold_by_shots.py``).
"""

from __future__ import annotations

import argparse
import itertools
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from bench_image_score import baseline_map
from bench_threshold import augment
from tqdm import tqdm

import adcopilot.model.inspection as inspection
from adcopilot import assets
from adcopilot.data.elpv import split
from adcopilot.eval.bundled import PHOTOS_DATASET, bundled_dir, ensure_bundled
from adcopilot.imaging import load_image, to_float_array
from adcopilot.model.inspection import align, compared_references, in_common_frame, into_frame
from adcopilot.model.nano import NanoDetector
from adcopilot.model.registry import load_detector, resolve_model
from adcopilot.model.score import pooled_score, spread_level

Group = tuple[list[Path], list[Path], list[int]]  # (reference pool, queries, labels)
SURFACES = assets.home() / "benchmarks" / "surfaces" / "Surfaces"  # benchmarks/surfaces.py's default output


def elpv_groups(which: str, n: int, pool_size: int, seed: int) -> dict[str, Group]:
    """Per cell type: a pool of training normals and ``n`` normal + ``n`` defective queries."""
    parts = split(seed=0)
    rng = np.random.default_rng(seed)
    out = {}
    for kind in ("mono", "poly"):
        normals = [c.path for c in parts["train"] if c.kind == kind and c.probability == 0.0]
        src = "train" if which == "elpv-val" else "test"
        good = [c.path for c in parts[src] if c.kind == kind and c.probability == 0.0]
        bad = [c.path for c in parts[src] if c.kind == kind and c.probability == 1.0]
        queries = [good[i] for i in sorted(rng.permutation(len(good))[:n])]
        queries += [bad[i] for i in sorted(rng.permutation(len(bad))[:n])]
        free = [p for p in normals if p not in set(queries)]  # a query never serves as a reference
        pool = [free[i] for i in sorted(rng.permutation(len(free))[:pool_size])]
        out[f"ELPV {kind}"] = (pool, queries, [0] * n + [1] * n)
    return out


def photo_groups(root: Path | None = None, prefix: str = "photos") -> dict[str, Group]:
    """Per class of a folder of product classes in the photos' layout (``train/good``, ``test/<kind>``): the
    bundled held-out photos, or ``root`` (the outside surfaces of ``benchmarks/surfaces.py``)."""
    if root is None:
        ensure_bundled()
        root = bundled_dir() / PHOTOS_DATASET
    elif not root.is_dir():
        raise SystemExit(f"{root}: not built (python benchmarks/surfaces.py)")
    out = {}
    for cls in sorted(p.name for p in root.iterdir() if p.is_dir()):
        queries, labels = [], []
        for sub in sorted((root / cls / "test").iterdir()):
            for q in sorted(sub.glob("*.png")):
                queries.append(q)
                labels.append(int(sub.name != "good"))
        out[f"{prefix}/{cls}"] = (sorted((root / cls / "train" / "good").glob("*.png")), queries, labels)
    return out


def draw_pairs(pool_size: int, k: int, rng: np.random.Generator, first: bool, shots: int = 2) -> list[tuple[int, ...]]:
    """``k`` distinct reference sets of ``shots`` (pairs by default) from the pool; the photos' first draw
    and later draws never share a set."""
    pairs = list(itertools.combinations(range(pool_size), shots))
    order = np.random.default_rng(12345).permutation(len(pairs))  # one fixed order, split in two halves
    half = order[: len(order) // 2] if first else order[len(order) // 2 :]
    return [pairs[i] for i in rng.choice(half, k, replace=False)]


class Scorer:
    """Both image scores of a query against encoded references, in one detector pass."""

    def __init__(self, detector: NanoDetector) -> None:
        self.detector = detector
        self.size = detector.image_size
        self.cache: dict[str, tuple[np.ndarray, object]] = {}

    def ref(self, path: Path) -> tuple[np.ndarray, object]:
        key = str(path)
        if key not in self.cache:
            arr = to_float_array(load_image(path, name=key), self.size)
            self.cache[key] = (arr, self.detector.encode_reference(arr))
        return self.cache[key]

    def framed(self, path: Path, first: Path) -> tuple[np.ndarray, object]:
        """A reference in the ``first`` one's frame (``inspection.into_frame``), cached for the pair."""
        key = f"{path}@{first}"
        if key not in self.cache:
            arr, enc = self.ref(path)
            moved = into_frame(arr, self.ref(first)[0])
            self.cache[key] = (arr, enc) if moved is arr else (moved, self.detector.encode_reference(moved))
        return self.cache[key]

    @torch.inference_mode()
    def scores(self, query: np.ndarray, refs: list[Path], register: bool | None = None) -> tuple[float, float, float, float]:
        """(pooled map score, fused score, training-free baseline's score, the query's normal level) of an
        (S, S, 3) query against ``refs``, registered as ``inspect`` registers it unless ``register`` says
        otherwise. The baseline's is the maximum of its map (the blurred nearest-reference distance) from the
        same pass; the level is ``score.spread_level`` of the nearest-reference distance (a "fused-spread" model's
        score is recorded as the fused score it reads relative to that level)."""
        entries = [self.ref(r) for r in refs]
        reg = True if register is None else register
        aligned = align(query, entries[0][0], registration=reg)
        if in_common_frame(reg, len(entries)):  # the others in the first one's frame, as inspect compares them
            framed = [entries[0]] + [self.framed(r, refs[0]) for r in refs[1:]]
            entries = list(compared_references(aligned, framed, entries))
        d = self.detector.detection(aligned.compared, [e for _, e in entries])
        step = self.size // d.features.shape[-1]
        d1 = d.distance[::step, ::step]  # (h, w): the grid's values, which the up-sampled map passes through
        baseline = float(baseline_map(d1, self.size).max())
        level = spread_level(torch.from_numpy(np.ascontiguousarray(d1)))
        return pooled_score(d.amap, self.detector.model.cfg.topk_frac), float(d.score), baseline, level


def collect(scorer: Scorer, groups: dict[str, Group], k: int, augs: int, seed: int, first: bool,
            shots: int = 2, register: bool | None = None) -> dict:
    rng = np.random.default_rng(seed)
    data: dict[str, np.ndarray] = {}
    for name, (pool, queries, labels) in groups.items():
        pairs = draw_pairs(len(pool), k, rng, first, shots)
        q_scores = np.zeros((len(queries), k, 4), np.float32)  # [query, set, (map, fused, baseline, level)]
        t0 = time.perf_counter()
        for i, q in enumerate(tqdm(queries, desc=name)):
            arr = to_float_array(load_image(q, name=str(q)), scorer.size)
            for j, chosen in enumerate(pairs):
                q_scores[i, j] = scorer.scores(arr, [pool[x] for x in chosen], register=register)
        if shots != 2:  # the leave-one-out and augmentation evidence is the pairs' (bench_spread.py)
            print(f"{name}: {len(queries)} queries x {k} sets of {shots}, {time.perf_counter() - t0:.0f} s", flush=True)
            data.update({f"{name}|scores": q_scores, f"{name}|labels": np.array(labels),
                         f"{name}|pairs": np.array(pairs)})
            continue
        loo = np.zeros((k, 2, 2), np.float32)  # [pair, left-out reference, scale]
        loo_aug = np.zeros((k, 2, augs, 2), np.float32)  # augmentations of the left-out one
        for j, (a, b) in enumerate(pairs):
            for side, (x, y) in enumerate([(a, b), (b, a)]):
                arr = scorer.ref(pool[x])[0]
                loo[j, side] = scorer.scores(arr, [pool[y]])[:2]
                for t in range(augs):
                    loo_aug[j, side, t] = scorer.scores(augment(arr, rng), [pool[y]])[:2]
        used = sorted({x for p in pairs for x in p})
        self_aug = np.zeros((len(pool), augs, 2), np.float32)  # [reference, augmentation, scale]
        for x in used:
            arr = scorer.ref(pool[x])[0]
            for t in range(augs):
                self_aug[x, t] = scorer.scores(augment(arr, rng), [pool[x]])[:2]
        print(f"{name}: {len(queries)} queries x {k} pairs, {time.perf_counter() - t0:.0f} s", flush=True)
        data.update({f"{name}|scores": q_scores, f"{name}|labels": np.array(labels), f"{name}|pairs": np.array(pairs),
                     f"{name}|loo": loo, f"{name}|loo_aug": loo_aug, f"{name}|self_aug": self_aug})
    return data


def add_set_loo(scorer: Scorer, groups: dict[str, Group], path: Path) -> None:
    """Add to a ``--shots`` file every set's leave-one-out scores: each reference against the set's others,
    both unregistered and registered (``|set_loo``: [set, left-out reference, (unregistered, registered),
    (map, fused)])."""
    z = dict(np.load(path))
    for name, (pool, _, _) in groups.items():
        sets = z[f"{name}|pairs"]
        loo = np.zeros((*sets.shape, 2, 2), np.float32)
        for j, chosen in enumerate(tqdm(sets, desc=f"{name} leave-one-out")):
            for i, x in enumerate(chosen):
                arr = scorer.ref(pool[x])[0]
                rest = [pool[o] for o in chosen if o != x]
                loo[j, i, 0] = scorer.scores(arr, rest, register=False)[:2]
                loo[j, i, 1] = scorer.scores(arr, rest, register=True)[:2]
        z[f"{name}|set_loo"] = loo
    np.savez_compressed(path, **z)
    print(f"{path}: leave-one-out added", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", required=True, choices=["elpv-val", "photos-val", "elpv-test", "photos-test", "surfaces-test"])
    ap.add_argument("--n", type=int, default=40, help="ELPV: normal and defective queries per type")
    ap.add_argument("--pool", type=int, default=12, help="ELPV: normal references per type")
    ap.add_argument("--pairs", type=int, default=6, help="reference pairs (sets) per product")
    ap.add_argument("--shots", type=int, default=2, help="references per set; other than 2: query scores only")
    ap.add_argument("--augs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="default")
    ap.add_argument("--register", choices=["none"], default=None,
                    help="compare every query and reference as taken, unregistered (file *_asis.npz)")
    ap.add_argument("--common-from", type=int, default=None,
                    help="compare the references in the first one's frame from this count on (the model's "
                         "inspection.COMMON_FRAME_FROM unless given; file *_commonN.npz)")
    ap.add_argument("--add-loo", action="store_true",
                    help="with --shots 3 or more: add the sets' leave-one-out scores to the file already written")
    ap.add_argument("--one-score", choices=["fused", "fused-self"], default="fused",
                    help="the second score with one reference (leave-one-out, augmentations, --shots 1)")
    ap.add_argument("--multi-score", choices=["fused", "fused-self"], default=None,
                    help="the second score with two references or more (the model's own unless given; "
                         "file *_multiself.npz for fused-self)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    detector, _ = load_detector(resolve_model(args.model))
    assert isinstance(detector, NanoDetector)
    # Both scores from one pass: the pooled map, and the fused score (with one reference: --one-score's)
    detector.model.cfg = replace(detector.model.cfg, image_score=args.one_score)
    if detector.model.cfg.multi_image_score == "fused-spread":  # recorded as the fused score and the level
        detector.model.cfg = replace(detector.model.cfg, multi_image_score="fused")
    if args.multi_score:
        detector.model.cfg = replace(detector.model.cfg, multi_image_score=args.multi_score)
    if args.set.startswith("elpv"):
        groups = elpv_groups(args.set, args.n, args.pool, args.seed)
    elif args.set == "surfaces-test":
        groups = photo_groups(SURFACES, "surfaces")
    else:
        groups = photo_groups()
    path = args.out / (f"{args.set}_seed{args.seed}.npz" if args.shots == 2 else f"{args.set}_k{args.shots}_seed{args.seed}.npz")
    if args.register:
        path = path.with_name(path.stem + "_asis.npz")
    if args.common_from is not None:
        inspection.COMMON_FRAME_FROM = args.common_from
        path = path.with_name(path.stem + f"_common{args.common_from}.npz")
    if args.multi_score == "fused-self":
        path = path.with_name(path.stem + "_multiself.npz")
    if args.add_loo:
        add_set_loo(Scorer(detector), groups, path)
        return
    data = collect(Scorer(detector), groups, args.pairs, args.augs, args.seed, first=args.set.endswith("val"),
                   shots=args.shots, register=False if args.register else None)
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **data)
    print(f"{path}: {len(groups)} groups", flush=True)


if __name__ == "__main__":
    main()
