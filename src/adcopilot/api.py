"""The Python API: :class:`Copilot` loads a model and inspects query/reference pairs.

Usage::

    from adcopilot import Copilot
    cp = Copilot.load()                       # the shipped default model
    r = cp.inspect("query.png", ["good1.png", "good2.png"])
    r.verdict, r.score, [b.bbox_2d for b in r.boxes]
    cp = Copilot.load("baseline")             # the training-free comparison

Data flow: load and validate images -> resize both to the model's square size -> register the
query onto the (first) reference -> detector's anomaly map in the reference frame -> warp the
map back to the query frame -> resize to the query's pixels -> score, verdict, boxes. Beside it,
a global check (:mod:`adcopilot.model.sanity`) asks whether the query is the references' product
at all; when it fails the verdict is anomalous, with the reason.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from adcopilot.errors import AdcopilotError
from adcopilot.geometry import region_name
from adcopilot.imaging import ImageInput, load_image, to_float_array
from adcopilot.model.boxes import BoxRules, boxes_from_map, deviation_map
from adcopilot.model.detector import Detector
from adcopilot.model.sanity import CheckRules, ImageProfile, check_image, image_profile
from adcopilot.model.spread import spread_threshold
from adcopilot.model.vision import PatchTower
from adcopilot.registration import Registration, register, warp
from adcopilot.results import Box, InspectionResult

log = logging.getLogger(__name__)


def _source_name(src: ImageInput, fallback: str) -> str:
    return str(src) if isinstance(src, (str, os.PathLike)) else fallback


def _cache_key(src: ImageInput, size: int) -> str | None:
    h = hashlib.sha1(str(size).encode())
    if isinstance(src, (str, os.PathLike)):
        p = Path(src)
        try:
            st = p.stat()
        except OSError:
            return None
        h.update(f"{p.resolve()}|{st.st_mtime_ns}|{st.st_size}".encode())
    elif isinstance(src, (bytes, bytearray)):
        h.update(bytes(src))
    elif isinstance(src, np.ndarray):
        h.update(np.ascontiguousarray(src).tobytes())
        h.update(str(src.shape).encode())
    else:
        return None
    return h.hexdigest()


def _check_threshold(value: float) -> float:
    """A decision threshold as a float; NaN or an infinity is refused in one line."""
    thr = float(value)
    if not np.isfinite(thr):
        raise AdcopilotError(f"threshold must be a finite number, got {value}")
    return thr


@dataclass
class Analysis:
    """Raw output of :meth:`Copilot.analyze`."""

    amap: np.ndarray  # (H, W) float32 in the query's pixels
    score: float
    size: tuple[int, int]  # (w, h) of the query
    registration: Registration
    timings: dict[str, float]
    check: str | None = None  # why the query is not the references' product (model/sanity.py), or None
    deviation: np.ndarray | None = None  # (H, W) signed brightness deviation in the query's pixels (boxes)


class Copilot:
    """An inspection assistant around one detector (and, when present, a language model)."""

    #: Whether ``answer_choice`` takes ``grounded`` / ``result`` / ``prior_weight`` (grounded answers,
    #: :mod:`adcopilot.grounding`); a model that answers every question itself says False.
    grounds_answers = True

    def __init__(
        self,
        detector: Detector,
        *,
        threshold: float | None = None,
        registration: bool = True,
        box_rules: BoxRules | None = None,
        cache_size: int = 256,
        language: Any = None,
        model_name: str | None = None,
        image_check: bool = True,
        auto_threshold: bool = False,
    ) -> None:
        self.detector = detector
        if threshold is not None:
            _check_threshold(threshold)
        # Opt-in: with 2+ references and no explicit threshold, the threshold comes from the
        # references' leave-one-out scores (model/spread.py), cached per reference set.
        self.auto_threshold = auto_threshold
        self._spread: OrderedDict[tuple[str, ...], float] = OrderedDict()
        self.threshold = float(threshold if threshold is not None else detector.threshold)
        self.registration = registration
        self.box_rules = box_rules or BoxRules()
        self.language = language
        self.model_name = model_name or detector.name
        self.calibration: dict[str, Any] | None = None  # the calibration.json in use, if any
        self._cache: OrderedDict[str, tuple[np.ndarray, Any]] = OrderedDict()
        self._cache_size = cache_size
        # The global check reads the detector's frozen vision tower (the fused copy when there is
        # one); a detector without a tower is inspected without it.
        tower = getattr(detector, "fused_tower", None)
        self._check_tower: PatchTower | None = tower if tower is not None else getattr(detector, "tower", None)
        self.check_rules: CheckRules | None = CheckRules() if image_check and self._check_tower is not None else None
        self._profiles: OrderedDict[str, ImageProfile] = OrderedDict()

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        model: str | os.PathLike | None = None,
        *,
        threshold: float | None = None,
        registration: bool = True,
        calibration: str | os.PathLike | None = None,
        auto_threshold: bool = False,
    ) -> Copilot:
        """Load ``model``: None or "default" (the shipped model), "baseline", or a checkpoint folder.

        Threshold: ``threshold`` if given, else the calibrated one (``calibration`` file, else the
        stored ``calibration.json``, see :mod:`adcopilot.line.calibration_file`), else the model's.
        ``auto_threshold``: with two or more references and no ``threshold`` given to ``inspect``, the
        threshold of each reference set comes from its normal spread (:mod:`adcopilot.model.spread`).
        """
        from adcopilot.line.calibration_file import resolve_calibration
        from adcopilot.model.registry import load_detector

        detector, meta = load_detector(model)
        name = meta.get("name", detector.name)
        if "full" in meta:  # the full-scale model answers in text: boxes, verdict, answers
            from adcopilot.full.pipeline import FullCopilot

            return FullCopilot(meta["full"], threshold=threshold, model_name=name)
        cal = None if threshold is not None else resolve_calibration(model, name, calibration)
        thr = threshold if threshold is not None else cal["threshold"] if cal else meta.get("threshold")
        cp = cls(
            detector,
            threshold=thr,
            registration=registration,
            language=meta.get("language"),
            model_name=name,
            auto_threshold=auto_threshold and threshold is None,  # an explicit threshold wins
        )
        cp.calibration = cal
        return cp

    # ------------------------------------------------------------------ references
    def _reference(self, src: ImageInput, name: str) -> tuple[np.ndarray, Any]:
        size = self.detector.image_size
        key = _cache_key(src, size)
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

    def _profile(self, src: ImageInput, arr: np.ndarray) -> ImageProfile:
        """The global profile of a reference (cached like its features)."""
        assert self._check_tower is not None
        key = _cache_key(src, self.detector.image_size)
        if key is not None and key in self._profiles:
            self._profiles.move_to_end(key)
            return self._profiles[key]
        profile = image_profile(self._check_tower, arr)
        if key is not None:
            self._profiles[key] = profile
            if len(self._profiles) > self._cache_size:
                self._profiles.popitem(last=False)
        return profile

    def check(self, query: np.ndarray, references: Sequence[ImageInput], arrays: Sequence[np.ndarray]) -> str | None:
        """Why the (S, S, 3) query is not the references' product, or None (also when the check is off)."""
        if self.check_rules is None or self._check_tower is None:
            return None
        refs = [self._profile(src, arr) for src, arr in zip(references, arrays, strict=True)]
        return check_image(image_profile(self._check_tower, query), refs, self.check_rules)

    # ------------------------------------------------------------------ inspection
    def analyze(
        self, query: ImageInput, references: ImageInput | Sequence[ImageInput]
    ) -> Analysis:
        """Anomaly map in the query's pixels, image score, query size, registration and timings."""
        refs = self._as_list(references)
        t0 = time.perf_counter()
        qimg = load_image(query, name=_source_name(query, "query"))
        size = self.detector.image_size
        q = to_float_array(qimg, size)
        encoded = [self._reference(r, _source_name(r, f"reference {i + 1}")) for i, r in enumerate(refs)]
        t1 = time.perf_counter()
        reg = register(q, encoded[0][0]) if self.registration else Registration()
        q_aligned = warp(q, reg.matrix) if reg.method != "identity" else q
        t2 = time.perf_counter()
        amap, score = self.detector.detect(q_aligned, [e[1] for e in encoded])  # (S, S), reference frame
        t3 = time.perf_counter()
        check = self.check(q, refs, [e[0] for e in encoded])
        t4 = time.perf_counter()
        deviation = deviation_map(q_aligned, [e[0] for e in encoded])  # (S, S), reference frame
        if reg.method != "identity":
            amap = warp(amap, reg.inverse, border="constant")
            deviation = warp(deviation, reg.inverse, border="constant")
        w, h = qimg.size
        amap = cv2.resize(amap, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float32)
        deviation = cv2.resize(deviation, (w, h), interpolation=cv2.INTER_LINEAR)
        timings = {"load": (t1 - t0) * 1e3, "register": (t2 - t1) * 1e3, "detect": (t3 - t2) * 1e3,
                   "check": (t4 - t3) * 1e3}
        return Analysis(amap, float(score), (w, h), reg, timings, check, deviation)

    def anomaly_map(
        self, query: ImageInput, references: ImageInput | Sequence[ImageInput]
    ) -> tuple[np.ndarray, tuple[int, int], Registration, dict[str, float]]:
        """Anomaly map in the query's pixels ((H, W) float32), the query size (w, h), the
        registration used, and timings in ms."""
        a = self.analyze(query, references)
        return a.amap, a.size, a.registration, a.timings

    def inspect(
        self,
        query: ImageInput,
        references: ImageInput | Sequence[ImageInput],
        *,
        threshold: float | None = None,
    ) -> InspectionResult:
        """Compare ``query`` with normal ``references``; verdict, score, boxes, description."""
        t0 = time.perf_counter()
        a = self.analyze(query, references)
        thr = _check_threshold(threshold) if threshold is not None else self.threshold_for(self._as_list(references))
        amap, (w, h), reg, timings, score = a.amap, a.size, a.registration, a.timings, a.score
        anomalous = score >= thr or a.check is not None
        # A frame that is not the product has no defect to box.
        boxes = self.boxes(a, thr) if anomalous and a.check is None else []
        timings["total"] = (time.perf_counter() - t0) * 1e3
        return InspectionResult(
            query=_source_name(query, "query"),
            references=[_source_name(r, f"reference {i + 1}") for i, r in enumerate(self._as_list(references))],
            verdict="anomalous" if anomalous else "normal",
            score=score,
            threshold=thr,
            boxes=boxes,
            description=self._describe(anomalous, boxes, w, h, a.check),
            model=self.model_name,
            image_size=(w, h),
            registration=reg.to_dict(),
            timings_ms=timings,
            anomaly_map=amap,
            image_check=a.check,
        )

    def threshold_for(self, references: Sequence[ImageInput]) -> float:
        """The threshold ``inspect`` uses for this reference set when none is given: the normal
        spread's with ``auto_threshold`` and two or more references, else this copilot's."""
        if not self.auto_threshold or len(references) < 2:
            return self.threshold
        keys = [_cache_key(r, self.detector.image_size) for r in references]
        key = tuple(sorted(k for k in keys if k is not None)) if None not in keys else None
        if key is not None and key in self._spread:
            self._spread.move_to_end(key)
            return self._spread[key]
        # Leave-one-out: each reference against the others (their features are cached).
        scores = [self.analyze(r, [o for j, o in enumerate(references) if j != i]).score
                  for i, r in enumerate(references)]
        thr = spread_threshold(scores)
        log.debug("normal spread of %d references: leave-one-out scores %s -> threshold %.4f", len(references),
                  [round(x, 4) for x in scores], thr)
        if key is not None:
            self._spread[key] = thr
            if len(self._spread) > self._cache_size:
                self._spread.popitem(last=False)
        return thr

    def boxes(self, analysis: Analysis, threshold: float, rules: BoxRules | None = None) -> list[Box]:
        """Defect boxes of an anomalous analysis at ``threshold`` (``rules``: this copilot's by default)."""
        amap, (w, h) = analysis.amap, analysis.size
        rules = rules or self.box_rules
        found = boxes_from_map(amap, threshold, rules, analysis.deviation)
        if not found and amap.max() > 0:
            # The image score can exceed the threshold while no pixel does (a diffuse
            # difference): box the strongest region, relative to the map's own peak.
            found = boxes_from_map(amap, 0.5 * float(amap.max()), rules, analysis.deviation)[:1]
        return [Box(bbox_2d=bbox, label=self._label(bbox, w, h), score=s) for bbox, s in found]

    # ------------------------------------------------------------------ questions (language model)
    @property
    def can_answer_choices(self) -> bool:
        """Whether a nano language model answers questions (``ask``, ``answer_choice``, ``chat``)."""
        from adcopilot.language.handle import NanoLanguage

        return isinstance(self.language, NanoLanguage)

    def preload_language(self) -> None:
        """Start loading the language model in the background, if there is one (a question is coming)."""
        if hasattr(self.language, "preload"):
            self.language.preload()

    def _nano_language(self) -> Any:
        from adcopilot.language.handle import NanoLanguage

        if not isinstance(self.language, NanoLanguage):
            raise AdcopilotError(
                f"model '{self.model_name}' has no language model: it inspects but cannot answer questions "
                "(use the default model or a checkpoint with a language/ folder)"
            )
        return self.language

    def ask(
        self,
        query: ImageInput,
        references: ImageInput | Sequence[ImageInput],
        question: str,
        history: list[dict] | None = None,
        result: InspectionResult | None = None,
        max_new_tokens: int = 64,
        *,
        grounded: bool = True,
    ) -> str:
        """The language model's answer to ``question`` about the pair, after the ``history`` turns.

        A request for boxes ("... bounding boxes ... as JSON") is answered with the dense head's
        boxes labelled by the language model (``result``'s boxes when given). ``grounded``
        (default): the answer to a yes/no defect question ("Is there a defect?") starts with
        ``inspect``'s verdict at this copilot's threshold, and the language model goes on from it."""
        from adcopilot.language.handle import ask

        lang = self._nano_language()
        return ask(self, lang, query, self._as_list(references), question, history, result, max_new_tokens,
                   grounded=grounded)

    def answer_choice(
        self,
        query: ImageInput,
        references: ImageInput | Sequence[ImageInput],
        question: str,
        options: dict[str, str],
        mode: str = "likelihood",
        *,
        grounded: bool = True,
        result: InspectionResult | None = None,
        prior_weight: float | None = None,
    ) -> str:
        """The letter of the chosen option. ``grounded`` (default): a defect yes/no or defect-location
        question is answered from the inspection (``result``, or inspected now) so that the answer
        agrees with ``inspect``'s verdict and boxes at this copilot's threshold, and a defect-type
        question whose options all name defect labels the model was trained on by its defect-type
        head (:mod:`adcopilot.grounding`); any other question, or all with ``grounded=False``, by the
        language model (``mode``: likelihood or letter), its option scores calibrated against a
        content-free pair with ``prior_weight`` (None: the default, 0 = uncalibrated; 0.5 was the
        best weight on held-out training questions; see :mod:`adcopilot.language.answer`)."""
        from adcopilot.grounding import detector_choice, question_kind
        from adcopilot.language.answer import PRIOR_WEIGHT, answer_choice

        w = PRIOR_WEIGHT if prior_weight is None else float(prior_weight)
        if not 0.0 <= w <= 1.0:
            raise AdcopilotError(f"prior_weight must be between 0 and 1, got {prior_weight}")
        refs = self._as_list(references)
        if grounded and question_kind(question, options) is not None:
            letter = detector_choice(result if result is not None else self.inspect(query, refs), question, options)
            if letter:
                return letter
        lang = self._nano_language()
        # Grounded: the language model reads the detector at this copilot's threshold too.
        t = (result.threshold if result is not None else self.threshold) if grounded else None
        visual = lang.visual(query, refs, t)
        if grounded:  # "what type of defect?" with options naming trained labels: the type head
            from adcopilot.grounding import option_cells, type_options
            from adcopilot.language.answer import type_choice

            choices = type_options(question, options, list(lang.model.cfg.defect_labels))
            named = option_cells(question)  # "What defect is at the top left?": that cell
            region = named[0] if len(named) == 1 else None
            letter = type_choice(lang.model, visual, choices, region) if choices else None
            if letter:
                return letter
        return answer_choice(lang.model, visual, question, options, mode=mode,  # type: ignore[arg-type]
                             prefix=lang.prefix(query, refs, t), prior=lang.prior() if w else None, prior_weight=w)

    def localize(
        self,
        query: ImageInput,
        references: ImageInput | Sequence[ImageInput],
        mode: str = "head",
        result: InspectionResult | None = None,
    ) -> list[dict]:
        """Labelled defect boxes ``[{"bbox_2d", "label", ...}]`` in query pixels: ``head`` = the
        dense head's boxes labelled by the language model, ``text`` = the language model's own."""
        from adcopilot.language.handle import localize

        lang = self._nano_language()
        return localize(self, lang, query, self._as_list(references), mode=mode, result=result)

    def chat(
        self,
        query: ImageInput,
        references: ImageInput | Sequence[ImageInput],
        question: str,
        history: list[dict] | None = None,
    ) -> tuple[str, list[dict]]:
        """One turn of a conversation: the answer and the history including this turn."""
        answer = self.ask(query, references, question, history=history)
        turns = [*(history or []), {"role": "user", "content": question.strip()}]
        return answer, [*turns, {"role": "assistant", "content": answer}]

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _as_list(references: ImageInput | Sequence[ImageInput]) -> list[ImageInput]:
        if isinstance(references, (str, os.PathLike, bytes, bytearray, np.ndarray)) or not isinstance(
            references, Sequence
        ):
            refs = [references]
        else:
            refs = list(references)
        if not refs:
            raise AdcopilotError("at least one normal reference image is needed (--ref)")
        return refs

    def _label(self, bbox: list[int], w: int, h: int) -> str:
        return "defect"

    @staticmethod
    def _describe(anomalous: bool, boxes: list[Box], w: int, h: int, check: str | None = None) -> str:
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
