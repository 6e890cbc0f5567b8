"""The Python API: :class:`Copilot` loads a model and inspects query/reference pairs.

Usage::

    from adcopilot import Copilot
    cp = Copilot.load()                       # the shipped default model (an AnsweringCopilot)
    r = cp.inspect("query.png", ["good1.png", "good2.png"])
    r.verdict, r.score, [b.bbox_2d for b in r.boxes]
    cp = Copilot.load("baseline")             # the training-free comparison (inspects only)

What a loaded model can do is what it is (:mod:`adcopilot.protocols`): every copilot is an
``Inspector``; one with a language model also an ``Answerer`` and a ``Localizer``. The model
registry (:data:`MODEL_KINDS`, :func:`load`) picks the class from the checkpoint's kind.

Data flow of ``inspect``: load and validate images -> resize both to the model's square size ->
the inspection core (:func:`adcopilot.model.inspection.inspect_arrays`: registration, detector,
map back in the query's frame) -> resize to the query's pixels -> score, verdict, boxes.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from adcopilot.calibration_file import resolve_calibration
from adcopilot.errors import CheckpointError, require_finite
from adcopilot.imaging import ImageInput, load_image, to_float_array
from adcopilot.inputs import as_references, cache_key, reference_names, source_name
from adcopilot.language.answering import LanguageAnswers
from adcopilot.language.nano_language import NanoLanguage
from adcopilot.model.boxes import BoxRules, boxes_from_map
from adcopilot.model.checkpoint_kind import FULL_KINDS, checkpoint_kind
from adcopilot.model.detector import Detector
from adcopilot.model.inspection import inspect_arrays
from adcopilot.model.registry import load_detector, resolve_model
from adcopilot.protocols import Inspector
from adcopilot.results import Analysis, Box, InspectionResult, describe_findings

log = logging.getLogger(__name__)


class Copilot:
    """An inspection assistant around one detector (an :class:`adcopilot.protocols.Inspector`)."""

    def __init__(
        self,
        detector: Detector,
        *,
        threshold: float | None = None,
        registration: bool = True,
        box_rules: BoxRules | None = None,
        cache_size: int = 256,
        model_name: str | None = None,
    ) -> None:
        self.detector = detector
        self.threshold = float(threshold if threshold is not None else detector.threshold)
        self.registration = registration
        self.box_rules = box_rules or BoxRules()
        self.model_name = model_name or detector.name
        self.calibration: dict[str, Any] | None = None  # the calibration.json in use, if any
        self._cache: OrderedDict[str, tuple[np.ndarray, Any]] = OrderedDict()
        self._cache_size = cache_size

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        model: str | os.PathLike | None = None,
        *,
        threshold: float | None = None,
        registration: bool = True,
        calibration: str | os.PathLike | None = None,
    ) -> Inspector:
        """Load ``model``: None or "default" (the shipped model), "baseline", or a checkpoint folder
        (see :func:`load`)."""
        return load(model, threshold=threshold, registration=registration, calibration=calibration)

    # ------------------------------------------------------------------ references
    def _reference(self, src: ImageInput, name: str) -> tuple[np.ndarray, Any]:
        size = self.detector.image_size
        key = cache_key(src, size)
        if key is not None and key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        arr = to_float_array(load_image(src, name=name), size)
        entry = (arr, self.detector.encode_reference(arr))
        if key is not None:
            self._cache[key] = entry
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return entry

    def forget_references(self, references: Sequence[ImageInput]) -> int:
        """Drop the cached encodings of these references (a set no longer used); the number dropped."""
        size = self.detector.image_size
        keys = {cache_key(r, size) for r in references} - {None}
        return sum(self._cache.pop(k, None) is not None for k in keys)

    @property
    def cached_references(self) -> int:
        """How many reference encodings are cached."""
        return len(self._cache)

    # ------------------------------------------------------------------ inspection
    def analyze(
        self, query: ImageInput, references: ImageInput | Sequence[ImageInput]
    ) -> Analysis:
        """Anomaly map in the query's pixels, image score, query size, registration and timings."""
        refs = as_references(references)
        t0 = time.perf_counter()
        qimg = load_image(query, name=source_name(query, "query"))
        q = to_float_array(qimg, self.detector.image_size)
        encoded = [self._reference(r, name) for r, name in zip(refs, reference_names(refs), strict=True)]
        t1 = time.perf_counter()
        core = inspect_arrays(self.detector, q, encoded, registration=self.registration)  # (S, S), query frame
        w, h = qimg.size
        amap = cv2.resize(core.amap, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float32)
        return Analysis(amap, core.score, (w, h), core.registration, {"load": (t1 - t0) * 1e3, **core.timings})

    def inspect(
        self,
        query: ImageInput,
        references: ImageInput | Sequence[ImageInput],
        *,
        threshold: float | None = None,
    ) -> InspectionResult:
        """Compare ``query`` with normal ``references``; verdict, score, boxes, description."""
        thr = require_finite(threshold if threshold is not None else self.threshold, "threshold")
        t0 = time.perf_counter()
        refs = as_references(references)
        a = self.analyze(query, refs)
        amap, (w, h), reg, timings, score = a.amap, a.size, a.registration, a.timings, a.score
        anomalous = score >= thr
        boxes: list[Box] = []
        if anomalous:
            found = boxes_from_map(amap, thr, self.box_rules)
            if not found and amap.max() > 0:
                # The image score can exceed the threshold while no pixel does (a diffuse
                # difference): box the strongest region, relative to the map's own peak.
                found = boxes_from_map(amap, 0.5 * float(amap.max()), self.box_rules)[:1]
            boxes = [Box(bbox_2d=bbox, label="defect", score=s) for bbox, s in found]
        timings["total"] = (time.perf_counter() - t0) * 1e3
        return InspectionResult(
            query=source_name(query, "query"),
            references=reference_names(refs),
            verdict="anomalous" if anomalous else "normal",
            score=score,
            threshold=thr,
            boxes=boxes,
            description=describe_findings(anomalous, boxes, w, h),
            model=self.model_name,
            image_size=(w, h),
            registration=reg.to_dict(),
            timings_ms=timings,
            anomaly_map=amap,
        )


class AnsweringCopilot(LanguageAnswers, Copilot):
    """A nano :class:`Copilot` with a language model: also an Answerer and a Localizer
    (:mod:`adcopilot.language.answering`)."""

    def __init__(self, detector: Detector, language: NanoLanguage, **kwargs: Any) -> None:
        super().__init__(detector, **kwargs)
        self.language = language


# ---------------------------------------------------------------------- the model registry
def _load_nano(
    spec: str | Path, *, threshold: float | None, registration: bool, calibration: str | os.PathLike | None,
    model: str | os.PathLike | None,
) -> Copilot:
    detector, meta = load_detector(spec)
    name = meta.get("name", detector.name)
    cal = None if threshold is not None else resolve_calibration(model, name, calibration)
    thr = threshold if threshold is not None else cal["threshold"] if cal else meta.get("threshold")
    language = Path(spec) / "language" if isinstance(spec, Path) else None
    cp: Copilot
    if language is not None and (language / "config.json").exists():  # answers questions; loaded on first use
        cp = AnsweringCopilot(detector, NanoLanguage(language, detector, registration=registration), threshold=thr,
                              registration=registration, model_name=name)
    else:
        cp = Copilot(detector, threshold=thr, registration=registration, model_name=name)
    cp.calibration = cal
    return cp


def _load_full(spec: str | Path, *, threshold: float | None, **_: Any) -> Inspector:
    # Imported here so that transformers loads only for the full-scale path.
    from adcopilot.full.pipeline import FullCopilot

    return FullCopilot.load(spec, threshold=threshold)


#: Copilot loaders by checkpoint kind (:func:`adcopilot.model.checkpoint_kind.checkpoint_kind`).
MODEL_KINDS: dict[str, Callable[..., Inspector]] = {
    "nano": _load_nano,
    **{kind: _load_full for kind in FULL_KINDS},
}


def load(
    model: str | os.PathLike | None = None,
    *,
    threshold: float | None = None,
    registration: bool = True,
    calibration: str | os.PathLike | None = None,
) -> Inspector:
    """Load ``model``: None or "default" (the shipped model), "baseline", or a checkpoint folder.

    Threshold: ``threshold`` if given, else the calibrated one (``calibration`` file, else the
    stored ``calibration.json``, see :mod:`adcopilot.calibration_file`), else the model's."""
    if threshold is not None:
        require_finite(threshold, "threshold")
    spec = resolve_model(model)
    # A folder that is no known kind goes to the nano loader, which names what is wrong with it.
    kind = (checkpoint_kind(spec) if isinstance(spec, Path) and (spec / "config.json").is_file() else None) or "nano"
    if kind not in MODEL_KINDS:
        raise CheckpointError(f"{spec}: a {kind} checkpoint; the copilot loads nano and AD-Copilot checkpoints")
    return MODEL_KINDS[kind](spec, threshold=threshold, registration=registration, calibration=calibration,
                             model=model)
