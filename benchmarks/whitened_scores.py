"""The whitened nearest-patch distance of one reference, added to ``map_inputs_probe.py``'s files as a blend's third term.

``reference_variants_probe.py`` found that whitening the tower's patch features by a Gaussian fitted on the reference's
eight dihedral views ranks the outside surfaces far better than the plain distance to the views, and cells worse. Is it
worth a share of the one-reference blend (``blend_scores.py --evidence DIR --with-white``)? This adds, to every row of a
``map_inputs_probe.py`` file (the same pairs, in the same order: the label and group of each row are checked), the
maximum of the smoothed whitened distance map: ``white_0.3`` and ``white_0.1`` (the covariance's ridge, lambda times
the mean variance).

    python benchmarks/whitened_scores.py --set elpv-val --seed 0 --into DIR/elpv-val-0.json   # and synth, test sets
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import torch
from image_score_evidence import SURFACES, _arr, elpv_pairs, photo_pairs, synth_pairs
from tqdm import tqdm

from adcopilot.model.inspection import align
from adcopilot.model.registry import load_detector, resolve_model
from adcopilot.model.score import DISTANCE_SIGMA, dihedral_views
from adcopilot.model.upsample import upsample_centered

LAMBDAS = (0.3, 0.1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", required=True, choices=["elpv-val", "elpv-test", "photos", "surfaces", "synth"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=150, help="elpv-test: cells per type (as the file was made)")
    ap.add_argument("--n", type=int, default=100, help="synth: pairs (as the file was made)")
    ap.add_argument("--into", type=Path, required=True, help="the map_inputs_probe.py file of this set and seed")
    args = ap.parse_args()
    torch.set_num_threads(1)
    det, _ = load_detector(resolve_model("default"))
    size = det.image_size
    rows = json.loads(args.into.read_text())
    if args.set in ("elpv-val", "elpv-test"):  # map_inputs_probe.py's draws
        pairs = elpv_pairs(args.set, args.seed, 1, 100, args.limit if args.set == "elpv-test" else None, 20)
    elif args.set == "synth":
        pairs = synth_pairs(args.n, args.seed)
    else:
        pairs = photo_pairs(args.seed, 1, SURFACES if args.set == "surfaces" else None)
    cache: dict[str, tuple] = {}
    i = -1
    for i, (group, label, refs, query) in enumerate(tqdm(pairs, desc=args.set, mininterval=30)):
        if (rows[i]["label"], rows[i]["group"]) != (label, group):
            raise SystemExit(f"{args.into}: row {i} is not this pair ({rows[i]['group']}, {rows[i]['label']})")
        r = refs[0]
        key = str(r) if isinstance(r, Path) else None
        if key is None or key not in cache:
            arr = _arr(r, size) if isinstance(r, Path) else r
            views = torch.cat([det.patch_features(v)[0].flatten(1).T for v in dihedral_views(arr)])  # (8N, 152)
            mu, cov = views.mean(0), torch.cov(views.T)
            whiten = {}
            for lam in LAMBDAS:
                ev, vec = torch.linalg.eigh(cov + lam * cov.trace() / cov.shape[0] * torch.eye(cov.shape[0]))
                w = vec @ torch.diag(ev.rsqrt()) @ vec.T
                whiten[lam] = (w, (views - mu) @ w)
            entry = (arr, mu, whiten)
            if key is not None:
                cache[key] = entry
        else:
            entry = cache[key]
        arr, mu, whiten = entry
        q = _arr(query, size) if isinstance(query, Path) else query
        tok = det.patch_features(align(q, arr).compared)[0].flatten(1).T  # (N, 152), aligned as the product aligns
        h = int(round(tok.shape[0] ** 0.5))
        for lam, (w, zv) in whiten.items():
            d = torch.cdist((tok - mu) @ w, zv).min(1).values.view(1, 1, h, h) / tok.shape[1] ** 0.5
            b = upsample_centered(d, size // h)[0, 0].numpy()
            rows[i][f"white_{lam}"] = float(cv2.GaussianBlur(b, (0, 0), DISTANCE_SIGMA).max())
    if i + 1 != len(rows):
        raise SystemExit(f"{args.into}: {len(rows)} rows, {i + 1} pairs")
    args.into.write_text(json.dumps(rows))
    print(f"{args.into}: white scores added to {len(rows)} rows", flush=True)


if __name__ == "__main__":
    main()
