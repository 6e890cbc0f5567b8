"""Detection metrics: image AUROC, AP, F1-max, balanced accuracy at a threshold; pixel AUROC and PRO.

All are computed exactly from sorted scores (ties handled as one threshold), in plain numpy:

- image AUROC: the Mann-Whitney statistic with average ranks for ties;
- AP: the step-wise area under the precision-recall curve, sum over thresholds of
  (R_n - R_(n-1)) * P_n (the definition scikit-learn uses);
- F1-max: the best F1 over all thresholds;
- balanced accuracy at the stored threshold (score >= threshold is anomalous);
- pixel AUROC over all pixels of all images, and PRO (per-region overlap) integrated up to a
  false-positive rate of 0.3 and divided by 0.3 (MVTec AD's AUPRO). Regions are the
  8-connected components of each ground-truth mask; each region weighs equally.

Anomaly maps and masks are compared at a common size: both are resized so the long edge is at
most ``pixel_size`` (default 256) before the pixel metrics, which bounds memory on large images.

Usage::

    m = image_metrics(scores, labels, threshold=0.35)   # {"auroc": ..., "ap": ..., ...}
    p = pixel_metrics(maps, masks)                       # {"pixel_auroc": ..., "pro": ...}
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from adcopilot.errors import AdcopilotError
from adcopilot.metrics import auroc as rank_auroc


def _check(scores: Sequence[float], labels: Sequence[int | bool]) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).astype(bool).ravel()
    if s.shape != y.shape:
        raise AdcopilotError(f"{len(s)} scores but {len(y)} labels")
    if not np.isfinite(s).all():
        raise AdcopilotError("scores contain NaN or infinity")
    return s, y


def auroc(scores: Sequence[float], labels: Sequence[int | bool]) -> float | None:
    """Area under the ROC curve (None when only one class is present)."""
    s, y = _check(scores, labels)
    return rank_auroc(s, y)


def _pr_curve(s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall at every distinct threshold, highest threshold first."""
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    tp = np.cumsum(y)
    fp = np.cumsum(~y)
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # last index of each run of equal scores
    tp, fp = tp[last].astype(np.float64), fp[last].astype(np.float64)
    return tp / (tp + fp), tp / max(int(y.sum()), 1)


def average_precision(scores: Sequence[float], labels: Sequence[int | bool]) -> float | None:
    """Step-wise area under the precision-recall curve (None without anomalous samples)."""
    s, y = _check(scores, labels)
    if not y.any():
        return None
    precision, recall = _pr_curve(s, y)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def f1_max(scores: Sequence[float], labels: Sequence[int | bool]) -> tuple[float | None, float | None]:
    """(best F1 over all thresholds, the threshold giving it)."""
    s, y = _check(scores, labels)
    if not y.any():
        return None, None
    precision, recall = _pr_curve(s, y)
    denom = precision + recall
    f1 = np.where(denom > 0, 2 * precision * recall / np.where(denom > 0, denom, 1), 0.0)
    best = int(np.argmax(f1))
    thresholds = np.sort(np.unique(s))[::-1]
    return float(f1[best]), float(thresholds[best])


def balanced_accuracy(scores: Sequence[float], labels: Sequence[int | bool], threshold: float) -> dict[str, float | None]:
    """Accuracy on normal and on anomalous samples at ``threshold`` and their mean."""
    s, y = _check(scores, labels)
    pred = s >= threshold
    normal = float((~pred[~y]).mean()) if (~y).any() else None
    anomalous = float(pred[y].mean()) if y.any() else None
    present = [v for v in (normal, anomalous) if v is not None]
    return {
        "balanced_accuracy": sum(present) / len(present) if present else None,
        "normal_accuracy": normal,
        "anomalous_accuracy": anomalous,
    }


def image_metrics(scores: Sequence[float], labels: Sequence[int | bool], threshold: float) -> dict[str, float | int | None]:
    """Image-level AUROC, AP, F1-max (and its threshold), balanced accuracy at ``threshold``."""
    s, y = _check(scores, labels)
    f1, f1_thr = f1_max(s, y)
    out: dict[str, float | int | None] = {
        "images": len(s),
        "normal": int((~y).sum()),
        "anomalous": int(y.sum()),
        "auroc": auroc(s, y),
        "ap": average_precision(s, y),
        "f1_max": f1,
        "f1_max_threshold": f1_thr,
        "threshold": float(threshold),
    }
    out.update(balanced_accuracy(s, y, threshold))
    return out


def fit_size(shape: tuple[int, int], pixel_size: int) -> tuple[int, int]:
    """(w, h) with the long edge at most ``pixel_size``, aspect kept."""
    h, w = shape
    scale = min(1.0, pixel_size / float(max(h, w)))
    return max(1, round(w * scale)), max(1, round(h * scale))


def resize_pair(amap: np.ndarray, mask: np.ndarray, pixel_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Map and mask at the same size, long edge <= ``pixel_size`` (mask stays binary)."""
    size = fit_size(mask.shape[:2], pixel_size)
    m = cv2.resize(amap.astype(np.float32), size, interpolation=cv2.INTER_AREA if amap.shape[1] > size[0] else cv2.INTER_LINEAR)
    k = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
    return m, k


def pixel_metrics(
    maps: Sequence[np.ndarray], masks: Sequence[np.ndarray], fpr_limit: float = 0.3, pixel_size: int = 256
) -> dict[str, float | None]:
    """Pixel AUROC and PRO (normalised area up to ``fpr_limit``) over images with masks.

    ``masks`` hold the ground truth of every image (all-False for a normal image); maps and
    masks of one image may differ in size (both are brought to the mask's, capped).
    """
    if len(maps) != len(masks):
        raise AdcopilotError(f"{len(maps)} anomaly maps but {len(masks)} masks")
    scores, truth, weight = [], [], []
    n_regions = 0
    per_image_regions = []
    for amap, mask in zip(maps, masks, strict=True):
        m, k = resize_pair(np.asarray(amap), np.asarray(mask).astype(bool), pixel_size)
        n, labels = cv2.connectedComponents(k.astype(np.uint8), connectivity=8)
        per_image_regions.append((m.ravel(), k.ravel(), labels.ravel(), n))
        n_regions += n - 1
    if not per_image_regions:
        return {"pixel_auroc": None, "pro": None}
    for m, k, labels, n in per_image_regions:
        sizes = np.bincount(labels, minlength=n).astype(np.float64)
        w = np.zeros_like(m, dtype=np.float64)
        if n > 1:
            w[k] = 1.0 / (sizes[labels[k]] * n_regions)  # each region sums to 1 / n_regions
        scores.append(m)
        truth.append(k)
        weight.append(w)
    s = np.concatenate(scores).astype(np.float64)
    y = np.concatenate(truth)
    w = np.concatenate(weight)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return {"pixel_auroc": None, "pro": None}
    pix_auroc = auroc(s, y)
    # PRO curve: pixels in decreasing score order; at each distinct threshold, the mean region
    # overlap is the cumulated region weight and the FPR the cumulated share of normal pixels.
    order = np.argsort(-s, kind="mergesort")
    s_sorted = s[order]
    pro = np.cumsum(w[order])
    fpr = np.cumsum(~y[order]) / float(n_neg)
    last = np.r_[np.nonzero(np.diff(s_sorted))[0], len(s_sorted) - 1]
    fpr, pro = np.r_[0.0, fpr[last]], np.r_[0.0, pro[last]]
    keep = fpr <= fpr_limit
    f, p = fpr[keep], pro[keep]
    if f[-1] < fpr_limit:  # close the curve at the limit by linear interpolation
        j = int(np.searchsorted(fpr, fpr_limit))
        if j < len(fpr):
            t = (fpr_limit - fpr[j - 1]) / max(fpr[j] - fpr[j - 1], 1e-12)
            f = np.r_[f, fpr_limit]
            p = np.r_[p, pro[j - 1] + t * (pro[j] - pro[j - 1])]
    area = float(np.sum(np.diff(f) * (p[1:] + p[:-1]) / 2))
    return {"pixel_auroc": pix_auroc, "pro": area / fpr_limit}
