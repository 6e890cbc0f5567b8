"""Typed, JSON-serialisable results of an inspection.

Boxes use AD-Copilot's (Qwen2.5-VL's) convention: ``{"bbox_2d": [x1, y1, x2, y2], "label": ...}``
in absolute pixel coordinates of the query image, x2/y2 exclusive.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from adcopilot.geometry import region_name
from adcopilot.registration import Registration

Verdict = Literal["normal", "anomalous", "unknown"]
#: ``unknown``: a model that answers in text gave an answer that could not be read as a verdict
#: (the result then carries it in ``raw_answer``); never reported as normal.
VERDICTS = ("normal", "anomalous", "unknown")


@dataclass
class Box:
    """One defect box in query pixels."""

    bbox_2d: list[int]
    label: str = "defect"
    score: float = 0.0

    def __post_init__(self) -> None:
        if len(self.bbox_2d) != 4:
            raise ValueError(f"bbox_2d needs 4 numbers, got {self.bbox_2d}")
        x1, y1, x2, y2 = (int(v) for v in self.bbox_2d)
        if x2 <= x1 or y2 <= y1:
            raise ValueError(f"empty box {self.bbox_2d}")
        self.bbox_2d = [x1, y1, x2, y2]
        self.score = float(self.score)

    def to_dict(self) -> dict[str, Any]:
        return {"bbox_2d": list(self.bbox_2d), "label": self.label, "score": round(self.score, 4)}


@dataclass
class Analysis:
    """The anomaly map of a pair in the query's pixels, before the verdict (``Copilot.analyze``)."""

    amap: np.ndarray  # (H, W) float32 in the query's pixels
    score: float
    size: tuple[int, int]  # (w, h) of the query
    registration: Registration
    timings: dict[str, float]
    check: str | None = None  # why the query is not the references' product (model/sanity.py), or None
    deviation: np.ndarray | None = None  # (H, W) signed brightness deviation in the query's pixels (boxes)
    notes: list[str] = field(default_factory=list)  # what the user should know about this inspection's input


@dataclass
class InspectionResult:
    """What :meth:`adcopilot.Copilot.inspect` returns.

    ``anomaly_map`` is (H, W) float32 in the query's pixel grid (not serialised to JSON);
    ``score`` is pooled from it (see the detector's documentation) and compared with
    ``threshold`` to give ``verdict``. ``image_check`` is None when the query passed the global check
    against the references (:mod:`adcopilot.model.sanity`), else why it is not the product ("blank
    image", "not the reference product", ...); the verdict is then anomalous whatever the score.
    """

    query: str
    references: list[str]
    verdict: Verdict
    score: float
    threshold: float
    boxes: list[Box] = field(default_factory=list)
    description: str = ""
    model: str = ""
    image_size: tuple[int, int] = (0, 0)  # (width, height) of the query
    registration: dict[str, Any] = field(default_factory=dict)
    timings_ms: dict[str, float] = field(default_factory=dict)
    answer: str | None = None
    raw_answer: str | None = None  # a text model's own words behind the verdict and boxes
    anomaly_map: np.ndarray | None = field(default=None, repr=False)
    image_check: str | None = None
    notes: list[str] = field(default_factory=list)  # e.g. an elongated query squeezed into the model's square

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")

    @property
    def is_anomalous(self) -> bool:
        return self.verdict == "anomalous"

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "query": self.query,
            "references": list(self.references),
            "verdict": self.verdict,
            "score": round(float(self.score), 6),
            "threshold": round(float(self.threshold), 6),
            "boxes": [b.to_dict() for b in self.boxes],
            "description": self.description,
            "model": self.model,
            "image_size": list(self.image_size),
            "registration": self.registration,
            "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()},
            "image_check": self.image_check,
        }
        if self.notes:
            d["notes"] = list(self.notes)
        if self.answer is not None:
            d["answer"] = self.answer
        if self.raw_answer is not None:
            d["raw_answer"] = self.raw_answer
        return d

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)


def describe_findings(anomalous: bool, boxes: list[Box], w: int, h: int, check: str | None = None) -> str:
    """The short description of an inspection: the verdict and up to three boxes by region and size
    (or why the query was not inspected as the product, ``check``)."""
    if check is not None:
        return f"Not inspected as the product: {check} (the global check against the references failed)."
    if not anomalous:
        return "No defect found: the query matches the normal reference."
    if not boxes:
        return "The query differs from the normal reference, but no compact defect region stands out."
    parts = []
    for b in boxes[:3]:
        x1, y1, x2, y2 = b.bbox_2d
        frac = 100.0 * (x2 - x1) * (y2 - y1) / float(w * h)
        parts.append(f"{b.label} at the {region_name(b.bbox_2d, w, h)} ({frac:.1f}% of the image)")
    n = len(boxes)
    return f"{n} defect region{'s' if n > 1 else ''} found: " + "; ".join(parts) + "."
