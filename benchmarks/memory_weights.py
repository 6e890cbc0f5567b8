"""ELPV image AUROC of an adapted model at every weight of its product memory in the fused map.

For each test cell the comparison model's map and the memory's map are computed once (registered onto
the first reference, as inspection does) and fused at weights 0 (comparison alone) to 1 (memory alone),
so every weight sees the same references. Whole ELPV test split, references drawn (seeded) from the
training split's normal cells of the same type.

    python benchmarks/memory_weights.py --model $ADCOPILOT_HOME/models/nano-elpv --shots 1 5
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from adcopilot.data.elpv import split
from adcopilot.imaging import load_image, to_float_array
from adcopilot.model.nano import NanoDetector, load_nano_detector
from adcopilot.model.score import pooled_score
from adcopilot.registration import register, warp
from adcopilot.train.validation import WEIGHTS


def run(det: NanoDetector, test, train, kind: str, shots: int, seed: int) -> dict[float, float]:
    normals = [c for c in train if c.kind == kind and c.probability == 0.0]
    items = [c for c in test if c.kind == kind and c.probability in (0.0, 1.0)]
    rng = np.random.default_rng(seed)
    size = det.image_size
    scores: dict[float, list[float]] = {w: [] for w in WEIGHTS}
    for c in tqdm(items, desc=f"{kind} {shots}-shot", leave=False):
        refs = [to_float_array(load_image(normals[int(i)].path), size)
                for i in rng.choice(len(normals), shots, replace=False)]
        q = to_float_array(load_image(c.path), size)
        reg = register(q, refs[0])
        q = warp(q, reg.matrix) if reg.method != "identity" else q
        prob, mem, _ = det.maps(q, [det.encode_reference(r) for r in refs])
        for w in WEIGHTS:
            scores[w].append(pooled_score((1 - w) * prob + w * mem, det.model.cfg.topk_frac))
    labels = [int(c.probability == 1.0) for c in items]
    return {w: round(float(roc_auc_score(labels, s)), 3) for w, s in scores.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="an adapted checkpoint folder with a product memory")
    ap.add_argument("--shots", nargs="+", type=int, default=[1])
    ap.add_argument("--kinds", nargs="+", default=["mono", "poly"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    det, _ = load_nano_detector(args.model)
    if det.memory is None:
        raise SystemExit(f"error: {args.model}: no product memory (memory.safetensors); adapt it with one")
    parts = split(seed=0)
    results = {}
    for shots in args.shots:
        for kind in args.kinds:
            r = run(det, parts["test"], parts["train"], kind, shots, args.seed)
            results[f"{kind} {shots}-shot"] = r
            print(f"{kind} {shots}-shot: " + "  ".join(f"w={w}: {a}" for w, a in r.items()), flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
