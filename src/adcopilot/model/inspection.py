"""The inspection core: one query against encoded references -> one typed output.

Every path that looks at a pair runs this and reads its :class:`CoreOutput`: ``Copilot.inspect``
(verdict, boxes), the language model's visual inputs (:mod:`adcopilot.language.visual`), batch and
serve through ``Copilot``. Steps, all at the detector's square size S:

    query (S, S, 3) -> registration onto the first reference (optional)
      -> warp into the reference's frame -> detector (map, score, distance, features, tokens)
      -> map and distance warped back into the query's own frame

The score is pooled in the reference frame, before warping back, where the map has no empty border.

Usage::

    refs = [(ref_array, detector.encode_reference(ref_array))]
    out = inspect_arrays(detector, query_array, refs)       # CoreOutput
    out.amap.shape, out.score, out.registration.method      # (S, S), float, "ecc" / "identity"
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from adcopilot.model.boxes import deviation_map
from adcopilot.model.detector import Detector
from adcopilot.registration import Registration, register, warp


@dataclass
class CoreOutput:
    """What the inspection core computes for one pair; maps in the query's own (S, S) frame."""

    amap: np.ndarray  # (S, S) float32 anomaly map (the fused map when the model has a product memory)
    score: float  # the image score the verdict compares with the threshold
    registration: Registration
    distance: np.ndarray | None = None  # (S, S) nearest-reference patch distance
    features: torch.Tensor | None = None  # (C, h, w) patch features of the query as compared (aligned)
    tokens: torch.Tensor | None = None  # (L, D) comparison tokens, when asked for
    deviation: np.ndarray | None = None  # (S, S) signed brightness deviation from the references (boxes)
    timings: dict[str, float] = field(default_factory=dict)  # ms: register, detect


def inspect_arrays(
    detector: Detector,
    query: np.ndarray,
    references: Sequence[tuple[np.ndarray, Any]],
    *,
    registration: bool = True,
    with_tokens: bool = False,
    with_deviation: bool = False,
) -> CoreOutput:
    """Compare ``query`` (S, S, 3) float with ``references`` [(array (S, S, 3), encoded), ...]."""
    t0 = time.perf_counter()
    reg = register(query, references[0][0]) if registration else Registration()
    aligned = reg.method != "identity"
    q = warp(query, reg.matrix) if aligned else query
    t1 = time.perf_counter()
    d = detector.detection(q, [e for _, e in references], with_tokens=with_tokens)  # reference frame
    t2 = time.perf_counter()
    amap, distance = d.amap, d.distance
    deviation = deviation_map(q, [a for a, _ in references]) if with_deviation else None  # reference frame
    if aligned:  # back to the query's own frame
        amap = warp(amap, reg.inverse, border="constant")
        distance = warp(distance, reg.inverse, border="constant") if distance is not None else None
        deviation = warp(deviation, reg.inverse, border="constant") if deviation is not None else None
    return CoreOutput(
        amap=amap,
        score=float(d.score),
        registration=reg,
        distance=distance,
        features=d.features,
        tokens=d.tokens,
        deviation=deviation,
        timings={"register": (t1 - t0) * 1e3, "detect": (t2 - t1) * 1e3},
    )
