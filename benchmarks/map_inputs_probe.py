"""The one-reference map with other inputs: is the comparison model's map on textures held back by what it is given?

Per pair (the sets of ``image_score_evidence.py``, the query aligned as the inspection core aligns it), the default
model's comparison is run again with, as the dense head's distance channel, the plain nearest-reference distance
``d1`` (the shipped map), the distance to the reference's dihedral views ``d8``, or the self-gated distance of
``"fused-self"`` (on the detector's candidates ``ds``, on every patch ``dsa``); and with the reference's views as
references of the comparison itself (``v4``: its four flips, ``v8``: all eight views). Each map's pooled score
(``map_*``), its maximum, and the fused and self-gated scores on it are saved as JSON, one file per set and seed, with
the query's normal level (``level``: the 75th percentile of ``d1``, as ``"fused-spread"`` reads it; ``level_Q``: other
quantiles Q);
``--score`` prints image AUROC and balanced accuracy at 0.5 per set (ELPV per type, the surfaces' mean).

    python benchmarks/map_inputs_probe.py --set elpv-val --out DIR/elpv-val-0.json    # and synth, elpv-test
    python benchmarks/map_inputs_probe.py --score DIR
"""
import argparse
import glob
import json
from pathlib import Path

import cv2
import numpy as np
import torch
from image_score_evidence import SURFACES, _arr, elpv_pairs, photo_pairs, synth_pairs
from tqdm import tqdm

from adcopilot.metrics import auroc
from adcopilot.model.compare import grid_positions
from adcopilot.model.inspection import align
from adcopilot.model.registry import load_detector, resolve_model
from adcopilot.model.score import (
    dihedral_views,
    fused_score,
    nearest_distance,
    self_distance,
    self_gated_distance,
    spread_level,
    view_distance,
)
from adcopilot.model.upsample import upsample_centered

#: Other quantiles of the query's nearest-reference distances written beside ``level`` (the 0.75 one).
LEVEL_QUANTILES = (0.1, 0.25, 0.5)


def prob_of(det, logits):
    """(1, 1, h, w) logits -> the (S, S) probability map as the detector makes it (up-sampled, smoothed)."""
    p = torch.sigmoid(upsample_centered(logits, det.image_size // logits.shape[-1]))[0, 0].numpy()
    return cv2.GaussianBlur(p, (0, 0), det.model.cfg.smooth_sigma)

def topk(x, frac=0.01):
    """The pooled map's score: the mean of the top ``frac`` of the map."""
    f = x.ravel()
    k = max(1, int(round(f.size * frac)))
    return float(np.partition(f, f.size - k)[-k:].mean())

@torch.inference_mode()
def run(det, pairs, size, all_variants=True):
    """One row of scores per (group, label, references, query) pair; ``all_variants=False``: the plain map, the
    reverse comparison and the baselines only."""
    m = det.model
    cfg = m.cfg
    cache = {}
    rows = []
    for group, label, refs, query in pairs:
        r = refs[0]
        key = str(r) if isinstance(r, Path) else None
        if key is None or key not in cache:
            arr = _arr(r, size) if isinstance(r, Path) else r
            grids = [det.patch_features(v)[0] for v in dihedral_views(arr)]
            views = torch.cat([g.flatten(1).T for g in grids])
            side = grids[0].shape[-1]
            own = self_distance(grids[0].flatten(1).T, (side, side)).view(side, side)
            # the reference's views as the comparison's references, only when those variants are asked for
            rin8 = det.model.reference_inputs(torch.stack(grids)[None]) if all_variants else None  # (1, 8, C, h, w)
            rin4 = det.model.reference_inputs(torch.stack(grids[:4])[None]) if all_variants else None
            entry = (arr, det.model.reference_inputs(grids[0][None, None]), views, own, rin8, rin4)
            if key is not None:
                cache[key] = entry
        else:
            entry = cache[key]
        arr, rin, views, own, rin8, rin4 = entry
        q = _arr(query, size) if isinstance(query, Path) else query
        q = align(q, arr).compared
        qf = det.patch_features(q)  # (1,152,h,w)
        b, c, h, w = qf.shape
        qt = qf.flatten(2).transpose(1, 2)
        sim = torch.bmm(qt, rin.tokens.transpose(1, 2))
        d1 = (1 - sim.max(dim=2).values).clamp_min(0).view(1, 1, h, w)
        pos = grid_positions(h, w, qf.device)
        cur = m.input_proj(qt)
        cur, _ = m.compare.encode(cur, rin.prev, pos, rin.pos, prev_queries=rin.queries)
        fmap = cur.transpose(1, 2).reshape(b, -1, h, w)
        tokens = qt[0]
        d8 = nearest_distance(tokens, views).view(h, w)
        d8c = view_distance(d1[0, 0], tokens, views[h * w:])  # the detector's candidates d8
        ds = self_gated_distance(d8c, tokens, own, cfg.self_gate, cfg.twin_quantile)
        ds_all = self_gated_distance(d8, tokens, own, cfg.self_gate, cfg.twin_quantile)
        row = {"label": label, "group": group, "level": spread_level(d1[0, 0]),
               **{f"level_{q}": float(torch.quantile(d1.flatten(), q)) for q in LEVEL_QUANTILES}}
        for name, dist in (("d1", d1[0, 0]), ("d8", d8), ("ds", ds), ("dsa", ds_all))[: 4 if all_variants else 1]:
            p = prob_of(det, m.head(fmap, dist.view(1, 1, h, w)))
            row[f"map_{name}"] = topk(p)
            row[f"fused_{name}"] = fused_score(p, d8c, cfg.fused_weight)
            row[f"fself_{name}"] = fused_score(p, ds, cfg.fused_weight)
            row[f"max_{name}"] = float(p.max())
        # The comparison the other way round: the reference as the query, the aligned query as its reference. Normal
        # variation that one reference does not show (grain) differs both ways; a defect of the query only one way.
        rq = det.model.reference_inputs(qf[:, None])  # the query's features as a reference's inputs
        rt = rin.tokens  # (1, N, C) the reference's patches
        dr = (1 - torch.bmm(rt, qt.transpose(1, 2)).max(dim=2).values).clamp_min(0).view(1, 1, h, w)
        cur3, _ = m.compare.encode(m.input_proj(rt), rq.prev, pos, rq.pos, prev_queries=rq.queries)
        p_rev = prob_of(det, m.head(cur3.transpose(1, 2).reshape(b, -1, h, w), dr))
        row["rev_map"] = topk(p_rev)
        row["rev_baseline"] = float(cv2.GaussianBlur(upsample_centered(dr, size // h)[0, 0].numpy(), (0, 0), 4.0).max())
        for name, rr in (("v8", rin8), ("v4", rin4)) if all_variants else ():
            sim = torch.bmm(qt, rr.tokens.transpose(1, 2))
            dd = (1 - sim.max(dim=2).values).clamp_min(0).view(1, 1, h, w)
            cur2, _ = m.compare.encode(m.input_proj(qt), rr.prev, pos, rr.pos, prev_queries=rr.queries)
            p = prob_of(det, m.head(cur2.transpose(1, 2).reshape(b, -1, h, w), dd))
            row[f"map_{name}"] = topk(p)
            row[f"fused_{name}"] = fused_score(p, d8c, cfg.fused_weight)
            row[f"fself_{name}"] = fused_score(p, ds, cfg.fused_weight)
            row[f"max_{name}"] = float(p.max())
        baseline_map = cv2.GaussianBlur(upsample_centered(d1, size // h)[0, 0].numpy(), (0, 0), 4.0)
        row["baseline"] = float(baseline_map.max())
        rows.append(row)
    return rows

def score(folder: Path) -> None:
    """Print every score's image AUROC and balanced accuracy at 0.5 per set (the mean over its files)."""
    res: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for s in ("elpv-val", "synth", "elpv-test", "photos", "surfaces"):
        for f in sorted(glob.glob(f"{folder}/{s}-*.json")):
            rows = json.loads(Path(f).read_text())
            for r in rows:  # the reverse comparison as a normaliser of the forward one
                if "rev_map" in r:
                    r["map - 0.5 rev"] = r["map_d1"] - 0.5 * r["rev_map"]
                    r["baseline - 0.5 rev"] = r["baseline"] - 0.5 * r["rev_baseline"]
                    r["fself - 0.2 rev baseline"] = r["fself_d1"] - 0.2 * r["rev_baseline"]
            y = np.array([r["label"] for r in rows])
            g = np.array([r["group"] for r in rows])
            if s.startswith("elpv"):
                pools = {f"{s}:mono": g == "mono", f"{s}:poly": g == "poly"}
            else:
                pools = {str(x): g == x for x in sorted(set(g))} if s == "surfaces" else {s: np.ones(len(y), bool)}
            for k in (k for k in rows[0] if k not in ("label", "group") and not k.startswith("level")):
                sc = np.array([r[k] for r in rows])
                vals = []
                for p, idx in pools.items():
                    fa, miss = (sc[idx][y[idx] == 0] >= 0.5).mean(), (sc[idx][y[idx] == 1] < 0.5).mean()
                    vals.append((p, auroc(sc[idx], y[idx]), 1 - (fa + miss) / 2))
                if s == "surfaces":
                    vals = [("surfaces", np.mean([v[1] for v in vals]), np.mean([v[2] for v in vals]))]
                for p, a, b in vals:
                    res.setdefault(k, {}).setdefault(p, []).append((a, b))
    for k, d in res.items():
        print(f"{k:>12}: " + " | ".join(f"{c} {np.mean([v[0] for v in d[c]]):.3f} bacc {np.mean([v[1] for v in d[c]]):.2f}"
                                        for c in d))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", choices=["elpv-val", "elpv-test", "photos", "surfaces", "synth"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=None, help="elpv-test: cells per type")
    ap.add_argument("--n", type=int, default=100, help="synth: pairs")
    ap.add_argument("--out", help="the JSON file to write")
    ap.add_argument("--reverse-only", action="store_true", help="only the plain map, the comparison the other way "
                    "round and the baselines (faster)")
    ap.add_argument("--score", type=Path, help="print the figures of a folder of such files")
    a = ap.parse_args()
    if a.score:
        score(a.score)
        raise SystemExit(0)
    torch.set_num_threads(1)
    det, _ = load_detector(resolve_model("default"))
    if a.set in ("elpv-val", "elpv-test"):
        pairs = elpv_pairs(a.set, a.seed, 1, 100, a.limit, 20)
    elif a.set == "photos":
        pairs = photo_pairs(a.seed, 1)
    elif a.set == "surfaces":
        pairs = photo_pairs(a.seed, 1, SURFACES)
    else:
        pairs = synth_pairs(a.n, a.seed)
    rows = run(det, tqdm(pairs, desc=a.set, mininterval=30), det.image_size, not a.reverse_only)
    Path(a.out).write_text(json.dumps(rows))
