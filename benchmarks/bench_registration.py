"""Effect of registration: image AUROC with and without aligning the query onto the reference.

Pairs from real photos held out of training (``HELDOUT_FOR_EVALUATION``): the reference is a crop,
the query the same crop after a random shift (up to ``--shift`` of the side) and rotation (up to
``--rotate`` degrees), half of them with a painted defect. Same pairs for every setting.

    python benchmarks/bench_registration.py --n 60 --models baseline default
"""

from __future__ import annotations

import argparse

import cv2
import numpy as np
from sklearn.metrics import roc_auc_score

from adcopilot import Copilot
from adcopilot.data.normals import HELDOUT_FOR_EVALUATION, licensed_normal_images


def make_pairs(n: int, shift: float, rotate: float, seed: int = 0):
    photos = [p for p in licensed_normal_images() if p.name in HELDOUT_FOR_EVALUATION]
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(n):
        img = photos[i % len(photos)].image
        h, w = img.shape[:2]
        side = min(h, w, 320)
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        ref = np.ascontiguousarray(img[y : y + side, x : x + side])
        m = cv2.getRotationMatrix2D((side / 2, side / 2), float(rng.uniform(-rotate, rotate)), 1.0)
        m[:, 2] += rng.uniform(-shift, shift, 2) * side
        query = cv2.warpAffine(ref, m, (side, side), borderMode=cv2.BORDER_REFLECT)
        label = i % 2
        if label:
            cy, cx = rng.integers(side // 4, 3 * side // 4, 2)
            colour = tuple(int(v) for v in rng.integers(0, 255, 3))
            cv2.ellipse(query, (int(cx), int(cy)), (int(rng.integers(8, 24)), int(rng.integers(4, 14))),
                        float(rng.uniform(0, 180)), 0, 360, colour, -1)
        pairs.append((ref, query, label))
    return pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--shift", type=float, default=0.04)
    ap.add_argument("--rotate", type=float, default=3.0)
    ap.add_argument("--models", nargs="+", default=["baseline", "default"])
    args = ap.parse_args()
    pairs = make_pairs(args.n, args.shift, args.rotate)
    labels = [p[2] for p in pairs]
    for model in args.models:
        for reg in (False, True):
            cp = Copilot.load(model, registration=reg)
            scores = [cp.inspect(q, [r]).score for r, q, _ in pairs]
            normal_alarms = sum(s >= cp.threshold for s, y in zip(scores, labels, strict=True) if y == 0)
            print(f"{cp.model_name:>10} registration={'on ' if reg else 'off'} AUROC {roc_auc_score(labels, scores):.4f} "
                  f"false alarms on normal pairs {normal_alarms}/{labels.count(0)}")


if __name__ == "__main__":
    main()
