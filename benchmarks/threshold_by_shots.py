"""One fixed threshold on the fused score per number of references: chosen on validation, measured on test.

Reads the ``SET_kSHOTS_seedSEED.npz`` files of ``threshold_evidence.py --shots SHOTS`` (query scores
against sets of SHOTS references, as ``inspect`` scores them) and, for two references, its plain
``SET_seedSEED.npz`` files. The rule is the one that chose the two-reference threshold
(``bench_spread.py``, "one fixed threshold" on the fused scale): on the grid of logits -3..3 (step 0.02),
the threshold whose false-alarm rate is closest to 5 % on the validation product where it is furthest from
it; it is eligible when every validation product's false-alarm rate lies within 2-8 %. Reported per
product, on the validation and then the measuring sets: image AUROC, false alarms, misses and the excess
(misses above those of the best fixed threshold flagging no more normal images), at the chosen threshold
and at the shipped two-reference one for comparison.

    python benchmarks/threshold_by_shots.py EV --shots 3 5 --choose-on elpv-val photos-val \
        --measure-on elpv-test photos-test
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from bench_spread import HIGH, LOW, TARGET, sigmoid
from bench_threshold import best_miss

from adcopilot.metrics import auroc

FUSED = 1  # the scale index in the evidence files: (pooled map, fused)
GRID = sigmoid(np.round(np.arange(-3.0, 3.001, 0.02), 2))
SHIPPED = 0.4452  # the two-reference threshold, for comparison


def products(folder: Path, sets: list[str], shots: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{set/product: (scores (Q*K,), labels (Q*K,))}, every (query, reference set) pooled; the photo
    classes make one product."""
    out: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
    for s in sets:
        pattern = f"{s}_seed*.npz" if shots == 2 else f"{s}_k{shots}_seed*.npz"
        files = sorted(folder.glob(pattern))
        if not files:
            raise SystemExit(f"{folder}: no evidence {pattern} (run threshold_evidence.py --shots {shots})")
        for path in files:
            z = np.load(path)
            for name in sorted({k.split("|")[0] for k in z.files}):
                sc = z[f"{name}|scores"][..., FUSED]  # (Q, K)
                y = np.repeat(z[f"{name}|labels"][:, None], sc.shape[1], axis=1)
                key = f"{s}/{name.split('/')[0]}"
                out.setdefault(key, ([], []))
                out[key][0].append(sc.ravel())
                out[key][1].append(y.ravel())
    return {k: (np.concatenate(s), np.concatenate(y)) for k, (s, y) in out.items()}


def measure(scores: np.ndarray, labels: np.ndarray, thr: float) -> dict[str, float]:
    flagged = scores >= thr
    far, miss = float(flagged[labels == 0].mean()), float((~flagged[labels == 1]).mean())
    return {"far": far, "miss": miss, "excess": miss - best_miss(scores, labels, far),
            "auroc": float(auroc(scores, labels) or 0)}


def choose(prods: dict[str, tuple[np.ndarray, np.ndarray]]) -> tuple[float, bool]:
    """(threshold, eligible): the grid value closest to 5 % false alarms on the furthest product."""
    worst = [max(abs(measure(s, y, t)["far"] - TARGET) for s, y in prods.values()) for t in GRID]
    t = float(GRID[int(np.argmin(worst))])
    ok = all(LOW <= measure(s, y, t)["far"] <= HIGH for s, y in prods.values())
    return t, ok


def report(label: str, prods: dict[str, tuple[np.ndarray, np.ndarray]], thr: float) -> None:
    for k, (s, y) in prods.items():
        r = measure(s, y, thr)
        print(f"{label:26s} {k:16s} AUROC {r['auroc']:.3f}  false alarms {100 * r['far']:5.1f} %  "
              f"miss {100 * r['miss']:5.1f} %  excess {100 * r['excess']:+5.1f}  "
              f"(median normal {np.median(s[y == 0]):.3f})", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--shots", type=int, nargs="+", default=[3, 5])
    ap.add_argument("--choose-on", nargs="+", default=["elpv-val", "photos-val"])
    ap.add_argument("--measure-on", nargs="*", default=[])
    ap.add_argument("--fixed", type=float, nargs="*", default=[],
                    help="also report these thresholds (for instance one shared by several counts)")
    args = ap.parse_args()
    for shots in args.shots:
        val = products(args.folder, args.choose_on, shots)
        thr, ok = choose(val)
        print(f"== {shots} references: chosen {thr:.4f} (logit {np.log(thr / (1 - thr)):+.2f}), "
              f"{'eligible' if ok else 'NOT eligible'}", flush=True)
        sets = [("validation", val)]
        if args.measure_on:
            sets.append(("measuring", products(args.folder, args.measure_on, shots)))
        for name, prods in sets:
            for t, label in [(thr, f"{name} chosen {thr:.4f}"), (SHIPPED, f"{name} two-ref {SHIPPED}")] + \
                    [(f, f"{name} fixed {f:.4f}") for f in args.fixed]:
                report(label, prods, t)


if __name__ == "__main__":
    main()
