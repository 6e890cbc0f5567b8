"""One reference, more of its normal variation? Two leads for the one-reference distance, measured on the distance alone.

The one-reference image score leans on ``d8``, a query patch's cosine distance to the nearest patch of the
reference's eight dihedral views (model/score.py). Two ways to make one reference cover more of a product's normal
variation, each scored as the training-free baseline scores (maximum of the smoothed patch-distance map), beside
``d1`` (the plain reference) and ``d8`` on the same pairs:

* **more views of the reference**: every dihedral view also at gamma 0.7 / 1.4 (``g0.7``, ``g1.4``, both: ``gam``),
  contrast 0.8 / 1.25 about its mean (``c0.8``, ``c1.25``, ``con``), blurred (sigma 1 px, ``blur``), scaled by 0.9 /
  1.1 about its centre (``s0.9``, ``s1.1``, ``scl``), and all of them (``all``); a patch's distance is the smallest
  over the views and their variants;
* **whitened features**: a Gaussian fitted on the reference's views' patches (152 channels, covariance + lambda *
  mean variance * I); the nearest-patch distance after whitening (``wd8_lambda``) and the Mahalanobis distance to
  the Gaussian (``maha_lambda``), lambda 0.3 / 0.1 / 0.03 / 0.01.

Pairs as ``image_score_evidence.py`` draws them (``--set elpv-val``: training cells only, for choosing), registered as
the product registers them. Printed: image AUROC per group.

    OMP_NUM_THREADS=1 python benchmarks/reference_variants_probe.py --set elpv-val
    OMP_NUM_THREADS=1 python benchmarks/reference_variants_probe.py --set synth --by-class   # the other validation set
    OMP_NUM_THREADS=1 python benchmarks/reference_variants_probe.py --set elpv-test --limit 150   # also photos, surfaces
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import cv2
import numpy as np
import torch
from image_score_evidence import SURFACES, _arr, elpv_pairs, photo_pairs, synth_pairs
from tqdm import tqdm

from adcopilot.metrics import auroc
from adcopilot.model.inspection import align
from adcopilot.model.registry import load_detector, resolve_model
from adcopilot.model.score import DISTANCE_SIGMA, dihedral_views, nearest_distance
from adcopilot.model.upsample import upsample_centered

LAMBDAS = (0.3, 0.1, 0.03, 0.01)


def _contrast(x: np.ndarray, c: float) -> np.ndarray:
    m = x.mean()
    return np.clip(m + (x - m) * c, 0, 1).astype(np.float32)


def _scale(x: np.ndarray, f: float) -> np.ndarray:
    """(S, S, 3) scaled by ``f`` about its centre: cropped back to S, or its border reflected out to S."""
    h = x.shape[0]
    n = int(round(h * f))
    y = cv2.resize(x, (n, n), interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)
    if f > 1:
        o = (n - h) // 2
        return y[o:o + h, o:o + h]
    a = (h - n) // 2
    return cv2.copyMakeBorder(y, a, h - n - a, a, h - n - a, cv2.BORDER_REFLECT)


VARIANTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "g0.7": lambda x: np.clip(x, 0, 1) ** 0.7, "g1.4": lambda x: np.clip(x, 0, 1) ** 1.4,
    "c0.8": lambda x: _contrast(x, 0.8), "c1.25": lambda x: _contrast(x, 1.25),
    "blur": lambda x: cv2.GaussianBlur(x, (0, 0), 1.0),
    "s0.9": lambda x: _scale(x, 0.9), "s1.1": lambda x: _scale(x, 1.1),
}
GROUPS = {"gam": ("g0.7", "g1.4"), "con": ("c0.8", "c1.25"), "scl": ("s0.9", "s1.1"), "all": tuple(VARIANTS)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", default="elpv-val", choices=["elpv-val", "elpv-test", "photos", "surfaces", "synth"])
    ap.add_argument("--n", type=int, default=200, help="synth: pairs (stage-1-style, from a seed training never used)")
    ap.add_argument("--by-class", action="store_true", help="photos, surfaces, synth: AUROC per class as well")
    ap.add_argument("--per-side", type=int, default=100, help="elpv-val: normal and defective cells per type")
    ap.add_argument("--limit", type=int, default=150, help="elpv-test: cells per type")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    det, _ = load_detector(resolve_model("default"))
    size = det.image_size

    def feats(x: np.ndarray) -> torch.Tensor:  # (S, S, 3) -> (N, 152) unit-norm patches
        return det.patch_features(np.ascontiguousarray(x, dtype=np.float32))[0].flatten(1).T

    def smax(d: torch.Tensor, h: int) -> float:  # (N,) patch distances -> the baseline's image score
        b = upsample_centered(d.view(1, 1, h, h).float(), size // h)[0, 0].numpy()
        return float(cv2.GaussianBlur(b, (0, 0), DISTANCE_SIGMA).max())

    if args.set.startswith("elpv"):
        pairs = list(elpv_pairs(args.set, args.seed, 1, args.per_side, args.limit if args.set == "elpv-test" else None))
    elif args.set == "synth":
        pairs = list(synth_pairs(args.n, args.seed))
    else:
        pairs = list(photo_pairs(args.seed, 1, SURFACES if args.set == "surfaces" else None))
    cache: dict[str, tuple] = {}
    rows = []
    for group, label, refs, query in tqdm(pairs, mininterval=10):
        key = str(refs[0]) if not isinstance(refs[0], np.ndarray) else str(id(refs[0]))
        if key not in cache:
            arr = _arr(refs[0], size) if not isinstance(refs[0], np.ndarray) else refs[0]
            views = dihedral_views(arr)
            bank = {"v8": torch.cat([feats(v) for v in views])}  # (8N, 152)
            bank.update({k: torch.cat([feats(f(v)) for v in views]) for k, f in VARIANTS.items()})
            mu = bank["v8"].mean(0)
            cov = torch.cov(bank["v8"].T)  # (152, 152)
            whiten = {}
            for lam in LAMBDAS:
                ev, vec = torch.linalg.eigh(cov + lam * cov.trace() / cov.shape[0] * torch.eye(cov.shape[0]))
                whiten[lam] = vec @ torch.diag(ev.rsqrt()) @ vec.T
            cache.clear()  # references are seldom drawn twice
            cache[key] = (arr, bank, mu, whiten)
        arr, bank, mu, whiten = cache[key]
        q = _arr(query, size) if not isinstance(query, np.ndarray) else query
        tok = feats(align(q, arr).compared)  # registered as the product registers it
        n = tok.shape[0]
        h = int(round(n ** 0.5))
        dd = {k: nearest_distance(tok, b) for k, b in bank.items()}
        row = {"label": label, "group": group, "d1": smax(nearest_distance(tok, bank["v8"][:n]), h),
               "d8": smax(dd["v8"], h)}
        row.update({k: smax(torch.minimum(dd["v8"], dd[k]), h) for k in VARIANTS})
        row.update({g: smax(torch.stack([dd["v8"], *(dd[k] for k in ks)]).min(0).values, h) for g, ks in GROUPS.items()})
        for lam, w in whiten.items():
            zq, zv = (tok - mu) @ w, (bank["v8"] - mu) @ w
            row[f"wd8_{lam}"] = smax(torch.cdist(zq, zv).min(1).values, h)
            row[f"maha_{lam}"] = smax(zq.norm(dim=1), h)
        rows.append(row)
    keys = [k for k in rows[0] if k not in ("label", "group")]
    groups = sorted({r["group"] for r in rows})
    for g in groups if args.set.startswith("elpv") else [None, *(groups if args.by_class else [])]:
        sub = [r for r in rows if g is None or r["group"] == g]
        y = np.array([r["label"] for r in sub])
        if len(set(y)) < 2:  # a class of one label (a few synthetic pairs) has no AUROC
            continue
        print(f"{args.set} seed {args.seed} {g or 'all'} ({len(sub)}): "
              + " ".join(f"{k}={auroc(np.array([r[k] for r in sub]), y):.3f}" for k in keys), flush=True)


if __name__ == "__main__":
    main()
