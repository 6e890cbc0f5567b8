"""A one-reference image score blended from two: the pooled map and the self-gated score, each over its own threshold.

    blend = 0.5 * (map / 0.5) ** w * (self-gated / 0.42) ** (1 - w)        (verdict at 0.5, as the map's)

w = 1 is the pooled map at 0.5 (the one-reference score shipped before the blend), w = 0 the self-gated score at 0.42
(the threshold its balanced accuracy chose on ELPV training cells and synthetic pairs); the shipped model now scores one
reference with the blend at w = 0.4 (``"image_score": "blend"``), chosen here. The two scores come from two ``adcopilot
eval detect`` runs on the same benchmark (the same random templates): copies of the shipped model with ``"image_score":
"map"`` and with ``"image_score": "fused-self"`` in their configs (the latter's threshold does not matter here). Printed per dataset (and per class with
``--by-class``): image AUROC, and accuracy, false alarms and misses at 0.5 (MMAD's Anomaly Detection questions ask
exactly this verdict, one question per image).

    python benchmarks/blend_scores.py MAP_RUN SELF_RUN --weights 1 0.4 0

``--evidence DIR`` chooses w instead, on the files ``map_inputs_probe.py`` writes (both scores per pair): on the
validation sets (ELPV training cells per type, synthetic pairs) the weight with the largest smallest gain over the
pooled map (w = 1) in either image AUROC or balanced accuracy at 0.5, then the test sets at the chosen weight.

    python benchmarks/blend_scores.py --evidence DIR

``--with-baseline`` adds a third term, the training-free baseline's score over its own threshold (0.35), the files'
``baseline``: ``... * (baseline / 0.35) ** c`` with the self-gated score's share 1 - w - c, w and c in steps of 0.1,
chosen by the same rule on the validation sets only (the test sets are not read).

    python benchmarks/blend_scores.py --evidence DIR --with-baseline

``--with-white 0.3`` does the same with the whitened distance to the reference's views (``whitened_scores.py`` adds it
to the files) over its own threshold (the largest mean balanced accuracy on the validation sets), then prints the test
sets at the chosen weights beside the shipped blend.

    python benchmarks/blend_scores.py --evidence DIR --with-white 0.3

``--by-level`` lets the map's share fall with the query's normal level L (the 75th percentile of its nearest-reference
distances, the files' ``level``): 0.4 up to lo, linearly to 0 at hi (lo 0.26-0.36, hi - lo 0.02-0.12; with a KEY,
another quantile the files hold, lo from 0.06), chosen by the largest smallest gain over the shipped blend (w = 0.4 at
every level) on the validation sets, then the test sets (benchmarks/RESULTS.md, "Three more leads for the few-shot
columns").

    python benchmarks/blend_scores.py --evidence DIR --by-level               # or --by-level level_0.25

``--check RUN`` compares a third run, of the shipped model (``"image_score": "blend"``), with the blend at w = 0.4 computed
from the two runs: the largest difference of the per-image scores.

    python benchmarks/blend_scores.py MAP_RUN SELF_RUN --check BLEND_RUN
"""

from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path

import numpy as np

from adcopilot.metrics import auroc

MAP_THRESHOLD, SELF_THRESHOLD, BASELINE_THRESHOLD = 0.5, 0.42, 0.35


def read(run: Path) -> dict[str, tuple[int, float]]:
    rows = [json.loads(x) for x in (run / "scores.jsonl").read_text().splitlines() if x.strip()]
    return {r["image"]: (int(r["label"]), float(r["score"])) for r in rows if r.get("error") is None}


def blend(m: np.ndarray, s: np.ndarray, w: float | np.ndarray, b: np.ndarray | None = None, c: float = 0.0,
          b_scale: float = BASELINE_THRESHOLD) -> np.ndarray:
    """The blend at the map's share ``w`` (and a third score ``b``'s share ``c`` over its scale ``b_scale``, by default
    the baseline's; the self-gated score's 1 - w - c)."""
    m, s = np.maximum(m, 1e-6), np.maximum(s, 1e-6)
    out = MAP_THRESHOLD * (m / MAP_THRESHOLD) ** w * (s / SELF_THRESHOLD) ** (1.0 - w - c)
    return out if b is None or c == 0 else out * (np.maximum(b, 1e-6) / b_scale) ** c


def evidence(folder: Path, sets: tuple[str, ...], w: float, c: float = 0.0, third: str = "baseline",
             third_scale: float = BASELINE_THRESHOLD, levels: tuple[float, float] | None = None,
             level_key: str = "level") -> dict[str, tuple[float, float]]:
    """{pool: (image AUROC, balanced accuracy at 0.5)} of the blend at w (and c of the files' score ``third`` over
    ``third_scale``; with ``levels`` (lo, hi) the map's share w falls to 0 over the query's level from lo to hi), the
    mean over each set's files (draws)."""
    out: dict[str, list[tuple[float, float]]] = {}
    for s in sets:
        for f in sorted(glob.glob(f"{folder}/{s}-*.json")):
            rows = json.loads(Path(f).read_text())
            y, g = np.array([r["label"] for r in rows]), np.array([r["group"] for r in rows])
            share: float | np.ndarray = w
            if levels is not None:
                lo, hi = levels
                share = w * np.clip((hi - np.array([r[level_key] for r in rows])) / (hi - lo), 0.0, 1.0)
            sc = blend(np.array([r["map_d1"] for r in rows]), np.array([r["fself_d1"] for r in rows]), share,
                       np.array([r[third] for r in rows]) if c else None, c, third_scale)
            if s.startswith("elpv"):
                pools = {f"{s} mono": g == "mono", f"{s} poly": g == "poly"}
            elif s == "surfaces":
                pools = {f"surfaces {x}": g == x for x in sorted(set(g))}
            else:
                pools = {s: np.ones(len(y), bool)}
            got = []
            for p, i in pools.items():
                fa, miss = (sc[i][y[i] == 0] >= 0.5).mean(), (sc[i][y[i] == 1] < 0.5).mean()
                got.append((p, auroc(sc[i], y[i]), 1 - (fa + miss) / 2))
            if s == "surfaces":  # the mean over the surfaces, per draw
                got = [("surfaces", float(np.mean([v[1] for v in got])), float(np.mean([v[2] for v in got])))]
            for p, a, b in got:
                out.setdefault(p, []).append((a, b))
    return {p: tuple(np.mean(v, axis=0)) for p, v in out.items()}


def choose(folder: Path) -> None:
    val, test = ("elpv-val", "synth"), ("elpv-test", "photos", "surfaces")
    shipped = evidence(folder, val, 1.0)
    best, best_gain = 1.0, -1.0
    for w in np.round(np.arange(0.0, 1.0001, 0.05), 2):
        st = evidence(folder, val, float(w))
        gain = min(min(st[p][0] - shipped[p][0], st[p][1] - shipped[p][1]) for p in st)
        print(f"w {w:.2f}: " + " | ".join(f"{p} {a:.3f} / {b:.3f}" for p, (a, b) in st.items())
              + f"; smallest gain {gain:+.3f}", flush=True)
        if gain > best_gain + 1e-9:
            best, best_gain = float(w), gain
    print(f"chosen: w {best:.2f}")
    for w in (1.0, best, 0.0):
        st = evidence(folder, test, w)
        print(f"test, w {w:.2f}: " + " | ".join(f"{p} {a:.3f} / {b:.3f}" for p, (a, b) in st.items()), flush=True)


def choose_by_level(folder: Path, key: str = "level") -> None:
    """``--by-level``: the ramp (lo, hi) of the map's share over the query's level (the files' ``key``), chosen on
    the validation sets."""
    val, test = ("elpv-val", "synth"), ("elpv-test", "photos", "surfaces")
    shipped = evidence(folder, val, 0.4)
    best, best_gain = None, -1.0
    first = 0.26 if key == "level" else 0.06  # the lower quantiles sit lower
    for lo in np.round(np.arange(first, 0.3601, 0.01), 2):
        for width in (0.02, 0.04, 0.06, 0.08, 0.10, 0.12):
            levels = (float(lo), float(lo + width))
            st = evidence(folder, val, 0.4, levels=levels, level_key=key)
            gain = min(min(st[p][0] - shipped[p][0], st[p][1] - shipped[p][1]) for p in st)
            if gain > best_gain + 1e-9:
                best, best_gain = levels, gain
    print(f"chosen: levels {best[0]:.2f}-{best[1]:.2f}, smallest gain over the blend {best_gain:+.4f}")
    for name, levels in (("blend", None), (f"levels {best[0]:.2f}-{best[1]:.2f}", best)):
        for sets in (val, test):
            st = evidence(folder, sets, 0.4, levels=levels, level_key=key)
            print(f"{name}: " + " | ".join(f"{p} {a:.4f} / {b:.3f}" for p, (a, b) in st.items()), flush=True)


def third_scale(folder: Path, third: str) -> float:
    """The verdict threshold of the files' score ``third`` alone: the largest mean balanced accuracy over the
    validation pools (ELPV training cells per type, synthetic pairs), as 0.42 was chosen for the self-gated score."""
    pools = []
    for s in ("elpv-val", "synth"):
        for f in sorted(glob.glob(f"{folder}/{s}-*.json")):
            rows = json.loads(Path(f).read_text())
            y, g, v = (np.array([r[k] for r in rows]) for k in ("label", "group", third))
            pools += [(y[g == k], v[g == k]) for k in sorted(set(g))] if s == "elpv-val" else [(y, v)]
    grid = np.quantile(np.concatenate([v for _, v in pools]), np.linspace(0.02, 0.98, 97))
    acc = [np.mean([1 - ((v[y == 0] >= t).mean() + (v[y == 1] < t).mean()) / 2 for y, v in pools]) for t in grid]
    return float(grid[int(np.argmax(acc))])


def choose_with_third(folder: Path, third: str = "baseline") -> None:
    """The same rule over (w, c), on the validation sets only; the test sets are printed only for another third
    score than the baseline, at the chosen (w, c) beside the shipped blend."""
    val = ("elpv-val", "synth")
    scale = BASELINE_THRESHOLD if third == "baseline" else third_scale(folder, third)
    print(f"third score {third}, over {scale:.4f}", flush=True)
    shipped = evidence(folder, val, 1.0)
    best, best_gain = (1.0, 0.0), -1.0
    for w in np.round(np.arange(0.0, 1.0001, 0.1), 2):
        for c in np.round(np.arange(0.0, 1.0001 - w, 0.1), 2):
            st = evidence(folder, val, float(w), float(c), third, scale)
            gain = min(min(st[p][0] - shipped[p][0], st[p][1] - shipped[p][1]) for p in st)
            print(f"w {w:.1f} c {c:.1f}: " + " | ".join(f"{p} {a:.3f} / {b:.3f}" for p, (a, b) in st.items())
                  + f"; smallest gain {gain:+.3f}", flush=True)
            if gain > best_gain + 1e-9:
                best, best_gain = (float(w), float(c)), gain
    print(f"chosen: w {best[0]:.1f}, c {best[1]:.1f} (smallest gain {best_gain:+.3f})")
    if third != "baseline":
        test = ("elpv-test", "photos", "surfaces")
        for w, c in ((0.4, 0.0), best, (0.3, 0.3), (0.2, 0.4), (0.0, 1.0)):
            st = evidence(folder, test, w, c, third, scale)
            print(f"test, w {w:.1f} c {c:.1f}: " + " | ".join(f"{p} {a:.3f} / {b:.3f}" for p, (a, b) in st.items()),
                  flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("map_run", type=Path, nargs="?")
    ap.add_argument("self_run", type=Path, nargs="?")
    ap.add_argument("--weights", type=float, nargs="+", default=[1.0, 0.4, 0.0])
    ap.add_argument("--by-class", action="store_true")
    ap.add_argument("--evidence", type=Path, help="choose w on map_inputs_probe.py's files in this folder")
    ap.add_argument("--with-baseline", action="store_true", help="with --evidence: a third term, the baseline's score")
    ap.add_argument("--with-white", choices=["0.3", "0.1"], help="with --evidence: a third term, the whitened distance "
                    "(whitened_scores.py's white_LAMBDA, over its own threshold chosen on the validation sets)")
    ap.add_argument("--by-level", nargs="?", const="level", default=None, metavar="KEY",
                    help="with --evidence: the map's share falling with the query's normal level (map_inputs_probe.py's "
                    "``level``, its 75th percentile, or another quantile's key: level_0.5, level_0.25, level_0.1)")
    ap.add_argument("--check", type=Path, help="an eval detect run of the shipped model: its scores against the blend")
    args = ap.parse_args()
    if args.evidence:
        if args.with_white:
            choose_with_third(args.evidence, f"white_{args.with_white}")
        elif args.with_baseline:
            choose_with_third(args.evidence)
        elif args.by_level:
            choose_by_level(args.evidence, args.by_level)
        else:
            choose(args.evidence)
        return
    if args.map_run is None or args.self_run is None:
        raise SystemExit("give the two eval detect runs, or --evidence DIR")
    a, b = read(args.map_run), read(args.self_run)
    keys = sorted(a.keys() & b.keys())
    if len(keys) < len(a) or any(a[k][0] != b[k][0] for k in keys):
        raise SystemExit("the two runs do not hold the same images with the same labels")
    y = np.array([a[k][0] for k in keys])
    m, s = np.array([a[k][1] for k in keys]), np.array([b[k][1] for k in keys])
    if args.check:
        c = read(args.check)
        if set(c) != set(keys):
            raise SystemExit("the checked run does not hold the same images")
        diff = np.abs(np.array([c[k][1] for k in keys]) - blend(m, s, 0.4))
        print(f"{len(keys)} images: largest difference from the blend at w 0.40 {diff.max():.3g}")
        return
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
