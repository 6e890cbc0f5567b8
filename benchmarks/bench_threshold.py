"""The default threshold without labels: false alarms and misses with 2 references, per product.

2 references per query (``--shots``), drawn per query: for the bundled benchmark's held-out photos two of
each query's random templates; for ELPV (test split, seed 0; a seeded subset of ``--n`` normal and ``--n`` defective
cells per type) two random normal training cells of the same type. Every query is inspected through
``Copilot.inspect`` by three models in the same run: the default model as shipped (with 2 references its
fused score and the threshold for 2 or more references), the default model's pooled map at its fixed
threshold 0.5 (the behaviour before), and the training-free baseline at its 0.35. Per product and model:
image AUROC, the false-alarm rate (normal images flagged), the miss rate, and the miss rate of the best
fixed threshold that flags no more normal images (the ranking the threshold wastes). ``--augment``:
also the 1-reference question, the mean score of two light augmentations (shift, rotation, gain, noise)
of the first reference against itself, per product and model. Run:

    python benchmarks/bench_threshold.py [--n 80] [--seed 2] [--shots 2] [--augment] [--out threshold.json]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from adcopilot import Copilot
from adcopilot.data.elpv import split
from adcopilot.eval.bundled import ensure_bundled
from adcopilot.eval.detection import auroc
from adcopilot.imaging import load_image, to_float_array
from adcopilot.model.nano import NanoDetector
from adcopilot.model.registry import load_detector, resolve_model


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


def models(spec: str) -> dict[str, Copilot]:
    """The shipped default, the same weights with the pooled map and one threshold, the baseline."""
    before, _ = load_detector(resolve_model(spec))
    assert isinstance(before, NanoDetector)
    before.model.cfg = replace(before.model.cfg, multi_image_score="map", multi_threshold=None)
    return {"default": Copilot.load(spec), "map at 0.5": Copilot(before, model_name="map at 0.5"),
            "baseline": Copilot.load("baseline")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--n", type=int, default=80, help="ELPV normal and defective test cells per type")
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--shots", type=int, default=2, help="references per query")
    ap.add_argument("--augment", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    cps = models(args.model)
    rng = np.random.default_rng(args.seed)
    root = ensure_bundled().parent
    bench = json.loads((root / "mmad.json").read_text())
    cases: dict[str, list[tuple[str, list[str], int]]] = {"photos": []}
    for key, entry in bench.items():
        if key.startswith("HeldOut-Photos/"):
            if len(entry["random_templates"]) < args.shots:
                raise SystemExit(f"{key}: {len(entry['random_templates'])} templates, fewer than --shots {args.shots}")
            refs = [str(root / t) for t in rng.choice(entry["random_templates"], args.shots, replace=False)]
            cases["photos"].append((str(root / key), refs, int("/good/" not in key)))
    parts = split(seed=0)
    for kind in ("mono", "poly"):
        pool = [c.path for c in parts["train"] if c.kind == kind and c.probability == 0.0]
        cases[f"ELPV {kind}"] = []
        for prob in (0.0, 1.0):
            cells = [c.path for c in parts["test"] if c.kind == kind and c.probability == prob]
            for i in sorted(rng.permutation(len(cells))[: args.n]):
                refs = [str(pool[j]) for j in rng.choice(len(pool), args.shots, replace=False)]
                cases[f"ELPV {kind}"].append((str(cells[i]), refs, int(prob == 1.0)))
    results: dict[str, dict[str, dict]] = {}
    for group, items in cases.items():
        got: dict[str, tuple[list[float], list[float], list[float]]] = {m: ([], [], []) for m in cps}
        labels = []
        for query, refs, label in tqdm(items, desc=group):
            labels.append(label)
            for name, cp in cps.items():
                r = cp.inspect(query, refs)
                got[name][0].append(r.score)
                got[name][1].append(r.threshold)
                if args.augment and label == 0:
                    ref = to_float_array(load_image(refs[0]), cp.detector.image_size)
                    got[name][2].append(float(np.mean([cp.analyze(augment(ref, rng), [refs[0]]).score
                                                       for _ in range(2)])))
        y = np.array(labels)
        for name, (scores, thrs, aug) in got.items():
            s, t = np.array(scores), np.array(thrs)
            far, miss = rates(s, y, t)
            res = {"normal": int((y == 0).sum()), "defective": int(y.sum()), "auroc": round(float(auroc(s, y) or 0), 4),
                   "threshold": round(float(np.median(t)), 4), "false_alarm_%": round(100 * far, 1),
                   "miss_%": round(100 * miss, 1),
                   "best_fixed_miss_same_false_alarms_%": round(100 * best_miss(s, y, far), 1)}
            if aug:
                res["augmented_reference_score_median"] = round(float(np.median(aug)), 4)
            results.setdefault(group, {})[name] = res
            print(f"{group:10s} {name:10s} AUROC {res['auroc']:.3f} | threshold {res['threshold']}: false alarms "
                  f"{res['false_alarm_%']} % miss {res['miss_%']} % (best fixed threshold at those false alarms: miss "
                  f"{res['best_fixed_miss_same_false_alarms_%']} %)"
                  + (f" | 1-ref augmentation level {res['augmented_reference_score_median']}" if aug else ""), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
