"""The interface every anomaly detector behind :class:`adcopilot.Copilot` implements.

A detector works on square float images of ``image_size`` pixels (the API resizes, registers
and maps the results back to the query's pixels). Reference features are computed by
:meth:`Detector.encode_reference` once and cached by the caller.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


def to_batch(images: list[np.ndarray]) -> torch.Tensor:
    """[(S, S, 3) float in [0, 1]] -> (B, 3, S, S) tensor."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous().float()


@dataclass
class Detection:
    """A detector's output for one query against its encoded references, in the query's square frame.

    ``amap`` and ``score`` are what the verdict reads; a detector of patch features also returns the
    nearest-reference distance (the image check reads it, :mod:`adcopilot.model.sanity`), one with a
    comparison model the query's patch features and, when asked for, the comparison tokens (the
    language model's view of the difference).
    """

    amap: np.ndarray  # (S, S) float32
    score: float
    distance: np.ndarray | None = None  # (S, S) nearest-reference patch distance
    features: torch.Tensor | None = None  # (C, h, w) the query's patch features
    tokens: torch.Tensor | None = None  # (L, D) comparison tokens


#: A registered query's own frame: (the query before registration (S, S, 3), the 2x3 matrix warping it into
#: the reference's frame). A product's statistics per position (PaDiM) hold in the frame its good images
#: were taken in, not in a reference's.
OwnFrame = tuple[np.ndarray, np.ndarray]


class Detector(ABC):
    """Anomaly detector comparing a query with one or more normal references."""

    name: str = "detector"
    image_size: int = 256
    threshold: float = 0.5
    #: Whether its detections carry the nearest-reference-patch distance map (``Detection.distance``),
    #: which the image check's product test reads; without it ``Copilot`` runs no image check.
    patch_distances: bool = False
    #: What computes its model: PyTorch here; an exported file's runtime for the detectors that run one.
    runtime: str = "pytorch"

    @abstractmethod
    def encode_reference(self, image: np.ndarray) -> Any:
        """Features of one reference image ((S, S, 3) float in [0, 1]); cached by the caller."""

    @abstractmethod
    def anomaly_map(self, query: np.ndarray, references: list[Any]) -> np.ndarray:
        """(S, S) float32 anomaly map of the query (in the reference frame) given encoded refs."""

    def detect(self, query: np.ndarray, references: list[Any]) -> tuple[np.ndarray, float]:
        """(anomaly map (S, S), image score). Default: the map and its pooled score."""
        amap = self.anomaly_map(query, references)
        return amap, self.pool_score(amap)

    def detection(
        self, query: np.ndarray, references: list[Any], with_tokens: bool = False, own_frame: OwnFrame | None = None
    ) -> Detection:
        """:meth:`detect` as a :class:`Detection`; detectors with more to say override it. ``own_frame``:
        the query before registration, for a detector with statistics per position (else ignored)."""
        amap, score = self.detect(query, references)
        return Detection(amap, score)

    def detections(
        self, queries: Sequence[np.ndarray], references: Sequence[Sequence[Any]], with_tokens: bool = False,
        own_frames: Sequence[OwnFrame | None] | None = None,
    ) -> list[Detection]:
        """:meth:`detection` of several queries, each against its own encoded references (the same
        results). This default runs them one by one; a detector that can batch them overrides it."""
        frames = own_frames if own_frames is not None else [None] * len(queries)
        return [self.detection(q, list(r), with_tokens, f) for q, r, f in zip(queries, references, frames, strict=True)]

    def reference_tokens(self, reference: Any) -> torch.Tensor | None:
        """An encoded reference's (N, C) unit-norm patch features, those whose nearest-patch cosine distances make
        this detector's ``Detection.distance``; None where its encoding does not hold them (the image check then
        compares references with each other through :meth:`detection`)."""
        return None

    def threshold_for(self, references: int) -> float:
        """The threshold of the verdict with this many references (detectors whose score changes with
        the number of references override it)."""
        return self.threshold

    def image_score_for(self, references: int) -> str:
        """The name of the image score with this many references: one rule here ("map"); detectors that
        score otherwise with some counts override it. A calibrated threshold holds only on the score it was
        fitted to."""
        return "map"

    def pool_score(self, amap: np.ndarray) -> float:
        """Image score from the map: its maximum (after the detector's own smoothing)."""
        return float(amap.max())

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "image_size": self.image_size, "threshold": self.threshold, "runtime": self.runtime}
