"""ELPV transfer benchmark: image AUROC of a model and the training-free baseline, side by side.

ELPV test split (seed 0, written once to disk), defect probability 1 versus 0, per cell type;
references drawn at random (seeded) from the *training* split's normal cells of the same type.
Run:

    python benchmarks/bench_elpv.py --model default --shots 1 5 [--limit 200] [--seeds 0 1 2]

With several ``--seeds`` every figure is the mean over that many independent draws of the
references (and of the ``--limit`` subset), with each draw's value beside it: one draw of one
reference per cell moves a 1-shot AUROC by about 0.02 on its own.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from adcopilot import Copilot, registration
from adcopilot.data.elpv import split


def evaluate(cp: Copilot, test, train, kind: str, shots: int, seed: int, limit: int | None) -> dict:
    normals = [c for c in train if c.kind == kind and c.probability == 0.0]
    items = [c for c in test if c.kind == kind and c.probability in (0.0, 1.0)]
    rng = np.random.default_rng(seed)
    if limit:
        idx = rng.permutation(len(items))[:limit]
        items = [items[i] for i in sorted(idx)]
    scores, labels, times = [], [], []
    for c in tqdm(items, desc=f"{cp.model_name} {kind} {shots}-shot", leave=False):
        refs = [normals[i].path for i in rng.choice(len(normals), shots, replace=False)]
        t = time.perf_counter()
        a = cp.analyze(c.path, refs)
        times.append(time.perf_counter() - t)
        scores.append(a.score)
        labels.append(int(c.probability == 1.0))
    return {
        "auroc": round(float(roc_auc_score(labels, scores)), 4),
        "n": len(items),
        "n_defective": int(sum(labels)),
        "median_ms": round(1000 * float(np.median(times)), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", nargs="+", default=["default"], help="models to compare with the baseline")
    ap.add_argument("--shots", nargs="+", type=int, default=[1, 5])
    ap.add_argument("--kinds", nargs="+", default=["mono", "poly"])
    ap.add_argument("--limit", type=int, default=None, help="cells per type (random subset) for quick runs")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0], help="reference draws to average over")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--no-registration", action="store_true", help="compare the query as taken (no registration)")
    ap.add_argument("--guard", choices=["plain", "windowed"], default=None,
                    help="registration keeps a fit that beats the unaligned images' correlation measured as they are "
                         "(plain) or windowed as the fit's (default: the product's)")
    args = ap.parse_args()
    if args.guard:
        registration.GUARD_LIKE_FOR_LIKE = args.guard == "windowed"
    parts = split(seed=0)
    results: dict = {}
    names = ["baseline"] + [m for m in args.model if m != "baseline"]
    for name in names:
        cp = Copilot.load(name, registration=not args.no_registration)
        for kind in args.kinds:
            for shots in args.shots:
                runs = [evaluate(cp, parts["test"], parts["train"], kind, shots, seed, args.limit) for seed in args.seeds]
                r = {**runs[0], "auroc": round(float(np.mean([x["auroc"] for x in runs])), 4),
                     "auroc_per_seed": [x["auroc"] for x in runs], "seeds": args.seeds}
                results.setdefault(name, {})[f"{kind}_{shots}shot"] = r
                each = f" (draws: {', '.join(f'{x:.4f}' for x in r['auroc_per_seed'])})" if len(runs) > 1 else ""
                print(f"{name:>10} {kind} {shots}-shot: AUROC {r['auroc']:.4f}{each} "
                      f"(n={r['n']}, median {r['median_ms']} ms)", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
