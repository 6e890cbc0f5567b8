"""MMAD-BBox: box-based localization scoring (mIoU and accuracy at IoU 0.1 / 0.3 / 0.5).

For each query the model answers with boxes in Qwen2.5-VL's JSON, ``[{"bbox_2d": [x1, y1, x2,
y2], "label": ...}]``; the ground truth is the boxes that
:func:`adcopilot.data.masks.mask_to_boxes` extracts from the defect mask. Rules (MMAD-BBox's
authors have not released theirs; these are ours):

1. Parsing (:func:`parse_boxes`): code fences and text around the JSON are ignored; small JSON
   faults (single quotes, trailing commas, a missing closing bracket) are repaired; ``bbox_2d``
   (or ``bbox``/``box``) lists of 4 numbers anywhere in the reply are collected, and bare
   ``[x1, y1, x2, y2]`` lists are accepted. An explicit empty list ``[]`` means "no defect". A
   reply with none of these is *unparsable*. Coordinates are pixels of the query, or 0-1000
   relative (``coords="relative1000"``) when a backend says so, or pixels of a resized frame
   (``frame=(w, h)``); they are mapped to query pixels, ordered and clipped to the image.
2. IoU per image: the IoU of the **union** of the predicted boxes with the **union** of the
   ground-truth boxes (areas of unions, exactly, in pixels; x2/y2 exclusive). Several boxes on
   either side are thus scored as the area they cover, whatever their number or order.
3. Anomalous images: an unparsable or empty answer scores IoU 0; nothing is dropped. mIoU is
   the mean IoU over all anomalous images; Acc@t the fraction with IoU >= t.
4. Normal images (no defect) are reported apart: a box on one is a **false alarm**; the false
   alarm rate is over all normal images (an unparsable answer on a normal image is counted as
   unparsable, not as a false alarm).

Usage::

    boxes = parse_boxes(reply, image_size=(w, h))        # [[x1, y1, x2, y2], ...] or None
    iou = union_iou(boxes or [], gt_boxes_from_mask("mask.png", (w, h)))
    summary = summarize_bbox(records)                    # mIoU, acc@0.1/0.3/0.5, false alarms
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from adcopilot.data.masks import load_mask, mask_to_boxes
from adcopilot.errors import AdcopilotError
from adcopilot.model.box_text import BBOX_PROMPT, bbox_prompt, parse_box_text  # noqa: F401 - re-exported

BoxCoords = Literal["pixel", "relative1000"]
IOU_THRESHOLDS = (0.1, 0.3, 0.5)

def parse_boxes(
    text: str,
    image_size: tuple[int, int],
    coords: BoxCoords = "pixel",
    frame: tuple[int, int] | None = None,
) -> list[list[float]] | None:
    """Boxes of a reply in query pixels ``[[x1, y1, x2, y2], ...]`` (see rule 1); None if unparsable.

    ``image_size`` is the query's (w, h); ``frame`` the (w, h) the reply's pixel coordinates refer
    to when the backend resized the query (default: the query itself).
    """
    raw = parse_box_text(text)
    if raw is None:
        return None
    w, h = image_size
    if coords == "relative1000":
        sx, sy = w / 1000.0, h / 1000.0
    elif coords == "pixel":
        fw, fh = frame or image_size
        sx, sy = w / float(fw), h / float(fh)
    else:
        raise AdcopilotError(f"unknown box coordinates '{coords}'; use 'pixel' or 'relative1000'")
    out = []
    for x1, y1, x2, y2 in raw:
        x1, x2 = sorted((x1 * sx, x2 * sx))
        y1, y2 = sorted((y1 * sy, y2 * sy))
        x1, x2 = min(max(x1, 0.0), w), min(max(x2, 0.0), w)
        y1, y2 = min(max(y1, 0.0), h), min(max(y2, 0.0), h)
        out.append([x1, y1, x2, y2])
    return out


def union_area(boxes: Sequence[Sequence[float]]) -> float:
    """Exact area covered by the union of boxes (coordinate compression)."""
    boxes = [b for b in boxes if b[2] > b[0] and b[3] > b[1]]
    if not boxes:
        return 0.0
    b = np.asarray(boxes, dtype=np.float64)  # (n, 4)
    xs, ys = np.unique(b[:, [0, 2]]), np.unique(b[:, [1, 3]])
    cover = np.zeros((len(ys) - 1, len(xs) - 1), dtype=bool)  # (cells y, cells x)
    for x1, y1, x2, y2 in b:
        i1, i2 = np.searchsorted(xs, [x1, x2])
        j1, j2 = np.searchsorted(ys, [y1, y2])
        cover[j1:j2, i1:i2] = True
    cell = np.outer(np.diff(ys), np.diff(xs))
    return float(cell[cover].sum())


def union_iou(pred: Sequence[Sequence[float]], gt: Sequence[Sequence[float]]) -> float:
    """IoU of the union of ``pred`` boxes with the union of ``gt`` boxes (0 when either is empty)."""
    if not pred or not gt:
        return 0.0
    inter = [
        [max(p[0], g[0]), max(p[1], g[1]), min(p[2], g[2]), min(p[3], g[3])] for p in pred for g in gt
    ]
    a_inter = union_area(inter)
    a_union = union_area(pred) + union_area(gt) - a_inter
    return a_inter / a_union if a_union > 0 else 0.0


def gt_boxes_from_mask(mask_path: str | os.PathLike, image_size: tuple[int, int] | None = None) -> list[list[int]]:
    """Ground-truth boxes of a defect mask (the curation module's extraction), in image pixels.

    A mask of a different size than the image (``image_size`` = (w, h)) has its boxes scaled.
    """
    mask = load_mask(mask_path)
    boxes = [list(r.bbox_2d) for r in mask_to_boxes(mask)]
    mh, mw = mask.shape
    if image_size is not None and (mw, mh) != tuple(image_size):
        sx, sy = image_size[0] / mw, image_size[1] / mh
        boxes = [[round(x1 * sx), round(y1 * sy), round(x2 * sx), round(y2 * sy)] for x1, y1, x2, y2 in boxes]
    return boxes


@dataclass
class BBoxRecord:
    """One localization answer and its ground truth (empty ``gt`` = a normal image)."""

    image: str
    reply: str
    gt: list[list[float]]
    image_size: tuple[int, int]
    coords: BoxCoords = "pixel"
    frame: tuple[int, int] | None = None
    error: str | None = None
    pred: list[list[float]] | None = field(default=None, init=False)
    iou: float | None = field(default=None, init=False)

    def evaluate(self) -> BBoxRecord:
        self.pred = None if self.error else parse_boxes(self.reply, self.image_size, self.coords, self.frame)
        self.iou = union_iou(self.pred or [], self.gt) if self.gt else None
        return self


def summarize_bbox(records: Sequence[BBoxRecord], by_dataset: bool = True) -> dict[str, Any]:
    """mIoU and Acc@0.1/0.3/0.5 (percent) over anomalous images, false alarms over normal ones."""

    def one(recs: list[BBoxRecord]) -> dict[str, Any]:
        for r in recs:
            if r.pred is None and r.iou is None:
                r.evaluate()
        anom = [r for r in recs if r.gt]
        normal = [r for r in recs if not r.gt]
        ious = np.array([r.iou or 0.0 for r in anom], dtype=np.float64)
        out: dict[str, Any] = {
            "anomalous_images": len(anom),
            "mIoU": float(100 * ious.mean()) if len(ious) else None,
        }
        for t in IOU_THRESHOLDS:
            out[f"acc@{t}"] = float(100 * (ious >= t).mean()) if len(ious) else None
        out["unparsable"] = sum(r.pred is None for r in anom)
        out["empty"] = sum(r.pred == [] for r in anom)
        out["normal_images"] = len(normal)
        out["false_alarms"] = sum(bool(r.pred) for r in normal)
        out["false_alarm_rate"] = float(100 * out["false_alarms"] / len(normal)) if normal else None
        out["normal_unparsable"] = sum(r.pred is None for r in normal)
        return out

    summary = {"overall": one(list(records))}
    if by_dataset:
        groups: dict[str, list[BBoxRecord]] = {}
        for r in records:
            groups.setdefault(r.image.split("/")[0], []).append(r)
        summary["datasets"] = {d: one(g) for d, g in groups.items()}
    return summary


def format_bbox_summary(summary: dict[str, Any]) -> str:
    """A plain-text table of :func:`summarize_bbox`'s result."""
    cols = ["mIoU", *(f"acc@{t}" for t in IOU_THRESHOLDS), "anomalous_images", "unparsable", "false_alarm_rate", "normal_images"]
    rows = [("overall", summary["overall"]), *summary.get("datasets", {}).items()]
    heads = ["dataset", *cols]
    body = [
        [name, *("-" if r.get(c) is None else (f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c])) for c in cols)]
        for name, r in rows
    ]
    widths = [max(len(x[i]) for x in [heads, *body]) for i in range(len(heads))]
    return "\n".join(
        "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths, strict=True)))
        for r in [heads, *body]
    )
