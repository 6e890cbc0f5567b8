"""The inspection core: one query against encoded references -> one typed output.

Every path that looks at a pair runs this and reads its :class:`CoreOutput`: ``Copilot.inspect``
(verdict, boxes), the language model's visual inputs (:mod:`adcopilot.language.visual`), batch and
serve through ``Copilot``. Steps, all at the detector's square size S:

    query (S, S, 3) -> registration onto the first reference (optional)
      -> warp into the reference's frame -> detector (map, score, distance, features, tokens)
      -> map and distance warped back into the query's own frame

With several references (from ``COMMON_FRAME_FROM``) the others are brought into the first's frame too
(:func:`into_frame`, once per reference set: the caller caches them), so the query is compared with
references that all lie in the pose it was warped to.

The score is pooled in the reference frame, before warping back, where the map has no empty border.
The three steps are also separate (:func:`align`, the detector, :func:`in_query_frame`), so that
several queries can share one detector pass (``Detector.detections``) while their registration and
mapping back run elsewhere (the service's request threads).

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
from adcopilot.model.detector import Detection, Detector
from adcopilot.model.sanity import patch_distance
from adcopilot.registration import Registration, onto_reference, register, warp


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
    patch_dist: float | None = None  # the query's distance from the references' patches (the image check's)


@dataclass
class Aligned:
    """A query ready for the detector: registered onto the first reference and warped into its frame (or as taken)."""

    query: np.ndarray  # (S, S, 3) float, the query in its own frame
    compared: np.ndarray  # (S, S, 3) float, the query in the reference's frame (``query`` itself without registration)
    registration: Registration
    ms: float  # time the registration took

    @property
    def own_frame(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(query, matrix into the reference frame) when registration moved it, else None."""
        return None if self.registration.method == "identity" else (self.query, self.registration.matrix)


#: From this many references on, the references after the first are registered onto it and compared in its
#: frame (:func:`into_frame`). A query registered onto the first alone moves away from the other references'
#: poses; compared as taken, it is not aligned at all. With every image in one frame good parts look most
#: alike (benchmarks/RESULTS.md, "Several references in one frame").
COMMON_FRAME_FROM = 3


def in_common_frame(registration: bool, references: int) -> bool:
    """Whether ``references`` references are compared in the first one's frame (``registration``: the option)."""
    return registration and references >= COMMON_FRAME_FROM


def into_frame(reference: np.ndarray, first: np.ndarray) -> np.ndarray:
    """A further ``reference`` (S, S, 3) registered onto the ``first`` one (S, S, 3) and warped into its frame,
    the border it leaves filled from the first; the reference itself when registration keeps it as taken."""
    reg = register(reference, first)
    return onto_reference(reference, first, reg.matrix) if reg.method != "identity" else reference


def compared_references(aligned: Aligned, framed: Sequence[Any], as_taken: Sequence[Any] | None) -> Sequence[Any]:
    """The references a query is compared with: those in the first one's frame (``framed``) when its registration
    brought it there, else the references as taken (``as_taken``, when given). A query that registration could
    not place (the identity fallback) is still in its own pose, which the references' own poses may cover; moved
    into the first one's frame they would all differ from it."""
    if as_taken is None or aligned.registration.method != "identity":
        return framed
    return as_taken


def align(query: np.ndarray, reference: np.ndarray, *, registration: bool = True) -> Aligned:
    """Register ``query`` (S, S, 3) onto ``reference`` (S, S, 3) and warp it into the reference's frame.
    Needs no model: callers run it beside the detector (the service, for requests waiting for it)."""
    t0 = time.perf_counter()
    reg = register(query, reference) if registration else Registration()
    compared = onto_reference(query, reference, reg.matrix) if reg.method != "identity" else query
    return Aligned(query, compared, reg, (time.perf_counter() - t0) * 1e3)


def in_query_frame(
    d: Detection, aligned: Aligned, references: Sequence[np.ndarray], *, with_deviation: bool = False,
    detect_ms: float = 0.0,
) -> CoreOutput:
    """The detector's output for an aligned query (reference frame) back in the query's own frame;
    ``references`` are the (S, S, 3) reference arrays (the deviation map reads them)."""
    amap, distance = d.amap, d.distance
    # Read in the reference frame, before the warp back leaves an empty border.
    patch_dist = patch_distance(distance) if distance is not None else None
    deviation = deviation_map(aligned.compared, list(references)) if with_deviation else None  # reference frame
    reg = aligned.registration
    if reg.method != "identity":  # back to the query's own frame
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
        timings={"register": aligned.ms, "detect": detect_ms},
        patch_dist=patch_dist,
    )


def inspect_arrays(
    detector: Detector,
    query: np.ndarray,
    references: Sequence[tuple[np.ndarray, Any]],
    *,
    registration: bool = True,
    with_tokens: bool = False,
    with_deviation: bool = False,
    as_taken: Sequence[tuple[np.ndarray, Any]] | None = None,
) -> CoreOutput:
    """Compare ``query`` (S, S, 3) float with ``references`` [(array (S, S, 3), encoded), ...], the query registered
    onto the first; from ``COMMON_FRAME_FROM`` references on, the others already in its frame (:func:`into_frame`), and
    ``as_taken`` the same references unmoved, compared instead when the query stays where it was (see
    :func:`compared_references`)."""
    aligned = align(query, references[0][0], registration=registration)
    references = compared_references(aligned, references, as_taken)
    t1 = time.perf_counter()
    d = detector.detection(aligned.compared, [e for _, e in references], with_tokens=with_tokens,  # reference frame
                           own_frame=aligned.own_frame)
    detect_ms = (time.perf_counter() - t1) * 1e3
    return in_query_frame(d, aligned, [a for a, _ in references], with_deviation=with_deviation, detect_ms=detect_ms)
