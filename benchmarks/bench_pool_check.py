"""The reference pool's check (``line/pool_check.py``): false flags on pools of normal images, and defective
images or bad frames filed among them, found.

Pools are drawn per product: ELPV training cells of one type (normals: probability 0; defective:
probability 1) and the bundled held-out photos (normals: the templates and the good queries; defective:
the defective queries). A pool of n images holds m = 0, 1 or 2 defective ones; each is scored as
``check_pool`` scores it (the image check against the others, the two-pass mutual score against the
pool's median), at several ``mad_k``. Reported per product and n: the share of normal images flagged
(false flags), the share of pools with at least one false flag, and the share of planted defective
images named. A bad frame (black, over-exposed, blurred; ``bench_sanity.bad_frames``) or another
product's picture in place of one normal is counted apart. Features are computed once per image. Run:

    python benchmarks/bench_pool_check.py --split train --ks 2 3 4 5 6       # choosing, ELPV training cells
    python benchmarks/bench_pool_check.py --split photos --ks 4              # measuring, the photos
    python benchmarks/bench_pool_check.py --split test --ks 4                # measuring, ELPV test cells
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from bench_sanity import bad_frames
from tqdm import tqdm

from adcopilot import Copilot
from adcopilot.data.elpv import split
from adcopilot.eval.bundled import ensure_bundled
from adcopilot.imaging import load_image, to_float_array
from adcopilot.line.lot_features import lot_checks, lot_tower
from adcopilot.line.pool_check import MIN_POOL, pool_scores
from adcopilot.model.detector import to_batch
from adcopilot.model.mutual import LotViews, MutualRecipe, lot_features, lot_threshold
from adcopilot.model.sanity import image_profile


def products(which: str) -> dict[str, tuple[list[Path], list[Path]]]:
    """product -> (normal images, defective images)."""
    out: dict[str, tuple[list[Path], list[Path]]] = {}
    if which in ("train", "test"):
        cells = split(seed=0)[which]
        for kind in ("mono", "poly"):
            out[f"ELPV {which} {kind}"] = (
                [c.path for c in cells if c.kind == kind and c.probability == 0.0],
                [c.path for c in cells if c.kind == kind and c.probability == 1.0])
        return out
    bench = ensure_bundled()
    root = Path(bench).parent
    for key, entry in json.loads(Path(bench).read_text()).items():
        if not key.startswith("HeldOut-Photos"):
            continue
        product = "/".join(key.split("/")[:2])
        normals, defective = out.setdefault(product, ([], []))
        (normals if "/good/" in key else defective).append(root / key)
        for t in entry["random_templates"]:
            if root / t not in normals:
                normals.append(root / t)
    return out


def encode(tower, arrays: list[np.ndarray], recipe: MutualRecipe) -> tuple[LotViews, list]:
    parts = [lot_features(tower, to_batch(arrays[i : i + 16]), recipe) for i in range(0, len(arrays), 16)]
    return LotViews.cat(parts), [image_profile(tower, a) for a in arrays]


def subset(views: LotViews, idx: list[int]) -> LotViews:
    return LotViews([v[idx] for v in views.views], views.global_features[idx])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--split", choices=("train", "test", "photos"), default="train")
    ap.add_argument("--sizes", type=int, nargs="+", default=[8, 20, 50])
    ap.add_argument("--draws", type=int, default=10)
    ap.add_argument("--ks", type=float, nargs="+", default=[2, 3, 4, 5, 6])
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    cp = Copilot.load(args.model)
    tower, size, recipe = lot_tower(cp), cp.detector.image_size, MutualRecipe()
    rng = np.random.default_rng(0)
    results: dict[str, dict] = {}
    for product, (normals, defective) in products(args.split).items():
        normals = [normals[i] for i in sorted(rng.permutation(len(normals))[: max(args.sizes) + 10])]
        defective = [defective[i] for i in sorted(rng.permutation(len(defective))[:30])]
        arrays = [to_float_array(load_image(p), size) for p in tqdm(normals + defective, desc=product)]
        base = len(normals)
        # Bad frames made from the first normal, and another product's picture (a normal of another set).
        other = products("photos" if args.split != "photos" else "train")
        stranger = to_float_array(load_image(next(iter(other.values()))[0][0]), size)
        wanted = ("black", "underexposed", "overexposed", "blurred", "other product")
        bad = [(name, frame) for name, frame in bad_frames(arrays[0], stranger, rng).items() if name in wanted]
        views, profiles = encode(tower, arrays + [f for _, f in bad], recipe)
        for n in args.sizes:
            if n > base or n < MIN_POOL:
                continue
            rows: dict[str, dict] = {}
            for m in (0, 1, 2):
                tally = {k: {"false": 0, "check_false": 0, "normals": 0, "pools_false": 0, "found": 0, "planted": 0}
                         for k in args.ks}
                for _ in range(args.draws):
                    idx = sorted(rng.permutation(base)[: n - m].tolist()) + (base + rng.permutation(len(defective))[:m]).tolist()
                    scores = pool_scores(subset(views, idx), recipe)
                    checks = lot_checks([profiles[i] for i in idx], cp.check_rules)
                    for k in args.ks:
                        thr = lot_threshold(scores, k)
                        checked = np.array([c is not None for c in checks])
                        flag = (scores >= thr) | checked
                        t = tally[k]
                        t["false"] += int(flag[: n - m].sum())
                        t["check_false"] += int(checked[: n - m].sum())
                        t["normals"] += n - m
                        t["pools_false"] += int(flag[: n - m].any())
                        t["found"] += int(flag[n - m :].sum())
                        t["planted"] += m
                rows[f"m={m}"] = {str(k): {"false_flags": t["false"] / t["normals"], "by_image_check": t["check_false"] / t["normals"],
                                          "pools_with_false": t["pools_false"] / args.draws,
                                          "found": t["found"] / t["planted"] if t["planted"] else None} for k, t in tally.items()}
            # One bad frame in place of a normal.
            bad_found: dict[str, dict[str, float]] = {}
            for b, (name, _) in enumerate(bad):
                hits = {k: 0 for k in args.ks}
                for _ in range(args.draws):
                    idx = sorted(rng.permutation(base)[: n - 1].tolist()) + [base + len(defective) + b]
                    scores = pool_scores(subset(views, idx), recipe)
                    checks = lot_checks([profiles[i] for i in idx], cp.check_rules)
                    for k in args.ks:
                        hits[k] += int(scores[-1] >= lot_threshold(scores, k) or checks[-1] is not None)
                bad_found[name] = {str(k): h / args.draws for k, h in hits.items()}
            rows["bad frames"] = bad_found
            results.setdefault(product, {})[f"n={n}"] = rows
            for k in args.ks:
                r0, r1, r2 = rows["m=0"][str(k)], rows["m=1"][str(k)], rows["m=2"][str(k)]
                print(f"{product:26s} n={n:2d} k={k:g}: false flags {100 * r0['false_flags']:5.1f} % "
                      f"(image check {100 * r0['by_image_check']:4.1f} %; pools {100 * r0['pools_with_false']:3.0f} %), defective found m=1 {100 * r1['found']:5.1f} % "
                      f"m=2 {100 * r2['found']:5.1f} % (false {100 * r2['false_flags']:4.1f} %); bad frames "
                      + " ".join(f"{nm} {100 * v[str(k)]:.0f}" for nm, v in bad_found.items()), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
