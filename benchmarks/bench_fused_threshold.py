"""A default threshold on the fused image score's own scale: chosen on validation evidence, measured on test.

Reads the ``.npz`` evidence of ``benchmarks/image_score_evidence.py`` (the scores are recomputed with the
rules of ``bench_image_score.py``). The threshold is chosen on validation data only (ELPV *training* cells
per type and synthetic pairs, ``--choose-on``): of the thresholds on a 0.005 grid, the one whose
false-alarm rate on the normal validation images is closest to ``--target`` on the set where it is
furthest from it. The test sets (``--measure-on``) then give, per reference draw and averaged, the
false-alarm rate of normal images, the miss rate of defective ones and the image AUROC of the
training-free baseline and the shipped score at their own default thresholds and of the fused score at
the chosen one, all on the same pairs.

    python benchmarks/bench_fused_threshold.py EV --choose-on elpv-val synth --measure-on elpv-test photos
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from bench_image_score import RULES, load, pools, scores_of

from adcopilot.metrics import auroc

FUSED = "fused 0.05"
#: The score rules compared on the test sets and their default thresholds (the baseline's and the
#: shipped checkpoint's); the fused rule's threshold is the one chosen here.
FIXED = {"baseline": 0.35, "shipped": 0.5}
GRID = np.round(np.arange(0.30, 0.70001, 0.005), 3)


def normal_scores(data: dict[str, list[dict[str, np.ndarray]]], rule: str) -> dict[str, np.ndarray]:
    """{set/pool: the rule's scores of its normal images, all draws together}."""
    out: dict[str, list[np.ndarray]] = {}
    for s, runs in data.items():
        for run in runs:
            sc = scores_of(run, RULES[rule])
            for pool, idx in pools(run, s).items():
                out.setdefault(f"{s}/{pool}", []).append(sc[idx & (run["label"] == 0)])
    return {k: np.concatenate(v) for k, v in out.items()}


def choose(normals: dict[str, np.ndarray], target: float) -> tuple[float, dict[str, float]]:
    """The grid threshold minimising the largest |false-alarm rate - target| over the validation sets."""
    worst = [max(abs(float((n >= t).mean()) - target) for n in normals.values()) for t in GRID]
    t = float(GRID[int(np.argmin(worst))])  # the lowest of equally good thresholds
    return t, {k: float((n >= t).mean()) for k, n in normals.items()}


def measure(data: dict[str, list[dict[str, np.ndarray]]], rule: str, threshold: float) -> None:
    """Prints false alarms, misses and image AUROC per test set/pool, mean and per draw."""
    for s, runs in data.items():
        rows: dict[str, list[tuple[float, float, float]]] = {}
        for run in runs:
            sc = scores_of(run, RULES[rule])
            for pool, idx in pools(run, s).items():
                y, v = run["label"][idx], sc[idx]
                rows.setdefault(pool, []).append(
                    (float((v[y == 0] >= threshold).mean()), float((v[y == 1] < threshold).mean()), auroc(v, y)))
        for pool, r in rows.items():
            a = np.array(r)
            draws = ", ".join(f"{x:.3f}" for x in a[:, 2])
            print(f"{rule:>10} @ {threshold:.3f}  {s}/{pool}: false alarms {100 * a[:, 0].mean():.1f} %  "
                  f"miss {100 * a[:, 1].mean():.1f} %  AUROC {a[:, 2].mean():.3f} ({draws})", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--choose-on", nargs="+", default=["elpv-val", "synth"])
    ap.add_argument("--measure-on", nargs="+", default=["elpv-test", "photos"])
    ap.add_argument("--target", type=float, default=0.05, help="false-alarm rate of normal validation images")
    ap.add_argument("--sweep", nargs="*", type=float, default=[], help="also measure the fused score at these")
    args = ap.parse_args()
    t, rates = choose(normal_scores(load(args.folder, args.choose_on), FUSED), args.target)
    print(f"chosen threshold {t:.3f}; validation false alarms: "
          + ", ".join(f"{k} {100 * v:.1f} %" for k, v in rates.items()), flush=True)
    test = load(args.folder, args.measure_on)
    for rule, thr in {**FIXED, FUSED: t}.items():
        measure(test, rule, thr)
    for thr in args.sweep:
        measure(test, FUSED, thr)


if __name__ == "__main__":
    main()
