"""A one-reference image score blended from two: the pooled map and the self-gated score, each over its own threshold.

    blend = 0.5 * (map / 0.5) ** w * (self-gated / 0.42) ** (1 - w)        (verdict at 0.5, as the map's)

w = 1 is the shipped score (the pooled map at 0.5), w = 0 the self-gated score at 0.42 (the threshold its balanced
accuracy chose on ELPV training cells and synthetic pairs). The two scores come from two ``adcopilot eval detect`` runs
on the same benchmark (the same random templates): the shipped model, and a copy of it with ``"image_score":
"fused-self"`` in its config (its threshold does not matter here). Printed per dataset (and per class with
``--by-class``): image AUROC, and accuracy, false alarms and misses at 0.5 (MMAD's Anomaly Detection questions ask
exactly this verdict, one question per image).

    python benchmarks/blend_scores.py MAP_RUN SELF_RUN --weights 1 0.4 0
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from adcopilot.metrics import auroc

MAP_THRESHOLD, SELF_THRESHOLD = 0.5, 0.42


def read(run: Path) -> dict[str, tuple[int, float]]:
    rows = [json.loads(x) for x in (run / "scores.jsonl").read_text().splitlines() if x.strip()]
    return {r["image"]: (int(r["label"]), float(r["score"])) for r in rows if r.get("error") is None}


def blend(m: np.ndarray, s: np.ndarray, w: float) -> np.ndarray:
    m, s = np.maximum(m, 1e-6), np.maximum(s, 1e-6)
    return MAP_THRESHOLD * (m / MAP_THRESHOLD) ** w * (s / SELF_THRESHOLD) ** (1.0 - w)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("map_run", type=Path)
    ap.add_argument("self_run", type=Path)
    ap.add_argument("--weights", type=float, nargs="+", default=[1.0, 0.4, 0.0])
    ap.add_argument("--by-class", action="store_true")
    args = ap.parse_args()
    a, b = read(args.map_run), read(args.self_run)
    keys = sorted(a.keys() & b.keys())
    if len(keys) < len(a) or any(a[k][0] != b[k][0] for k in keys):
        raise SystemExit("the two runs do not hold the same images with the same labels")
    y = np.array([a[k][0] for k in keys])
    m, s = np.array([a[k][1] for k in keys]), np.array([b[k][1] for k in keys])
    depth = 2 if args.by_class else 1
    groups = np.array(["/".join(k.split("/")[:depth]) for k in keys])
    for w in args.weights:
        sc = blend(m, s, w)
        cells = []
        for g in sorted(set(groups)):
            i = groups == g
            fa, miss = (sc[i][y[i] == 0] >= 0.5).mean(), (sc[i][y[i] == 1] < 0.5).mean()
            acc = ((sc[i] >= 0.5) == (y[i] == 1)).mean()
            cells.append(f"{g}: AUROC {auroc(sc[i], y[i]):.3f} acc {100 * acc:.1f} (FA {100 * fa:.1f} / miss {100 * miss:.1f})")
        print(f"w {w:.2f}: " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
