"""From an anomaly map to defect boxes.

Rules (documented for users and for MMAD-BBox):

1. Binarise the map at ``threshold``.
2. Merge: components closer than ``merge_frac`` of the image diagonal are joined (a dilation with
   a square of that size before labelling), so a crack broken into pieces gives one box.
3. Each merged component's box is the tight box of its *thresholded pixels* (not of the dilation).
4. Drop specks: a component with fewer pixels than ``min_area_frac`` of the image (at least
   ``min_pixels``) is ignored.
5. Each box's score is the maximum of the map inside it; boxes are sorted by score, and at most
   ``max_boxes`` are kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass
class BoxRules:
    merge_frac: float = 0.03
    min_area_frac: float = 0.0005
    min_pixels: int = 4
    max_boxes: int = 10


def boxes_from_map(
    amap: np.ndarray, threshold: float, rules: BoxRules | None = None
) -> list[tuple[list[int], float]]:
    """(H, W) map -> [([x1, y1, x2, y2], score), ...] in map pixels, x2/y2 exclusive."""
    rules = rules or BoxRules()
    h, w = amap.shape
    binary = (amap >= threshold).astype(np.uint8)
    if not binary.any():
        return []
    k = max(1, int(round(rules.merge_frac * float(np.hypot(h, w)))))
    merged = cv2.dilate(binary, np.ones((k, k), np.uint8)) if k > 1 else binary
    n, labels = cv2.connectedComponents(merged, connectivity=8)
    min_area = max(rules.min_pixels, int(rules.min_area_frac * h * w))
    out: list[tuple[list[int], float]] = []
    for i in range(1, n):
        ys, xs = np.nonzero((labels == i) & (binary > 0))
        if len(xs) < min_area:
            continue
        box = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
        score = float(amap[ys, xs].max())
        out.append((box, score))
    out.sort(key=lambda b: -b[1])
    return out[: rules.max_boxes]
