"""One fixed threshold on the fused score per number of references: chosen on validation, measured on test.

Reads the ``SET_kSHOTS_seedSEED.npz`` files of ``threshold_evidence.py --shots SHOTS`` (query scores
against sets of SHOTS references, as ``inspect`` scores them) and, for two references, its plain
``SET_seedSEED.npz`` files. The rule is the one that chose the two-reference threshold
(``bench_spread.py``, "one fixed threshold" on the fused scale): on the grid of logits -3..3 (step 0.02),
the threshold whose false-alarm rate is closest to 5 % on the validation product where it is furthest from
it; it is eligible when every validation product's false-alarm rate lies within 2-8 %. Reported per
product, on the validation and then the measuring sets: image AUROC, false alarms, misses and the excess
(misses above those of the best fixed threshold flagging no more normal images), at the chosen threshold
and at the two-reference one of the fused score as it is (0.4452, shipped until the relative score) for comparison.

    python benchmarks/threshold_by_shots.py EV --shots 3 5 --choose-on elpv-val photos-val \
        --measure-on elpv-test photos-test

``--loo`` (files with ``threshold_evidence.py --add-loo``): also rules that follow each reference set's
own leave-one-out scores (each reference against the set's others, unregistered): the threshold
sigmoid(A x the set's mean leave-one-out logit + m), A in 0.25-1 and m chosen as above; the within-product
correlation of that level with the set's normal queries' 95th percentile (logits).

``--spread W``: the scores read relative to each query's normal level as the model's ``spread_weight`` W reads
them (``score.relative_score``; the evidence's fourth column, written by ``threshold_evidence.py`` since it
records the level); the earlier two-reference threshold is then not reported beside the chosen one (it was
chosen on the score as it is).

``--as-taken``: beside each ``--shots`` file of the choosing sets, its ``*_asis.npz`` twin
(``threshold_evidence.py --register none``: the same sets, every query and reference compared unregistered
reference); the image AUROC of each reference set both ways.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from bench_spread import HIGH, LOW, TARGET, logit, sigmoid
from bench_threshold import best_miss

from adcopilot.metrics import auroc

FUSED = 1  # the scale index in the evidence files: (pooled map, fused)
GRID = sigmoid(np.round(np.arange(-3.0, 3.001, 0.02), 2))
EARLIER = 0.4452  # the two-reference threshold on the fused score as it is (shipped before "fused-spread")


def products(folder: Path, sets: list[str], shots: int, spread: float = 0.0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{set/product: (scores (Q*K,), labels (Q*K,))}, every (query, reference set) pooled; the photo
    classes make one product. With ``spread``, the relative score of that weight."""
    out: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
    for s in sets:
        pattern = f"{s}_seed*.npz" if shots == 2 else f"{s}_k{shots}_seed*.npz"
        files = sorted(f for f in folder.glob(pattern) if not f.stem.endswith("_asis") and "_common" not in f.stem)  # --register / --common-from: their own
        if not files:
            raise SystemExit(f"{folder}: no evidence {pattern} (run threshold_evidence.py --shots {shots})")
        for path in files:
            z = np.load(path)
            for name in sorted({k.split("|")[0] for k in z.files}):
                sc = z[f"{name}|scores"][..., FUSED]  # (Q, K)
                if spread:
                    if z[f"{name}|scores"].shape[-1] < 4:
                        raise SystemExit(f"{path}: no queries' levels (run threshold_evidence.py again)")
                    sc = sigmoid(logit(sc) - spread * logit(z[f"{name}|scores"][..., 3]))
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


Sets = dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]]  # product: [(scores (Q, K), labels, loo (K, shots))]


def loo_sets(folder: Path, sets: list[str], shots: int) -> Sets:
    out: Sets = {}
    for s in sets:
        for path in sorted(f for f in folder.glob(f"{s}_k{shots}_seed*.npz") if not f.stem.endswith("_asis") and "_common" not in f.stem):
            z = np.load(path)
            for name in sorted({k.split("|")[0] for k in z.files}):
                if f"{name}|set_loo" not in z.files:
                    raise SystemExit(f"{path}: no leave-one-out scores (run threshold_evidence.py --add-loo)")
                out.setdefault(f"{s}/{name.split('/')[0]}", []).append(
                    (z[f"{name}|scores"][..., FUSED], z[f"{name}|labels"], logit(z[f"{name}|set_loo"][..., 0, FUSED])))
    return out


def loo_measure(groups: list[tuple[np.ndarray, np.ndarray, np.ndarray]], a: float, m: float) -> dict[str, float]:
    """Every (query, set) at its set's threshold sigmoid(a x mean leave-one-out logit + m), pooled."""
    s = np.concatenate([sc.T.ravel() for sc, _, _ in groups])
    y = np.concatenate([np.tile(lab, sc.shape[1]) for sc, lab, _ in groups])
    t = np.concatenate([np.repeat(sigmoid(a * loo.mean(axis=1) + m), len(lab)) for _, lab, loo in groups])
    flagged = s >= t
    far, miss = float(flagged[y == 0].mean()), float((~flagged[y == 1]).mean())
    return {"far": far, "miss": miss, "excess": miss - best_miss(s, y, far)}


def loo_rules(folder: Path, choose_on: list[str], measure_on: list[str], shots: int) -> None:
    val = loo_sets(folder, choose_on, shots)
    for k, groups in val.items():
        q95 = [np.quantile(logit(sc[lab == 0, j]), 0.95) for sc, lab, _ in groups for j in range(sc.shape[1])]
        lev = [loo[j].mean() for _, _, loo in groups for j in range(loo.shape[0])]
        print(f"{shots} references {k:16s} correlation of the set's leave-one-out level with its normal "
              f"queries' 95th percentile: {np.corrcoef(lev, q95)[0, 1]:+.2f}", flush=True)
    grid = np.round(np.arange(-3.0, 3.001, 0.02), 2)
    for a in (0.25, 0.5, 0.75, 1.0):
        res = [{k: loo_measure(g, a, m) for k, g in val.items()} for m in grid]
        i = int(np.argmin([max(abs(r["far"] - TARGET) for r in rs.values()) for rs in res]))
        ok = all(LOW <= r["far"] <= HIGH for r in res[i].values())
        rows = [("choosing", res[i])]
        if measure_on:
            rows.append(("measuring", {k: loo_measure(g, a, grid[i]) for k, g in loo_sets(folder, measure_on, shots).items()}))
        for name, rs in rows:
            print(f"{shots} references, A {a:.2f} m {grid[i]:+.2f} ({'eligible' if ok else 'not eligible'}), {name}: "
                  + " | ".join(f"{k.split('/', 1)[1]} false alarms {100 * r['far']:.1f} % excess {100 * r['excess']:+.1f}"
                               for k, r in rs.items()), flush=True)


def as_taken(folder: Path, sets: list[str], shots: int) -> None:
    """Image AUROC per reference set, the query compared as ``inspect`` compares it and unregistered."""
    for s in sets:
        for path in sorted(f for f in folder.glob(f"{s}_k{shots}_seed*.npz") if not f.stem.endswith("_asis") and "_common" not in f.stem):
            twin = path.with_name(path.stem + "_asis.npz")
            if not twin.exists():
                raise SystemExit(f"{twin}: missing (run threshold_evidence.py --register none)")
            a, b = np.load(path), np.load(twin)
            for name in sorted({k.split("|")[0] for k in a.files}):
                y = a[f"{name}|labels"]
                assert (a[f"{name}|pairs"] == b[f"{name}|pairs"]).all(), "not the same reference sets"
                u, r = (np.array([auroc(z[f"{name}|scores"][:, j, FUSED], y) for j in range(len(z[f"{name}|pairs"]))])
                        for z in (a, b))
                print(f"{shots} references {s}/{name}: AUROC as inspect compares {u.mean():.3f}, unregistered "
                      f"{r.mean():.3f} (per set {np.mean(r - u):+.3f} +- {np.std(r - u):.3f}, unregistered better in "
                      f"{int((r > u).sum())} of {len(u)})", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--shots", type=int, nargs="+", default=[3, 5])
    ap.add_argument("--choose-on", nargs="+", default=["elpv-val", "photos-val"])
    ap.add_argument("--measure-on", nargs="*", default=[])
    ap.add_argument("--fixed", type=float, nargs="*", default=[],
                    help="also report these thresholds (for instance one shared by several counts)")
    ap.add_argument("--loo", action="store_true", help="also the leave-one-out rules")
    ap.add_argument("--spread", type=float, default=0.0,
                    help="read the scores relative to each query's normal level with this spread_weight")
    ap.add_argument("--as-taken", action="store_true", help="also the AUROC with every image compared unregistered")
    args = ap.parse_args()
    for shots in args.shots:
        val = products(args.folder, args.choose_on, shots, args.spread)
        thr, ok = choose(val)
        print(f"== {shots} references: chosen {thr:.4f} (logit {np.log(thr / (1 - thr)):+.2f}), "
              f"{'eligible' if ok else 'NOT eligible'}", flush=True)
        sets = [("validation", val)]
        if args.measure_on:
            sets.append(("measuring", products(args.folder, args.measure_on, shots, args.spread)))
        earlier = [] if args.spread else [EARLIER]
        for name, prods in sets:
            for t, label in [(thr, f"{name} chosen {thr:.4f}")] + [(t, f"{name} two-ref {t}") for t in earlier] + \
                    [(f, f"{name} fixed {f:.4f}") for f in args.fixed]:
                report(label, prods, t)
        if args.loo:
            loo_rules(args.folder, args.choose_on, args.measure_on, shots)
        if args.as_taken:
            as_taken(args.folder, args.choose_on, shots)


if __name__ == "__main__":
    main()
