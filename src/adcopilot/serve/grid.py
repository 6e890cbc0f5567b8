"""The anomaly map in a compact form for the web page: a coarse grid of floats and the box rules.

With it the page re-draws the verdict and the boxes at any threshold without asking the model
again. The grid is a *max*-pool of the map over square cells of ``cell`` query pixels (the last row
and column of cells may be cut by the image edge), so its peak, and every box score read from it,
is the map's own; a cell is above a threshold when any pixel in it is. Boxes found on the grid by
:func:`adcopilot.model.boxes.boxes_from_map` map to query pixels as
``[x1 * cell, y1 * cell, min(x2 * cell, width), min(y2 * cell, height)]``: they cover the boxes the
service finds on the full map, give or take a cell. An image no larger than ``max_side`` keeps one
pixel per cell, and then the page's boxes are the service's, except that the page does not grow
boxes along the brightness deviation (the service does, when it has the references' images): a
large uniform defect may be boxed by the page in pieces that the service's box joins.

Wire form (JSON)::

    {"width": gw, "height": gh, "cell": c, "dtype": "float32",
     "values": "<base64 of gh*gw little-endian float32, row by row>",
     "rules": {"merge_frac": ..., "min_area_frac": ..., "min_pixels": ..., "max_boxes": ...,
               "border_speck_frac": ..., "grow": ..., ...}}
"""

from __future__ import annotations

import base64
import math
from dataclasses import asdict
from typing import Any

import numpy as np

from adcopilot.model.boxes import BoxRules

GRID_MAX_SIDE = 128  # cells on the longer side: 64 KiB of floats, under 100 KB as base64


def pool_max(amap: np.ndarray, max_side: int = GRID_MAX_SIDE) -> tuple[np.ndarray, int]:
    """(H, W) map -> ((ceil(H/c), ceil(W/c)) float32 grid of cell maxima, cell side c in pixels)."""
    h, w = amap.shape
    cell = max(1, math.ceil(max(h, w) / max_side))
    gh, gw = math.ceil(h / cell), math.ceil(w / cell)
    padded = np.full((gh * cell, gw * cell), -np.inf, np.float32)  # -inf never wins a cell's max
    padded[:h, :w] = amap
    return padded.reshape(gh, cell, gw, cell).max(axis=(1, 3)), cell


def anomaly_grid(amap: np.ndarray, rules: BoxRules | None = None, max_side: int = GRID_MAX_SIDE) -> dict[str, Any]:
    """The wire form of ``amap`` (H, W) for the page, with the rules that turn it into boxes."""
    grid, cell = pool_max(amap, max_side)
    gh, gw = grid.shape
    values = base64.b64encode(np.ascontiguousarray(grid, dtype="<f4").tobytes()).decode("ascii")
    return {"width": gw, "height": gh, "cell": cell, "dtype": "float32", "values": values,
            "rules": asdict(rules or BoxRules())}
