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
map back in the query's frame) -> resize to the query's pixels -> score, verdict, boxes. Beside it,
a global check (:mod:`adcopilot.model.sanity`) asks whether the query is the references' product
at all; when it fails the verdict is anomalous, with the reason. The references are checked against each
other once per set (:mod:`adcopilot.model.reference_check`): a bad one is named in the result's notes.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from adcopilot.caches import REFERENCE_CACHE_BYTES, put_bounded
from adcopilot.calibration_store import calibrated_references, resolve_calibration
from adcopilot.errors import CheckpointError, require_finite
from adcopilot.imaging import (
    DRAFT,
    ImageInput,
    full_size,
    load_image,
    pair_deblock,
    peek_size,
    to_float_array,
)
from adcopilot.inputs import as_references, cache_key, frame_key, reference_names, smoothed_key, source_name
from adcopilot.language.answering import LanguageAnswers
from adcopilot.language.nano_language import NanoLanguage
from adcopilot.model.boxes import BoxRules, boxes_from_map
from adcopilot.model.checkpoint_kind import FULL_KINDS, checkpoint_kind
from adcopilot.model.detector import Detection, Detector
from adcopilot.model.focus import matching_sigma, sharpness, soften
from adcopilot.model.framing import elongated, frame_references
from adcopilot.model.inspection import (
    Aligned,
    CoreOutput,
    align,
    compared_references,
    in_common_frame,
    in_query_frame,
    inspect_arrays,
    into_frame,
)
from adcopilot.model.reference_check import reference_label, reference_notes, reference_reasons
from adcopilot.model.registry import load_detector, resolve_model
from adcopilot.model.sanity import CheckRules, ImageProfile, check_image, image_profile
from adcopilot.protocols import Inspector
from adcopilot.results import Analysis, Box, InspectionResult, describe_findings

log = logging.getLogger(__name__)



@dataclass
class StagedPair:
    """One query and its references on their way through :meth:`Copilot.inspect_batch`'s stages;
    each stage fills its fields (maps at the detector's square size S)."""

    query: ImageInput
    references: list[ImageInput]
    size: tuple[int, int]  # (w, h) of the query
    aligned: Aligned  # the query at S, registered onto the first reference (as taken with three or more)
    threshold: float | None  # the one asked for; ``encode`` sets the reference set's when None
    started: float  # perf_counter when ``prepare`` began
    timings: dict[str, float] = field(default_factory=dict)  # ms
    encoded: list[tuple[np.ndarray, Any]] = field(default_factory=list)  # [(array (S, S, 3), encoding)]
    profiles: list[ImageProfile] | None = None  # the references' profiles for the image check
    detection: Detection | None = None
    notes: list[str] = field(default_factory=list)  # the result's notes (an elongated query, the references)
    smooth: float = 0.0  # both sides' smoothing before comparison (``imaging.pair_deblock``)
    sharpness: float | None = None  # the query's (``focus.sharpness``) when the references may be softened
    framing: list[str] = field(default_factory=list)  # notes on references framed unlike the query


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
        cache_bytes: int | None = REFERENCE_CACHE_BYTES,
        model_name: str | None = None,
        image_check: bool = True,
        deblock: bool = True,
        refocus: bool = False,
    ) -> None:
        self.detector = detector
        # A strongly compressed JPEG query is compared with its references after both are smoothed alike.
        self.deblock = deblock
        # Opt-in: a query much softer than a reference (out of focus) is compared with that reference softened
        # to match (it helps a defocused camera on textures, and costs ELPV poly cells: benchmarks/RESULTS.md).
        self.refocus = refocus
        if threshold is not None:
            require_finite(threshold, "threshold")
        # A threshold given (or calibrated, or set later) serves every reference set; else the detector's,
        # which may depend on the number of references (Detector.threshold_for).
        self.fixed_threshold = threshold is not None
        self._threshold = float(threshold if threshold is not None else detector.threshold)
        self.registration = registration
        self.box_rules = box_rules or BoxRules()
        self.model_name = model_name or detector.name
        self.calibration: dict[str, Any] | None = None  # the calibration.json in use, if any
        # The number of references a calibrated threshold was fitted with (None: it serves every count). The
        # shipped model's score changes scale with the number of references, so a calibration serves the
        # counts the model itself treats alike (the same threshold of its own), and the others keep the model's.
        self.calibrated_references: int | None = None
        self._cache: OrderedDict[str, tuple[np.ndarray, Any]] = OrderedDict()
        self._cache_size = cache_size
        self._cache_bytes = cache_bytes  # a reference's views grow its entry after it is stored (caches.py)
        # The global check's product test reads the detector's nearest-reference-patch distances; a
        # detector without them is inspected without the check.
        self.check_rules: CheckRules | None = CheckRules() if image_check and detector.patch_distances else None
        self._profiles: OrderedDict[str, ImageProfile] = OrderedDict()
        self._sizes: OrderedDict[str, tuple[int, int]] = OrderedDict()  # references' stored (w, h)
        self._set_notes: OrderedDict[str, list[str]] = OrderedDict()  # reference set -> its notes
        self._sharpness: OrderedDict[str, float] = OrderedDict()  # references' sharpness (focus.sharpness)
        self._told_elongated = False  # the warning about elongated queries is given once per copilot

    @property
    def threshold(self) -> float:
        """The threshold given or calibrated, else the detector's with one reference (:meth:`threshold_with`)."""
        return self._threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        """A threshold set here serves every reference set from now on."""
        require_finite(value, "threshold")
        self._threshold, self.fixed_threshold, self.calibrated_references = float(value), True, None

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, model: str | os.PathLike | None = None, **options: Any) -> Inspector:
        """Load ``model``: None or "default" (the shipped model), "baseline", or a checkpoint folder,
        with :func:`load`'s keyword ``options`` (threshold, registration, calibration)."""
        return load(model, **options)

    # ------------------------------------------------------------------ references
    def _reference(
        self, src: ImageInput, name: str, first: tuple[ImageInput, np.ndarray] | None = None, smooth: float = 0.0,
        soft: float = 0.0,
    ) -> tuple[np.ndarray, Any]:
        """(array (S, S, 3), encoding) of a reference, cached; with ``first`` (the set's first reference, source
        and array), in that one's frame (:func:`into_frame`), cached for the pair; ``smooth``: smoothed first
        (as a pair with a compressed JPEG is, :func:`imaging.pair_deblock`), ``soft``: then softened at the model's size
        (for a softer query, :mod:`adcopilot.model.focus`), each variant cached apart."""
        size = self.detector.image_size
        key = smoothed_key(smoothed_key(frame_key(src, None if first is None else first[0], size), smooth), soft, "^")
        if key is not None and key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        if first is None:
            img = load_image(src, name=name, draft=self.draft_size)
            base = cache_key(src, size)  # the stored size, whatever the variant
            if base is not None:
                put_bounded(self._sizes, base, full_size(img), self._cache_size, None)
            arr = soften(to_float_array(img, size, smooth), soft)
            entry = (arr, self.detector.encode_reference(arr))
        else:
            own = self._reference(src, name, smooth=smooth, soft=soft)
            moved = into_frame(own[0], first[1])
            entry = own if moved is own[0] else (moved, self.detector.encode_reference(moved))
        if key is not None:
            put_bounded(self._cache, key, entry, self._cache_size, self._cache_bytes)
        return entry

    def _references(
        self, refs: Sequence[ImageInput], smooth: float = 0.0, soft: Sequence[float] | None = None
    ) -> list[tuple[np.ndarray, Any]]:
        """The references as the inspection core compares them: from ``COMMON_FRAME_FROM`` on, the others in the
        first one's frame (each cached for its pair; brought onto the first as it is, not softened)."""
        names = reference_names(refs)
        soft = list(soft) if soft is not None else [0.0] * len(refs)
        first = self._reference(refs[0], names[0], smooth=smooth, soft=soft[0])
        if not in_common_frame(self.registration, len(refs)):
            return [first] + [self._reference(r, n, smooth=smooth, soft=s)
                              for r, n, s in zip(refs[1:], names[1:], soft[1:], strict=True)]
        onto = (refs[0], first[0] if not soft[0] else self._reference(refs[0], names[0], smooth=smooth)[0])
        return [first] + [self._reference(r, n, onto, smooth, s) for r, n, s in zip(refs[1:], names[1:], soft[1:], strict=True)]

    def _plain(
        self, refs: Sequence[ImageInput], smooth: float = 0.0, soft: Sequence[float] | None = None
    ) -> list[tuple[np.ndarray, Any]]:
        """The references as they were taken (cached): their profiles are read so (not softened), and a query
        registration could not place is compared with them (``inspection.compared_references``)."""
        soft = list(soft) if soft is not None else [0.0] * len(refs)
        return [self._reference(r, n, smooth=smooth, soft=s)
                for r, n, s in zip(refs, reference_names(refs), soft, strict=True)]

    def _plain_arrays(self, refs: Sequence[ImageInput]) -> list[np.ndarray]:
        """The references' own (S, S, 3) arrays (cached)."""
        return [a for a, _ in self._plain(refs)]

    def forget_references(self, references: Sequence[ImageInput]) -> int:
        """Drop the cached encodings of these references (a set no longer used); the number dropped."""
        size = self.detector.image_size
        keys = {cache_key(r, size) for r in references} - {None}

        def derived(key: str) -> bool:
            # A variant of a forgotten reference ("KEY~0.6" smoothed, "KEY^1" softened, "KEY#..." cut to a frame)
            # or one brought into its frame ("OTHER@KEY"): either side forgotten drops it.
            return any(key.startswith(k) or f"@{k}" in key for k in keys)

        for store in (self._profiles, self._sizes):
            for k in [k for k in store if derived(k)]:
                del store[k]
        for k in [k for k in self._set_notes if any(derived(part) for part in k.split("|"))]:
            del self._set_notes[k]
        return sum(self._cache.pop(k, None) is not None for k in [k for k in self._cache if derived(k)])

    @property
    def cached_references(self) -> int:
        """How many reference encodings are cached."""
        return len(self._cache)

    def _profile(self, src: ImageInput, arr: np.ndarray, smooth: float = 0.0) -> ImageProfile:
        """The global profile of a reference (cached like its features, smoothed or not)."""
        key = smoothed_key(cache_key(src, self.detector.image_size), smooth)
        if key is not None and key in self._profiles:
            self._profiles.move_to_end(key)
            return self._profiles[key]
        profile = image_profile(None, arr)  # no tower: the product test reads the detector's distances
        if key is not None:
            self._profiles[key] = profile
            if len(self._profiles) > self._cache_size:
                self._profiles.popitem(last=False)
        return profile

    def reference_profiles(
        self, references: Sequence[ImageInput], arrays: Sequence[np.ndarray], smooth: float = 0.0
    ) -> list[ImageProfile] | None:
        """The references' profiles for the image check (cached), or None when the check is off."""
        if self.check_rules is None:
            return None
        return [self._profile(src, arr, smooth) for src, arr in zip(references, arrays, strict=True)]

    def reference_notes(self, references: Sequence[ImageInput]) -> list[str]:
        """Notes on a reference set (:mod:`adcopilot.model.reference_check`: a reference blank, badly exposed,
        blurred, of another product or elongated), made once per set and logged then; none when the image
        check is off. A set with an input that cannot be keyed is checked each time. The model's thread."""
        if self.check_rules is None:
            return []
        size = self.detector.image_size
        keys = [cache_key(r, size) for r in references]
        set_key = None if None in keys else "|".join(k for k in keys if k is not None)
        if set_key is not None and set_key in self._set_notes:
            self._set_notes.move_to_end(set_key)
            return list(self._set_notes[set_key])
        names = reference_names(references)
        plain = self._plain(references)
        profiles = [self._profile(r, a) for r, (a, _) in zip(references, plain, strict=True)]
        notes = reference_notes(names, reference_reasons(self.detector, plain, profiles, self.check_rules,
                                                         self.registration))
        for k, name in zip(keys, names, strict=True):
            stored = self._sizes.get(k) if k is not None else None
            if stored is not None:
                notes += self._shape_notes(stored, name, reference=True)
        for note in notes:
            log.warning("%s", note)
        if set_key is not None:
            put_bounded(self._set_notes, set_key, notes, self._cache_size, None)
        return list(notes)

    def check(self, query: np.ndarray, profiles: list[ImageProfile] | None, core: CoreOutput) -> str | None:
        """Why the (S, S, 3) query is not the references' product (their ``profiles``), or None (also when
        the check is off); ``core``: the query's inspection, whose patch distances the product test reads.
        No cache: any thread."""
        if profiles is None or self.check_rules is None:
            return None
        return check_image(image_profile(None, query), profiles, self.check_rules, core.patch_dist)

    def _smoothing(self, query: Image.Image, refs: Sequence[ImageInput], notes: list[str]) -> float:
        """Both sides' smoothing for this pair (:func:`imaging.pair_deblock`: a compressed JPEG query or reference;
        0 when turned off), said in ``notes``."""
        if not self.deblock:
            return 0.0
        sigma, quality, index = pair_deblock(query, refs, self.draft_size)
        if sigma and index is None:
            notes.append(f"the query is a JPEG of quality about {quality}: it and its references were smoothed alike "
                         f"(sigma {sigma:g} px) so that its compression blocks do not read as defects; save at "
                         "quality 90 or more for the sharpest comparison")
        elif sigma:
            name = reference_label(reference_names(refs)[index])
            notes.append(f"{name} is a JPEG of quality about {quality}: the query and the references were smoothed "
                         f"alike (sigma {sigma:g} px) so that its compression blocks do not read as defects; keep "
                         "references lossless or at quality 90 or more for the sharpest comparison")
        return sigma

    def _reference_sharpness(self, src: ImageInput, arr: np.ndarray, smooth: float, store: bool = True) -> float:
        """A reference's sharpness (:func:`focus.sharpness` of its array as compared), cached by source unless
        ``store`` is false (a thread other than the model's only looks up)."""
        key = smoothed_key(cache_key(src, self.detector.image_size), smooth)
        known = self._sharpness.get(key) if key is not None else None  # one dict operation: safe from any thread
        if known is not None:
            return known
        value = sharpness(arr)
        if key is not None and store:
            put_bounded(self._sharpness, key, value, self._cache_size, None)
        return value

    def _softening(
        self, query_sharpness: float | None, refs: Sequence[ImageInput], arrays: Sequence[np.ndarray], smooth: float,
        notes: list[str] | None = None,
    ) -> list[float]:
        """Each reference's softening for a query of ``query_sharpness`` (:func:`focus.matching_sigma`; all 0 when
        turned off or unknown), said in ``notes``."""
        if not self.refocus or query_sharpness is None:
            return [0.0] * len(refs)
        sharp = [self._reference_sharpness(r, a, smooth, notes is not None) for r, a in zip(refs, arrays, strict=True)]
        soft = [matching_sigma(query_sharpness, a, s) for a, s in zip(arrays, sharp, strict=True)]
        if notes is not None and any(soft):
            ratio = query_sharpness / max(float(np.median(sharp)), 1e-6)
            notes.append(f"the query is softer than its references (sharpness {ratio:.2f} of theirs): they were softened "
                         f"to match (sigma up to {max(soft):g} px) so that the lost texture does not read as a defect; "
                         "check the camera's focus")
        return soft

    @property
    def draft_size(self) -> int:
        """The side a JPEG is decoded at no less than (``imaging.load_image``'s ``draft``) for this model."""
        return DRAFT * self.detector.image_size

    def _shape_notes(self, size: tuple[int, int], name: str, reference: bool = False) -> list[str]:
        """The note on an elongated query, squeezed into the model's square (in its result, and logged once),
        or on an elongated ``reference`` (logged with its set's notes)."""
        w, h = size
        if not elongated((w, h)):
            return []
        s = self.detector.image_size
        shape = f"{w} x {h} ({max(w, h) / max(1, min(w, h)):.1f}:1): the model sees it squeezed to {s} x {s}"
        if reference:
            return [f"{reference_label(name)} is {shape}; use references shaped as the queries, of about square shape"]
        note = (f"the image is {shape}, so a defect narrow along its long side can be lost; inspect such images in "
                "parts of about square shape, each against the same part of a reference")
        if not self._told_elongated:
            self._told_elongated = True
            log.warning("%s: %s", name, note)
        return [note]

    def _framed(
        self, query: np.ndarray, size: tuple[int, int], refs: Sequence[ImageInput], smooth: float
    ) -> tuple[list[ImageInput], list[str]]:
        """The references framed for the (S, S, 3) query of stored (w, h) ``size`` (:func:`framing.frame_references`:
        one framed unlike the query squeezed or cut to its framing), and the notes on them. Any thread: the
        references' arrays are read from the cache or loaded, never stored."""
        s = self.detector.image_size

        def array_of(src: ImageInput, name: str) -> np.ndarray:
            key = smoothed_key(cache_key(src, s), smooth)
            cached = self._cache.get(key) if key is not None else None  # one dict operation: safe from any thread
            if cached is not None:
                return cached[0]
            return to_float_array(load_image(src, name=name, draft=self.draft_size), s, smooth)

        def size_of(src: ImageInput) -> tuple[int, int] | None:
            # An array's shape (no hashing); a loaded reference's stored size from the cache; else its header (which
            # for a PNG means reading it whole: about 1 ms, once per reference instead of once per query).
            if isinstance(src, np.ndarray):
                return peek_size(src)
            key = cache_key(src, s)
            known = self._sizes.get(key) if key is not None else None  # one dict operation: safe from any thread
            return known if known is not None else peek_size(src)

        return frame_references(query, size, refs, reference_names(refs), size_of, array_of, bool(self.registration))

    # ------------------------------------------------------------------ inspection
    def analyze(
        self, query: ImageInput, references: ImageInput | Sequence[ImageInput]
    ) -> Analysis:
        """Anomaly map in the query's pixels, image score, query size, registration and timings."""
        refs = as_references(references)
        t0 = time.perf_counter()
        qimg = load_image(query, name=source_name(query, "query"), draft=self.draft_size)
        size = full_size(qimg)  # (w, h) as stored: the map and the boxes are in these pixels
        notes = self._shape_notes(size, source_name(query, "query"))
        smooth = self._smoothing(qimg, refs, notes)
        q = to_float_array(qimg, self.detector.image_size, smooth)
        refs, framing = self._framed(q, size, refs, smooth)
        taken = self._plain(refs, smooth)  # as taken, not softened: the image check reads these
        soft = self._softening(sharpness(q) if self.refocus else None, refs, [a for a, _ in taken], smooth, notes)
        encoded = self._references(refs, smooth, soft)
        plain = self._plain(refs, smooth, soft) if any(soft) else taken  # softened for the identity fallback
        notes += self.reference_notes(refs) + framing
        t1 = time.perf_counter()
        core = inspect_arrays(self.detector, q, encoded, registration=self.registration, with_deviation=True,
                              as_taken=plain)  # (S, S), query frame
        t2 = time.perf_counter()
        check = self.check(q, self.reference_profiles(refs, [a for a, _ in taken], smooth), core)
        t3 = time.perf_counter()
        timings = {"load": (t1 - t0) * 1e3, **core.timings, "check": (t3 - t2) * 1e3}
        analysis = self._analysis(size, core, check, timings)
        analysis.notes = notes
        return analysis

    @staticmethod
    def _analysis(size: tuple[int, int], core: CoreOutput, check: str | None, timings: dict[str, float]) -> Analysis:
        """The core's (S, S) maps resized to the query's (w, h) pixels."""
        w, h = size
        amap = cv2.resize(core.amap, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float32)
        deviation = cv2.resize(core.deviation, (w, h), interpolation=cv2.INTER_LINEAR) if core.deviation is not None else None
        return Analysis(amap, core.score, (w, h), core.registration, timings, check, deviation)

    def inspect(
        self,
        query: ImageInput,
        references: ImageInput | Sequence[ImageInput],
        *,
        threshold: float | None = None,
    ) -> InspectionResult:
        """Compare ``query`` with normal ``references``; verdict, score, boxes, description."""
        if threshold is not None:
            require_finite(threshold, "threshold")
        t0 = time.perf_counter()
        refs = as_references(references)
        a = self.analyze(query, refs)
        thr = float(threshold) if threshold is not None else self.threshold_for(refs)
        return self._result(query, refs, a, thr, t0)

    def _result(
        self, query: ImageInput, refs: Sequence[ImageInput], a: Analysis, thr: float, t0: float
    ) -> InspectionResult:
        """Verdict, boxes and description of an analysis at ``thr``; ``t0``: when the inspection began."""
        amap, (w, h), reg, timings, score = a.amap, a.size, a.registration, a.timings, a.score
        anomalous = score >= thr or a.check is not None
        # A frame that is not the product has no defect to box.
        boxes = self.boxes(a, thr) if anomalous and a.check is None else []
        timings["total"] = (time.perf_counter() - t0) * 1e3
        return InspectionResult(
            query=source_name(query, "query"),
            references=reference_names(refs),
            verdict="anomalous" if anomalous else "normal",
            score=score,
            threshold=thr,
            boxes=boxes,
            description=describe_findings(anomalous, boxes, w, h, a.check),
            model=self.model_name,
            image_size=(w, h),
            registration=reg.to_dict(),
            timings_ms=timings,
            anomaly_map=amap,
            image_check=a.check,
            notes=list(a.notes),
        )

    def threshold_for(self, references: Sequence[ImageInput]) -> float:
        """The threshold ``inspect`` uses for this reference set when none is given: this copilot's when
        one was given or calibrated, else the detector's for that many references."""
        return self.threshold_with(len(references))

    def threshold_with(self, references: int) -> float:
        """:meth:`threshold_for` a set of this many references: a threshold given serves every count; a
        calibrated one the counts whose own threshold the model shares with the count it was fitted with
        (``calibrated_references``); any other count keeps the model's own."""
        own = float(self.detector.threshold_for(references))
        k = self.calibrated_references
        if self.fixed_threshold and (k is None or own == float(self.detector.threshold_for(k))):
            return self.threshold
        return own

    def boxes(self, analysis: Analysis, threshold: float, rules: BoxRules | None = None) -> list[Box]:
        """Defect boxes of an anomalous analysis at ``threshold`` (``rules``: this copilot's by default)."""
        amap = analysis.amap
        rules = rules or self.box_rules
        found = boxes_from_map(amap, threshold, rules, analysis.deviation)
        if not found and amap.max() > 0:
            # The image score can exceed the threshold while no pixel does (a diffuse
            # difference): box the strongest region, relative to the map's own peak.
            found = boxes_from_map(amap, 0.5 * float(amap.max()), rules, analysis.deviation)[:1]
        return [Box(bbox_2d=bbox, label="defect", score=s) for bbox, s in found]

    # ------------------------------------------------------------------ staged inspection (batches)
    def inspect_batch(
        self, pairs: Sequence[tuple[ImageInput, ImageInput | Sequence[ImageInput]]], *, threshold: float | None = None
    ) -> list[InspectionResult]:
        """:meth:`inspect` of several (query, references) pairs with one detector pass; the same
        results to float rounding. Its stages are public for a server that batches requests:
        :meth:`prepare` and :meth:`finish` need no model and run in any thread (beside the model
        working on other requests); :meth:`encode` and :meth:`detect` use the model and its caches,
        one thread at a time."""
        staged = [self.prepare(q, r, threshold=threshold) for q, r in pairs]
        for p in staged:
            self.encode(p)
        self.detect(staged)
        return [self.finish(p) for p in staged]

    def prepare(
        self, query: ImageInput, references: ImageInput | Sequence[ImageInput], *, threshold: float | None = None
    ) -> StagedPair:
        """Stage 1, no model (any thread): decode the query and register it onto the first reference."""
        if threshold is not None:
            require_finite(threshold, "threshold")
        t0 = time.perf_counter()
        refs = as_references(references)
        size = self.detector.image_size
        qimg = load_image(query, name=source_name(query, "query"), draft=self.draft_size)
        stored = full_size(qimg)  # (w, h) as stored: the result's map and boxes are in these pixels
        notes = self._shape_notes(stored, source_name(query, "query"))
        smooth = self._smoothing(qimg, refs, notes)
        q = to_float_array(qimg, size, smooth)
        refs, framing = self._framed(q, stored, refs, smooth)
        key = smoothed_key(cache_key(refs[0], size), smooth)
        # A lookup alone, from any thread: one dict operation, atomic under the GIL; only the model's
        # thread (encode) adds and evicts entries.
        cached = self._cache.get(key) if key is not None else None
        first = cached[0] if cached is not None else to_float_array(
            load_image(refs[0], name=reference_names(refs)[0], draft=self.draft_size), size, smooth)
        sharp = sharpness(q) if self.refocus else None
        # The query is registered onto the first reference as it will be compared (softened for a softer query).
        first = soften(first, self._softening(sharp, refs[:1], [first], smooth)[0])
        t1 = time.perf_counter()
        aligned = align(q, first, registration=self.registration)
        return StagedPair(query, refs, stored, aligned, None if threshold is None else float(threshold), t0,
                          {"load": (t1 - t0) * 1e3}, notes=notes, smooth=smooth, sharpness=sharp, framing=framing)

    def encode(self, pair: StagedPair) -> None:
        """Stage 2, the model's thread: the references' encodings and profiles (cached), the threshold."""
        t0 = time.perf_counter()
        refs = pair.references
        taken = self._plain(refs, pair.smooth)
        soft = self._softening(pair.sharpness, refs, [a for a, _ in taken], pair.smooth, pair.notes)
        plain = self._plain(refs, pair.smooth, soft) if any(soft) else taken
        pair.encoded = list(compared_references(pair.aligned, self._references(refs, pair.smooth, soft), plain))
        pair.profiles = self.reference_profiles(refs, [a for a, _ in taken], pair.smooth)
        pair.notes = [*pair.notes, *self.reference_notes(refs), *pair.framing]
        if pair.threshold is None:
            pair.threshold = self.threshold_for(refs)
        pair.timings["queue"] = (t0 - pair.started) * 1e3 - pair.timings["load"] - pair.aligned.ms
        pair.timings["encode"] = (time.perf_counter() - t0) * 1e3

    def detect(self, pairs: Sequence[StagedPair]) -> None:
        """Stage 3, the model's thread: the detector on every encoded pair, as one batch."""
        t0 = time.perf_counter()
        found = self.detector.detections([p.aligned.compared for p in pairs], [[e for _, e in p.encoded] for p in pairs],
                                         own_frames=[p.aligned.own_frame for p in pairs])
        ms = (time.perf_counter() - t0) * 1e3
        for p, d in zip(pairs, found, strict=True):
            p.detection = d
            p.timings["detect"] = ms  # the batch's

    def finish(self, pair: StagedPair) -> InspectionResult:
        """Stage 4, no model state (any thread): maps in the query's pixels, the image check, verdict, boxes."""
        if pair.detection is None or pair.threshold is None:
            raise ValueError("finish: the pair has not been through encode and detect")
        t0 = time.perf_counter()
        core = in_query_frame(pair.detection, pair.aligned, [a for a, _ in pair.encoded], with_deviation=True,
                              detect_ms=pair.timings["detect"])
        t1 = time.perf_counter()
        check = self.check(pair.aligned.query, pair.profiles, core)
        t2 = time.perf_counter()
        timings = {**pair.timings, **core.timings, "map back": (t1 - t0) * 1e3, "check": (t2 - t1) * 1e3}
        analysis = self._analysis(pair.size, core, check, timings)
        analysis.notes = pair.notes
        return self._result(pair.query, pair.references, analysis, pair.threshold, pair.started)


class AnsweringCopilot(LanguageAnswers, Copilot):
    """A nano :class:`Copilot` with a language model: also an Answerer and a Localizer
    (:mod:`adcopilot.language.answering`)."""

    def __init__(self, detector: Detector, language: NanoLanguage, **kwargs: Any) -> None:
        self.language = language
        super().__init__(detector, **kwargs)

    # The language model's images are prepared as the inspection's are, so it reads the score inspect reports.
    @property  # type: ignore[override]
    def deblock(self) -> bool:
        return self.language.deblock

    @deblock.setter
    def deblock(self, on: bool) -> None:
        self.language.deblock = on

    @property  # type: ignore[override]
    def refocus(self) -> bool:
        return self.language.refocus

    @refocus.setter
    def refocus(self, on: bool) -> None:
        self.language.refocus = on


def _steps(value: Callable[[int], Any], up_to: int) -> dict[str, Any]:
    """{count from which it applies: value} where ``value(n)`` changes, n = 1 .. ``up_to``."""
    steps: dict[str, Any] = {}
    last = None
    for n in range(1, up_to + 1):
        v = value(n)
        if v != last:
            steps[str(n)], last = v, v
    return steps


def threshold_steps(inspector: Inspector, up_to: int) -> dict[str, float]:
    """Where an inspector's threshold changes with the number of references, up to ``up_to``: {count from
    which it applies: threshold}, e.g. {"1": 0.5, "2": 0.485, "3": 0.475, "4": 0.4551, "5": 0.4403}."""
    return _steps(inspector.threshold_with, up_to)


def score_steps(detector: Detector, up_to: int) -> dict[str, str]:
    """Where a detector's image score changes with the number of references, up to ``up_to``: {count from which
    it applies: the score's name}, e.g. {"1": "blend", "2": "fused-spread"} (a threshold holds on its score's scale only)."""
    return _steps(detector.image_score_for, up_to)


# ---------------------------------------------------------------------- the model registry
def _load_nano(
    spec: str | Path, *, threshold: float | None, registration: bool, calibration: str | os.PathLike | None,
    model: str | os.PathLike | None,
) -> Copilot:
    detector, meta = load_detector(spec)
    name = meta.get("name", detector.name)
    cal = None if threshold is not None else resolve_calibration(model, name, calibration, detector.image_score_for)
    thr = threshold if threshold is not None else cal["threshold"] if cal else None  # None: the detector's
    language = Path(spec) / "language" if isinstance(spec, Path) else None
    options = {"threshold": thr, "registration": registration, "model_name": name}
    cp: Copilot
    if language is not None and (language / "config.json").exists():  # answers questions; loaded on first use
        cp = AnsweringCopilot(detector, NanoLanguage(language, detector, registration=registration), **options)
    else:
        cp = Copilot(detector, **options)
    cp.calibration = cal
    cp.calibrated_references = calibrated_references(cal) if cal else None
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
    stored ``calibration.json``, see :mod:`adcopilot.calibration_store`), else the model's (which, for the
    shipped model, differs with two or more references: ``Detector.threshold_for``)."""
    if threshold is not None:
        require_finite(threshold, "threshold")
    spec = resolve_model(model)
    # A folder that is no known kind goes to the nano loader, which names what is wrong with it.
    kind = (checkpoint_kind(spec) if isinstance(spec, Path) and (spec / "config.json").is_file() else None) or "nano"
    if kind not in MODEL_KINDS:
        raise CheckpointError(f"{spec}: a {kind} checkpoint; the copilot loads nano and AD-Copilot checkpoints")
    return MODEL_KINDS[kind](spec, threshold=threshold, registration=registration, calibration=calibration,
                             model=model)
