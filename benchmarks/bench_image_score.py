"""Image-score rules for the default model, compared offline on saved evidence (image AUROC).

Reads the ``.npz`` files of ``benchmarks/image_score_evidence.py`` (the comparison model's smoothed
probability map and the nearest-reference patch distance of each pair) and scores every pair with each
rule below; prints the image AUROC per set and cell type / photo class pool, the mean and standard
deviation over the reference draws (seeds), and the false-alarm rate of normal images and the balanced
accuracy at a threshold.

    python benchmarks/bench_image_score.py /tmp/evidence --sets elpv-val synth
    python benchmarks/bench_image_score.py /tmp/evidence --sets elpv-test photos --rules shipped baseline fused
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

from adcopilot.metrics import auroc
from adcopilot.model.score import CANDIDATES, DISTANCE_SIGMA, SELF_CANDIDATES, fused_score
from adcopilot.model.upsample import upsample_centered

EPS = 1e-4


def topk(x: np.ndarray, frac: float) -> float:
    flat = x.ravel()
    k = max(1, int(round(flat.size * frac)))
    return float(np.partition(flat, flat.size - k)[-k:].mean())


def logit(p: np.ndarray | float) -> np.ndarray | float:
    p = np.clip(p, EPS, 1 - EPS)
    return np.log(p / (1 - p))


def baseline_map(dist: np.ndarray, size: int) -> np.ndarray:
    """The training-free baseline's map from the (h, w) patch distances (model/baseline.py)."""
    up = upsample_centered(torch.from_numpy(dist)[None, None], size // dist.shape[-1])[0, 0].numpy()
    return cv2.GaussianBlur(up, (0, 0), DISTANCE_SIGMA)


def candidates_d8(d1: np.ndarray, d8: np.ndarray, k: int = CANDIDATES) -> torch.Tensor:
    """The detector's d8: the saved (all-patch) view distance on the k patches of largest d1, d1 elsewhere."""
    flat = d1.ravel().copy()
    idx = np.argsort(-flat, kind="stable")[:k]
    flat[idx] = d8.ravel()[idx]
    return torch.from_numpy(flat.reshape(d1.shape))


Rule = Callable[..., float]  # (prob (S, S), d1 (h, w), baseline map, d8 (h, w), baseline map of d8) -> score


def up(x: np.ndarray, size: int = 256) -> np.ndarray:
    return upsample_centered(torch.from_numpy(np.ascontiguousarray(x))[None, None], size // x.shape[-1])[0, 0].numpy()


def gated(p: np.ndarray, d: np.ndarray, d8: np.ndarray, gamma: float) -> np.ndarray:
    return p * up(np.clip(d8 / np.maximum(d, 1e-6), 0, 1) ** gamma)

RULES: dict[str, Rule] = {
    "shipped": lambda p, d, b, *_: topk(p, 0.01),
    "baseline8": lambda p, d, b, d8, b8: float(b8.max()),
    "fused 0.05": lambda p, d, b, d8, b8: fused_score(p, candidates_d8(d, d8), 0.05),
    "fused 0.1": lambda p, d, b, d8, b8: fused_score(p, candidates_d8(d, d8), 0.1),
    "fused 0.15": lambda p, d, b, d8, b8: fused_score(p, candidates_d8(d, d8), 0.15),
    "fused 0.2": lambda p, d, b, d8, b8: fused_score(p, candidates_d8(d, d8), 0.2),
    "baseline8 top 1%": lambda p, d, b, d8, b8: topk(b8, 0.01),
    "gated g1": lambda p, d, b, d8, b8: topk(gated(p, d, d8, 1.0), 0.01),
    "gated g2": lambda p, d, b, d8, b8: topk(gated(p, d, d8, 2.0), 0.01),
    "gated g4": lambda p, d, b, d8, b8: topk(gated(p, d, d8, 4.0), 0.01),
    "gated g2 top 5%": lambda p, d, b, d8, b8: topk(gated(p, d, d8, 2.0), 0.05),
    "geo nano x baseline8": lambda p, d, b, d8, b8: float(np.sqrt(topk(p, 0.01) * b8.max())),
    "geo gated g2 x baseline8": lambda p, d, b, d8, b8: float(np.sqrt(topk(gated(p, d, d8, 2.0), 0.01) * b8.max())),
    "nano max": lambda p, d, b, *_: float(p.max()),
    "nano top 0.1%": lambda p, d, b, *_: topk(p, 0.001),
    "nano top 5%": lambda p, d, b, *_: topk(p, 0.05),
    "nano saturated share": lambda p, d, b, *_: float((p > 0.9).mean()),
    "baseline": lambda p, d, b, *_: float(b.max()),
    "baseline top 1%": lambda p, d, b, *_: topk(b, 0.01),
    "baseline / median distance": lambda p, d, b, *_: float(b.max() / max(np.median(d), 1e-6)),
    "baseline - median distance": lambda p, d, b, *_: float(b.max() - np.median(d)),
    "geometric mean": lambda p, d, b, *_: float(np.sqrt(topk(p, 0.01) * b.max())),
    "fused map": lambda p, d, b, *_: float(np.sqrt(p * np.clip(b, 0, None)).max()),
}


#: Rules that read the evidence's further arrays: (prob (S, S), the pair's arrays by name) -> score.
PairRule = Callable[[np.ndarray, dict[str, np.ndarray]], float]


def fused_on_aggregated(weight: float) -> PairRule:
    return lambda p, a: fused_score(p, torch.from_numpy(a["dist8_agg"]), weight)


def fused_on_shifts(weight: float) -> PairRule:
    """The fused score with the views at the other half-stride phases searched too (``dist8s``)."""
    return lambda p, a: fused_score(p, candidates_d8(a["dist"], a["dist8s"]), weight)


EXTRA_RULES: dict[str, PairRule] = {
    "fused 0.05 shifts": fused_on_shifts(0.05),
    "fused 0.1 shifts": fused_on_shifts(0.1),
    "baseline8 shifts": lambda p, a: float(baseline_map(a["dist8s"], p.shape[-1]).max()),
    "baseline8 on 3x3 features": lambda p, a: float(baseline_map(a["dist8_agg"], p.shape[0]).max()),
    **{f"fused 3x3 {w}": fused_on_aggregated(w) for w in (0.05, 0.1, 0.15, 0.2)},
    "baseline8 min self": lambda p, a: float(baseline_map(np.minimum(a["dist8"], a["self3"]), p.shape[0]).max()),
    "baseline8 geo self": lambda p, a: float(baseline_map(np.sqrt(a["dist8"] * a["self3"]), p.shape[0]).max()),
    "baseline8 on 3x3 min self": lambda p, a: float(
        baseline_map(np.minimum(a["dist8_agg"], a["self3"]), p.shape[0]).max()),
}


def self_gated(a: dict[str, np.ndarray], tau: float, per_patch: bool, candidates: bool = False,
               own: str = "self3", limit: int | None = None) -> np.ndarray:
    """The distance to the reference's views (``candidates``: searched on the detector's candidate patches
    only, as the model computes it), lowered to the query's own self-distance where the reference
    shows that the product repeats itself (its own self-distance below ``tau``: at that position, or its
    median for the whole image); elsewhere the query's self-similarity is no evidence of normality."""
    d8 = candidates_d8(a["dist"], a["dist8"]).numpy() if candidates else a["dist8"]
    trusted = a["ref_self3"] < tau if per_patch else np.full(d8.shape, np.median(a["ref_self3"]) < tau)
    if limit:  # twins searched only for the ``limit`` patches of largest d8, as the model searches them now
        top = np.zeros(d8.size, bool)
        top[np.argsort(-d8.ravel(), kind="stable")[:limit]] = True
        trusted = trusted & top.reshape(d8.shape)
    return np.where(trusted, np.minimum(d8, a[own]), d8)


for _tau in (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5):
    for _patch, _tag in ((True, "patch"), (False, "image")):
        EXTRA_RULES[f"baseline8 self gated {_tag} {_tau}"] = (
            lambda p, a, t=_tau, pp=_patch: float(baseline_map(self_gated(a, t, pp), p.shape[0]).max()))
        EXTRA_RULES[f"fused 0.05 self gated {_tag} {_tau}"] = (
            lambda p, a, t=_tau, pp=_patch: fused_score(p, torch.from_numpy(self_gated(a, t, pp)), 0.05))
for _tau in (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5):
    EXTRA_RULES[f"fused 0.05 self gated patch {_tau} candidates"] = (
        lambda p, a, t=_tau: fused_score(p, torch.from_numpy(self_gated(a, t, True, True)), 0.05))
    # self3n: a twin explains a query patch only as well as the references explain the twin
    EXTRA_RULES[f"fused 0.05 self-t gated patch {_tau} candidates"] = (  # self3t: only well-explained twins
        lambda p, a, t=_tau: fused_score(p, torch.from_numpy(self_gated(a, t, True, True, "self3t")), 0.05))
    EXTRA_RULES[f"fused 0.05 self-n gated patch {_tau} candidates"] = (
        lambda p, a, t=_tau: fused_score(p, torch.from_numpy(self_gated(a, t, True, True, "self3n")), 0.05))
    EXTRA_RULES[f"fused 0.05 self-m gated patch {_tau} candidates"] = (  # self3m: only the query's ordinary twins
        lambda p, a, t=_tau: fused_score(p, torch.from_numpy(self_gated(a, t, True, True, "self3m")), 0.05))
    EXTRA_RULES[f"fused 0.05 self-q gated patch {_tau} candidates"] = (  # self3q: twins up to the 75th percentile
        lambda p, a, t=_tau: fused_score(p, torch.from_numpy(self_gated(a, t, True, True, "self3q")), 0.05))
for _tau in (0.2, 0.25, 0.3, 0.35):
    # The self-gated score where the reference repeats itself as a whole (its median self-distance below the
    # gate: cells, textures), the pooled map elsewhere (objects), each as the model computes it.
    EXTRA_RULES[f"hybrid {_tau}"] = (
        lambda p, a, t=_tau: fused_score(p, torch.from_numpy(self_gated(a, 0.3, True, True, "self3q")), 0.05)
        if np.median(a["ref_self3"]) < t else topk(p, 0.01))
EXTRA_RULES["fused-self"] = (  # the model's "fused-self" score as computed now (SELF_CANDIDATES)
    lambda p, a: fused_score(p, torch.from_numpy(self_gated(a, 0.3, True, True, "self3q", SELF_CANDIDATES)), 0.05))
for _w in (0.1, 0.15, 0.2, 0.3, 0.5):  # the map's weight in the self-gated score
    EXTRA_RULES[f"fused-self {_w}"] = (
        lambda p, a, w=_w: fused_score(p, torch.from_numpy(self_gated(a, 0.3, True, True, "self3q", SELF_CANDIDATES)), w))
EXTRA_RULES["fused 0.05 on all views"] = lambda p, a: fused_score(p, torch.from_numpy(a["dist8"]), 0.05)
EXTRA_ARRAYS = ("dist", "dist8", "dist8s", "dist8_agg", "self3", "ref_self3", "self3n", "self3t", "self3m", "self3q")


def load(folder: Path, sets: list[str]) -> dict[str, list[dict[str, np.ndarray]]]:
    """{set: [one dict per seed file]}."""
    out: dict[str, list[dict[str, np.ndarray]]] = {}
    for s in sets:
        files = sorted(folder.glob(f"{s}_*shot_seed*.npz"), key=lambda p: int(re.findall(r"seed(\d+)", p.name)[0]))
        out[s] = [dict(np.load(f)) for f in files]
    return out


def scores_of(data: dict[str, np.ndarray], rule: Rule | PairRule) -> np.ndarray:
    if rule in EXTRA_RULES.values():
        try:
            return np.array([rule(data["prob"][i].astype(np.float32), {k: data[k][i] for k in EXTRA_ARRAYS if k in data})
                             for i in range(len(data["label"]))])
        except KeyError as exc:
            raise SystemExit(f"this evidence has no {exc}: collect it again with image_score_evidence.py") from None
    size = data["prob"].shape[-1]
    if "_bmap" not in data:
        data["_bmap"] = np.stack([baseline_map(d, size) for d in data["dist"]])
        data["_bmap8"] = np.stack([baseline_map(d, size) for d in data["dist8"]])
    return np.array([rule(p.astype(np.float32), d, b, d8, b8) for p, d, b, d8, b8 in
                     zip(data["prob"], data["dist"], data["_bmap"], data["dist8"], data["_bmap8"], strict=True)])


def pools(data: dict[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
    """Index sets to report: ELPV per cell type, surfaces per surface, photos and synthetic pairs pooled."""
    if name.startswith("elpv"):
        return {str(g): data["group"] == g for g in ("mono", "poly")}
    if name == "surfaces":
        return {str(g): data["group"] == g for g in sorted(set(data["group"].tolist()))}
    return {name: np.ones(len(data["label"]), bool)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--sets", nargs="+", default=["elpv-val", "synth"])
    ap.add_argument("--rules", nargs="+", default=list(RULES), choices=[*RULES, *EXTRA_RULES])
    ap.add_argument("--threshold", type=float, default=0.5,
                    help="false alarms of normal images and balanced accuracy (1 - (false alarms + misses) / 2) at this score")
    args = ap.parse_args()
    data = load(args.folder, args.sets)
    for rule_name in args.rules:
        rule = RULES.get(rule_name) or EXTRA_RULES[rule_name]
        cells = []
        for s, runs in data.items():
            per_pool: dict[str, list[tuple[float, float]]] = {}
            for run in runs:
                sc = scores_of(run, rule)
                for pool, idx in pools(run, s).items():
                    y = run["label"][idx]
                    fa = float((sc[idx][y == 0] >= args.threshold).mean())
                    miss = float((sc[idx][y == 1] < args.threshold).mean())
                    per_pool.setdefault(pool, []).append((auroc(sc[idx], y), fa, 1.0 - (fa + miss) / 2))
            if s == "surfaces":  # the mean over surfaces per draw, as bench_peers.py reports them
                per_pool = {"surfaces": [tuple(np.mean(v, axis=0)) for v in zip(*per_pool.values(), strict=True)]}
            for pool, vals in per_pool.items():
                a = np.array([v[0] for v in vals])
                fa = np.mean([v[1] for v in vals])
                bacc = np.mean([v[2] for v in vals])
                cells.append(f"{pool} {a.mean():.4f}±{a.std():.3f} fa{100 * fa:.0f}% bacc{bacc:.3f}")
        print(f"{rule_name:>28}: " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
