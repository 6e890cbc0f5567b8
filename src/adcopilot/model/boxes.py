"""From an anomaly map to defect boxes: one box per defect.

Rules (documented for users and for MMAD-BBox):

1. Binarise the map at ``threshold``: the seeds.
2. Grow (when a deviation map is given, :func:`deviation_map`): a large uniform defect differs from
   the references everywhere, but its middle resembles some normal patch (a dark region looks like
   the dark rim of a cell), so the comparison lights up only at its ends. Pixels whose brightness
   deviates from the references in the same direction as the seeds' deviant pixels, and at least
   ``grow_frac`` as strongly (and at least ``grow_min``), join the seed they touch (8-connected).
3. Merge: components closer than ``merge_frac`` of the image diagonal are joined (a dilation with
   a square of that size before labelling), so a crack broken into pieces gives one box.
4. Each merged component's box is the tight box of its *seed and grown pixels* (not of the dilation).
5. Drop specks: a component with fewer pixels than ``min_area_frac`` of the image (at least
   ``min_pixels``) is ignored, and so is one that touches the image border with fewer than
   ``border_speck_frac`` of the image (registration's empty margins and the frame's edge).
6. Each box's score is the maximum of the map inside it; boxes are sorted by score, and at most
   ``max_boxes`` are kept.

A map larger than :data:`BOX_MAX_PIXELS` (the query of a high-resolution camera) is boxed shrunk to
:data:`BOX_WORK_PIXELS` and the boxes scaled back: every rule is relative to the image, and the map carries
no detail finer than the detector's grid, while boxing it at full size cost many times the inspection.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from adcopilot.imaging import grey_level


@dataclass
class BoxRules:
    merge_frac: float = 0.03
    min_area_frac: float = 0.0005
    min_pixels: int = 4
    max_boxes: int = 10
    border_speck_frac: float = 0.003
    grow: bool = True
    grow_min: float = 0.6  # relative brightness deviation a grown pixel needs at least ...
    grow_frac: float = 0.8  # ... and this share of the seeds' median deviation


#: Maps with more pixels than this are boxed shrunk to ``BOX_WORK_PIXELS`` (aspect kept: still 16 map pixels
#: per cell of a 256 px detector's grid) and the boxes scaled back.
BOX_MAX_PIXELS = 2**21
BOX_WORK_PIXELS = 2**20

DEVIATION_SIGMA = 3.0  # pixels at the detector's size: the deviation is a low-frequency cue


def _relative_grey(image: np.ndarray) -> np.ndarray:
    """(S, S, 3) -> (S, S) smoothed grey level divided by its median (a global gain cancels)."""
    grey = cv2.GaussianBlur(np.ascontiguousarray(grey_level(image), dtype=np.float32), (0, 0), DEVIATION_SIGMA)
    return grey / max(float(np.median(grey)), 1e-3)


def deviation_map(query: np.ndarray, references: Sequence[np.ndarray]) -> np.ndarray:
    """Signed relative brightness deviation (S, S) of a registered query from its references.

    Per pixel, the deviation from the reference that agrees best (the smallest magnitude), so a
    variation any reference shows is no deviation. Negative: darker than the references.
    """
    q = _relative_grey(query)
    diffs = np.stack([q - _relative_grey(r) for r in references])  # (k, S, S)
    pick = np.abs(diffs).argmin(axis=0)
    return np.take_along_axis(diffs, pick[None], axis=0)[0].astype(np.float32)


def _grown(binary: np.ndarray, deviation: np.ndarray, rules: BoxRules) -> np.ndarray:
    """The seeds plus the deviating pixels connected to them (uint8 (H, W))."""
    seeds = binary > 0
    out = binary.copy()
    for sign in (-1.0, 1.0):
        signed = sign * deviation
        strong = seeds & (signed >= rules.grow_min)
        if not strong.any():
            continue
        level = max(rules.grow_min, rules.grow_frac * float(np.median(signed[strong])))
        candidates = ((signed >= level) | seeds).astype(np.uint8)
        n, labels = cv2.connectedComponents(candidates, connectivity=8)
        keep = np.zeros(n, bool)
        keep[np.unique(labels[strong])] = True
        keep[0] = False
        out |= keep[labels].astype(np.uint8)
    return out


def boxes_from_map(
    amap: np.ndarray, threshold: float, rules: BoxRules | None = None, deviation: np.ndarray | None = None
) -> list[tuple[list[int], float]]:
    """(H, W) map -> [([x1, y1, x2, y2], score), ...] in map pixels, x2/y2 exclusive.

    ``deviation``: the (H, W) signed brightness deviation of the query (:func:`deviation_map`, in the
    map's pixels) that grows the seeds; None boxes the thresholded map alone."""
    rules = rules or BoxRules()
    h, w = amap.shape
    if h * w > BOX_MAX_PIXELS:
        return _boxes_shrunk(amap, threshold, rules, deviation)
    binary = (amap >= threshold).astype(np.uint8)
    if not binary.any():
        return []
    if rules.grow and deviation is not None:
        binary = _grown(binary, deviation, rules)
    k = max(1, int(round(rules.merge_frac * float(np.hypot(h, w)))))
    merged = cv2.dilate(binary, np.ones((k, k), np.uint8)) if k > 1 else binary
    n, labels = cv2.connectedComponents(merged, connectivity=8)
    min_area = max(rules.min_pixels, int(rules.min_area_frac * h * w))
    border_area = int(rules.border_speck_frac * h * w)
    out: list[tuple[list[int], float]] = []
    for i in range(1, n):
        ys, xs = np.nonzero((labels == i) & (binary > 0))
        if len(xs) < min_area:
            continue
        box = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
        at_border = box[0] == 0 or box[1] == 0 or box[2] == w or box[3] == h
        if at_border and len(xs) < border_area:
            continue
        score = float(amap[ys, xs].max())
        out.append((box, score))
    out.sort(key=lambda b: -b[1])
    return out[: rules.max_boxes]


def _boxes_shrunk(
    amap: np.ndarray, threshold: float, rules: BoxRules, deviation: np.ndarray | None
) -> list[tuple[list[int], float]]:
    """:func:`boxes_from_map` of a large map at :data:`BOX_WORK_PIXELS`, boxes in the large map's pixels."""
    h, w = amap.shape
    scale = float(np.sqrt(BOX_WORK_PIXELS / (h * w)))
    size = (max(1, int(w * scale)), max(1, int(h * scale)))  # (w', h')
    small = cv2.resize(amap, size, interpolation=cv2.INTER_AREA)
    dev = cv2.resize(deviation, size, interpolation=cv2.INTER_AREA) if deviation is not None else None
    fx, fy = w / size[0], h / size[1]
    out = []
    for (x0, y0, x1, y1), score in boxes_from_map(small, threshold, rules, dev):
        box = [int(np.floor(x0 * fx)), int(np.floor(y0 * fy)), min(w, int(np.ceil(x1 * fx))), min(h, int(np.ceil(y1 * fy)))]
        out.append((box, score))
    return out
