"""A threshold without labels: false alarms and misses at the fixed threshold and at the normal spread's.

2 references per query: for the bundled benchmark's held-out photos two of each query's random
templates; for ELPV (test split, seed 0; a seeded subset of ``--n`` normal and ``--n`` defective cells
per type) two random normal training cells of the same type. Every query is inspected with
``auto_threshold`` (the references' leave-one-out spread, :mod:`adcopilot.model.spread`); the raw score
is the same as without it. Per product: the false-alarm rate (normal images flagged) and miss rate at the
model's fixed threshold and at the spread threshold, and the miss rate of the best fixed threshold that
flags no more normal images than the spread threshold did (the ranking the spread threshold wastes).
``--augment``: also the 1-reference alternative, the mean score of two light augmentations (shift,
rotation, gain, noise) of the first reference against itself, per product. Run:

    python benchmarks/bench_threshold.py [--n 80] [--seed 1] [--augment] [--out threshold.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from adcopilot import Copilot
from adcopilot.data.elpv import split
from adcopilot.eval.bundled import ensure_bundled
from adcopilot.eval.detection import auroc
from adcopilot.imaging import load_image, to_float_array


def augment(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A light augmentation of an (S, S, 3) float image: shift, rotation, gain, noise."""
    h, w = image.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), float(rng.uniform(-1.5, 1.5)), 1.0)
    m[:, 2] += rng.uniform(-4, 4, 2)
    out = cv2.warpAffine(image, m, (w, h), borderMode=cv2.BORDER_REFLECT) * rng.uniform(0.93, 1.07)
    return np.clip(out + rng.normal(0, 0.01, out.shape), 0, 1).astype(np.float32)


def rates(scores: np.ndarray, labels: np.ndarray, thr: np.ndarray | float) -> tuple[float, float]:
    """(false-alarm rate, miss rate) at a threshold per image or one for all."""
    flagged = scores >= thr
    return float(flagged[labels == 0].mean()), float((~flagged[labels == 1]).mean())


def best_miss(scores: np.ndarray, labels: np.ndarray, far: float) -> float:
    """The lowest miss rate of one fixed threshold flagging at most ``far`` of the normal images."""
    normal = np.sort(scores[labels == 0])[::-1]
    k = int(np.floor(far * len(normal) + 1e-9))  # normal images allowed above the threshold
    thr = normal[k] + 1e-9 if k < len(normal) else -np.inf
    return float((scores[labels == 1] < thr).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--n", type=int, default=80, help="ELPV normal and defective test cells per type")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--augment", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    cp = Copilot.load(args.model, auto_threshold=True)
    rng = np.random.default_rng(args.seed)
    root = ensure_bundled().parent
    bench = json.loads((root / "mmad.json").read_text())
    cases: dict[str, list[tuple[str, list[str], int]]] = {"photos": []}
    for key, entry in bench.items():
        if key.startswith("HeldOut-Photos/"):
            refs = [str(root / t) for t in rng.choice(entry["random_templates"], 2, replace=False)]
            cases["photos"].append((str(root / key), refs, int("/good/" not in key)))
    parts = split(seed=0)
    for kind in ("mono", "poly"):
        pool = [c.path for c in parts["train"] if c.kind == kind and c.probability == 0.0]
        cases[f"ELPV {kind}"] = []
        for prob in (0.0, 1.0):
            cells = [c.path for c in parts["test"] if c.kind == kind and c.probability == prob]
            for i in sorted(rng.permutation(len(cells))[: args.n]):
                refs = [str(pool[j]) for j in rng.choice(len(pool), 2, replace=False)]
                cases[f"ELPV {kind}"].append((str(cells[i]), refs, int(prob == 1.0)))
    results = {}
    for group, items in cases.items():
        scores, thrs, labels, aug = [], [], [], []
        for query, refs, label in tqdm(items, desc=group):
            r = cp.inspect(query, refs)
            scores.append(r.score)
            thrs.append(r.threshold)
            labels.append(label)
            if args.augment and label == 0:
                ref = to_float_array(load_image(refs[0]), cp.detector.image_size)
                aug.append(float(np.mean([cp.analyze(augment(ref, rng), [refs[0]]).score for _ in range(2)])))
        s, t, y = np.array(scores), np.array(thrs), np.array(labels)
        far_fixed, miss_fixed = rates(s, y, cp.threshold)
        far_spread, miss_spread = rates(s, y, t)
        res = {
            "normal": int((y == 0).sum()), "defective": int(y.sum()), "auroc": round(float(auroc(s, y) or 0), 4),
            "fixed": {"threshold": cp.threshold, "false_alarm_%": round(100 * far_fixed, 1), "miss_%": round(100 * miss_fixed, 1)},
            "spread": {"threshold_median": round(float(np.median(t)), 4), "false_alarm_%": round(100 * far_spread, 1),
                       "miss_%": round(100 * miss_spread, 1),
                       "best_fixed_miss_same_false_alarms_%": round(100 * best_miss(s, y, far_spread), 1)},
        }
        if aug:
            res["augmented_reference_score_median"] = round(float(np.median(aug)), 4)
        results[group] = res
        print(f"{group:10s} AUROC {res['auroc']:.3f} | fixed {cp.threshold:.2f}: false alarms {res['fixed']['false_alarm_%']} % "
              f"miss {res['fixed']['miss_%']} % | spread (median thr {res['spread']['threshold_median']}): false alarms "
              f"{res['spread']['false_alarm_%']} % miss {res['spread']['miss_%']} % (best fixed threshold at those false "
              f"alarms: miss {res['spread']['best_fixed_miss_same_false_alarms_%']} %)"
              + (f" | 1-ref augmentation level {res['augmented_reference_score_median']}" if aug else ""), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
