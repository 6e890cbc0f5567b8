"""Small geometry helpers shared by inspection, curation and evaluation: regions, IoU."""

from __future__ import annotations

from collections.abc import Sequence

#: MMAD's names for the cells of a 3x3 grid, row by row.
GRID_NAMES = [
    ["top left", "top", "top right"],
    ["left", "center", "right"],
    ["bottom left", "bottom", "bottom right"],
]


def region_name(box: Sequence[float], width: int, height: int) -> str:
    """Name of the 3x3 grid cell holding the box's centre ("top left" ... "center" ...)."""
    cx = (box[0] + box[2]) / 2.0 / max(width, 1)
    cy = (box[1] + box[3]) / 2.0 / max(height, 1)
    col = min(2, max(0, int(cx * 3)))
    row = min(2, max(0, int(cy * 3)))
    return GRID_NAMES[row][col]


def box_area(box: Sequence[float]) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = box_area(a) + box_area(b) - inter
    return inter / union if union > 0 else 0.0
