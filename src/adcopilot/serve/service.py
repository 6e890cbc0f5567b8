"""What the REST service does, apart from HTTP: validate uploads, keep reference sets, run the model.

One :class:`InspectionService` wraps one :class:`adcopilot.Copilot`. The model runs under a lock
(one model call at a time: the model and its reference cache are not thread-safe, and on a small
CPU parallel inferences only compete for the same cores), while uploads are received and decoded
in parallel. Inspections are batched (:mod:`adcopilot.serve.batching`): each request decodes its
query and registers it onto its first reference (with up to two) in its own thread, requests that come together run
through the model as one batch (``Copilot.encode`` and ``detect``), and each maps its result back,
checks the image and finds its boxes in its own thread again (``Copilot.finish``), beside the model
working on the next batch. At most ``max_queue`` inspections wait for the model; more are answered
503 with ``Retry-After`` at once. Reference sets are kept in memory, least recently used first out;
a set deleted or pushed out takes its cached reference encodings with it.

Nothing holds the model for long: a request waits for it at most ``request_timeout_s`` (then 503),
questions and their history are capped in length, and answers in generated tokens. The model may
be given later (:meth:`InspectionService.set_copilot`, a worker loading it in the background):
until then the service is live but not ready, and model requests answer 503.

Usage::

    svc = InspectionService(Copilot.load(), ServeConfig(max_pixels=20_000_000))
    rid = svc.register_references([("good.png", data)])["id"]
    out = svc.inspect(("q.png", qdata), [], rid, heatmap=True)
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import os
import re
import threading
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import CancelledError, Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from adcopilot.api import Copilot, StagedPair, score_steps, threshold_steps
from adcopilot.errors import AdcopilotError, ImageError, require_finite
from adcopilot.grounding import choice_text, question_options
from adcopilot.imaging import FORMATS_TEXT, SUPPORTED_FORMATS, load_image
from adcopilot.protocols import Answerer, Inspector
from adcopilot.results import InspectionResult
from adcopilot.serve.batching import Batcher, QueueFull
from adcopilot.serve.grid import anomaly_grid
from adcopilot.serve.history import parse_history
from adcopilot.serve.reference_sets import (
    FolderSets,
    MemorySets,
    ReferenceSets,
    new_set_context,
    request_context,
)
from adcopilot.visualize import heat_colours

log = logging.getLogger(__name__)

Upload = tuple[str, bytes]  # (file name, content)


class ServiceError(AdcopilotError):
    """A request the service refuses, with the HTTP status to answer (and when to retry, for a 503)."""

    def __init__(self, message: str, status: int = 422, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s


@dataclass
class ServeConfig:
    api_key: str | None = None
    max_upload_bytes: int = 32 * 2**20  # whole request body
    max_pixels: int = 40_000_000  # per image
    max_references: int = 16  # per request or set
    max_reference_sets: int = 64
    heatmap_max_side: int = 512
    max_question_chars: int = 2000
    max_history_turns: int = 16
    max_history_chars: int = 8000  # characters of content over all turns
    max_new_tokens: int = 64  # longest answer, in tokens
    request_timeout_s: float = 60.0  # longest a request may wait for and use the model (then 503)
    batch_window_ms: float = 2.0  # longest an inspection waits for others being prepared to join its batch
    max_batch: int = 4  # most inspections in one pass of the model
    max_queue: int | None = None  # most inspections waiting for the model (then 503 at once); None: no bound
    sets_dir: str | None = None  # keep reference sets in this folder (shared by worker processes)


@dataclass
class Whole:
    """An inspection for a model that is not inspected in stages: run whole, in the model's thread."""

    query: Image.Image
    references: list[bytes]
    threshold: float | None


def check_header(upload: Upload, max_pixels: int) -> None:
    """Cheap checks without decoding: not empty, a supported format, not too many pixels."""
    name, data = upload
    if not data:
        raise ServiceError(f"{name}: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                fmt, (w, h) = im.format, im.size
    except Image.DecompressionBombError:
        raise ServiceError(f"{name}: image too large (decompression bomb guard)", 413) from None
    except Exception:
        raise ServiceError(f"{name}: not an image file or unknown format") from None
    if fmt not in SUPPORTED_FORMATS:
        raise ServiceError(f"{name}: unsupported image format {fmt}; use {FORMATS_TEXT}", 415)
    if w * h > max_pixels:
        raise ServiceError(f"{name}: image too large ({w}x{h} pixels, limit {max_pixels:,})", 413)


def heatmap_png(amap: np.ndarray, threshold: float, max_side: int) -> str:
    """The anomaly map as a transparent colour overlay (PNG data URI), same colours as the
    annotated images: clear below half the threshold, red at twice the threshold."""
    h, w = amap.shape
    scale = min(1.0, max_side / max(h, w))
    if scale < 1.0:
        amap = cv2.resize(amap, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    norm, rgb = heat_colours(amap, threshold)
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    alpha = (np.where(norm > 0.05, 0.35 + 0.4 * norm, 0.0) * 255).astype(np.uint8)
    ok, buf = cv2.imencode(".png", np.dstack([bgr, alpha]))
    if not ok:  # pragma: no cover - OpenCV always encodes a valid uint8 image
        raise RuntimeError("PNG encoding failed")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def jpeg_preview(img: Image.Image, max_side: int) -> str:
    """A JPEG data URI of the image, at most ``max_side`` pixels on its longer side."""
    im = img.copy()
    im.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class InspectionService:
    def __init__(self, copilot: Inspector | None, config: ServeConfig | None = None) -> None:
        self.config = config or ServeConfig()
        self.started = time.time()
        self.requests = 0
        self._copilot = copilot
        self._load_error: str | None = None
        self._model_lock = threading.Lock()
        self._batcher: Batcher[StagedPair | Whole, StagedPair | InspectionResult] = Batcher(
            self._run_inspections, self._model_lock, window_s=self.config.batch_window_ms / 1e3,
            max_batch=self.config.max_batch, max_queue=self.config.max_queue, name="adcopilot-model")
        limit = self.config.max_reference_sets
        self._sets: ReferenceSets = (
            FolderSets(Path(self.config.sets_dir), limit) if self.config.sets_dir else MemorySets(limit))

    # ------------------------------------------------------------------ the model
    def set_copilot(self, copilot: Inspector | None, error: str | None = None) -> None:
        """The model is loaded (ready from now on), or could not be (``error``, one line)."""
        self._copilot, self._load_error = copilot, error

    @property
    def ready(self) -> bool:
        return self._copilot is not None

    @property
    def copilot(self) -> Inspector:
        if self._copilot is None:
            why = f"the model could not be loaded ({self._load_error})" if self._load_error else "the model is loading"
            raise ServiceError(f"not ready: {why}; see /v1/health", 503)
        return self._copilot

    @contextmanager
    def _model(self, started: float) -> Iterator[Inspector]:
        """The model, held by this request alone; 503 when it does not come free within the time limit."""
        cp = self.copilot
        left = self.config.request_timeout_s - (time.monotonic() - started)
        if left <= 0 or not self._model_lock.acquire(timeout=left):
            raise ServiceError(f"service busy: the model did not come free within {self.config.request_timeout_s:g} s", 503)
        try:
            self.requests += 1
            yield cp
        finally:
            self._model_lock.release()

    # ------------------------------------------------------------------ information
    def health(self) -> dict[str, Any]:
        cp = self._copilot
        status = "ok" if cp is not None else "failed" if self._load_error else "loading"
        return {"status": status, "live": True, "ready": cp is not None,
                "model": cp.model_name if cp is not None else None, "error": self._load_error,
                "pid": os.getpid(), "uptime_s": round(time.time() - self.started, 1), "requests": self.requests,
                "reference_sets": len(self._sets), "inspect_queue": self._batcher.stats(),
                "cached_references": getattr(cp, "cached_references", 0) if cp is not None else 0}

    def models(self) -> dict[str, Any]:
        cp = self.copilot
        cal = cp.calibration
        return {"models": [{
            "name": cp.model_name,
            "loaded": True,
            "image_size": cp.detector.image_size,
            "runtime": cp.detector.runtime,  # pytorch, or an exported file's: onnxruntime, openvino
            "threshold": cp.threshold_with(1),  # with one reference; other counts below
            "threshold_with_2_or_more_references": cp.threshold_with(2),
            "threshold_by_references": threshold_steps(cp, self.config.max_references),
            # The image score each count is scored with: a threshold (or calibration) holds on that score's scale.
            "image_score_by_references": score_steps(cp.detector, self.config.max_references),
            "threshold_source": "calibration" if cal else "model",
            "calibration": None if not cal else {k: cal.get(k) for k in (
                "path", "date", "miss_cost", "false_alarm_cost", "target_miss_rate", "prevalence", "metrics")},
            "registration": cp.registration,
            "language": isinstance(cp, Answerer),
        }], "object": "list",  # and OpenAI's model list, which chat clients read
            "data": [{"id": cp.model_name, "object": "model", "created": int(self.started), "owned_by": "adcopilot"}]}

    # ------------------------------------------------------------------ reference sets
    def register_references(
        self, uploads: list[Upload], name: str | None = None, product: str | None = None, material: str | None = None,
    ) -> dict[str, Any]:
        context = new_set_context(product, material)  # what the references show, for object questions
        refs = self._check_refs(uploads)
        for n, data in refs:  # decode fully once, so a set never holds a broken image
            try:
                load_image(data, name=n, max_pixels=self.config.max_pixels)
            except ImageError as exc:
                raise ServiceError(str(exc)) from None
        digest = hashlib.sha1()
        for _, data in refs:
            digest.update(hashlib.sha1(data).digest())
        if context["product"]:  # the same images labelled as another product are another set
            digest.update(f"\0{context['product']}\0{context['material'] or ''}".encode())
        rid = digest.hexdigest()[:16]
        entry = {"id": rid, "name": name or refs[0][0], "count": len(refs), "files": [n for n, _ in refs],
                 "data": [d for _, d in refs], "created": time.time(), **context}
        for old in self._sets.put(entry):
            self._free(old)
        return self._public(entry)

    def reference_sets(self) -> dict[str, Any]:
        return {"reference_sets": [self._public(e) for e in self._sets.values()]}

    def delete_references(self, rid: str) -> int:
        """Forget a set and its cached reference encodings (in this process); the number freed."""
        entry = self._sets.pop(rid)
        if entry is None:
            raise ServiceError(f"reference set '{rid}' not found", 404)
        return self._free(entry)

    def _free(self, entry: dict[str, Any]) -> int:
        """Drop the model's cached encodings of a set's images that no other registered set holds."""
        cp = self._copilot
        if cp is None or not hasattr(cp, "forget_references"):
            return 0
        kept = {hashlib.sha1(d).digest() for e in self._sets.values() for d in e["data"]}
        gone = [d for d in entry["data"] if hashlib.sha1(d).digest() not in kept]
        try:
            with self._model(time.monotonic()):  # the cache belongs to the model thread
                return cp.forget_references(gone)
        except ServiceError:  # the model stayed busy: its cache bound (least recently used out) still holds
            log.warning("reference encodings not freed now: the model is busy")
            return 0

    @staticmethod
    def _public(e: dict[str, Any]) -> dict[str, Any]:
        return {**{k: e[k] for k in ("id", "name", "count", "files")}, "product": e.get("product"),
                "material": e.get("material")}

    def _check_refs(self, uploads: list[Upload]) -> list[Upload]:
        if not uploads:
            raise ServiceError("at least one normal reference image is needed")
        if len(uploads) > self.config.max_references:
            raise ServiceError(f"too many references ({len(uploads)}, limit {self.config.max_references})")
        for u in uploads:
            check_header(u, self.config.max_pixels)
        return uploads

    def _references(self, uploads: list[Upload], reference_set: str | None) -> list[Upload]:
        if reference_set:
            if uploads:
                raise ServiceError("send either reference images or a reference_set id, not both")
            e = self._sets.get(reference_set)
            if e is None:
                raise ServiceError(f"reference set '{reference_set}' not found; register it with POST /v1/references", 404)
            return list(zip(e["files"], e["data"], strict=True))
        return self._check_refs(uploads)

    def _query(self, upload: Upload) -> Image.Image:
        """The upload decoded; a JPEG at the reduced scale a copilot's model needs (``Copilot.draft_size``), as
        ``inspect`` decodes it from a file, so the service and the command line give the same scores."""
        check_header(upload, self.config.max_pixels)
        draft = self.copilot.draft_size if isinstance(self.copilot, Copilot) else None
        try:
            return load_image(upload[1], name=upload[0], max_pixels=self.config.max_pixels, draft=draft)
        except ImageError as exc:
            raise ServiceError(str(exc)) from None

    # ------------------------------------------------------------------ model calls
    def inspect(
        self, query: Upload, references: list[Upload], reference_set: str | None = None,
        *, threshold: float | None = None, heatmap: bool = False, preview: bool = False,
    ) -> dict[str, Any]:
        started = time.monotonic()
        if threshold is not None:
            require_finite(threshold, "threshold")
        cp = self.copilot
        deadline = started + self.config.request_timeout_s
        try:
            with self._batcher.admission() as submit:
                qimg = self._query(query)
                refs = self._references(references, reference_set)
                # Reference bytes go to the model as they are: its cache knows them by content.
                data = [d for _, d in refs]
                try:  # a Copilot in stages, batched with other requests; another inspector whole
                    item = cp.prepare(qimg, data, threshold=threshold) if isinstance(cp, Copilot) else Whole(qimg, data, threshold)
                except ImageError as exc:
                    raise ServiceError(self._name_refs(str(exc), refs)) from None
                future = submit(item, deadline)
        except QueueFull as full:
            raise ServiceError(f"service busy: {full}; retry after {full.retry_after_s} s", 503,
                               retry_after_s=full.retry_after_s) from None
        done = self._result(future, deadline, refs)
        r = cp.finish(done) if isinstance(done, StagedPair) else done  # the request's thread again
        r.query = query[0]
        r.references = [n for n, _ in refs]
        r.notes = [self._name_refs(note, refs) for note in r.notes]
        out = r.to_dict()
        out["reference_set"] = reference_set
        if heatmap and r.anomaly_map is not None:
            out["heatmap"] = heatmap_png(r.anomaly_map, r.threshold, self.config.heatmap_max_side)
            # The map's values too, coarse, so a client can re-draw boxes at another threshold.
            out["anomaly_grid"] = anomaly_grid(r.anomaly_map, getattr(self.copilot, "box_rules", None))
        if preview:  # for clients that cannot show the format (a browser and a TIFF, a stored set)
            out["preview"] = jpeg_preview(qimg, self.config.heatmap_max_side * 2)
            out["reference_preview"] = jpeg_preview(self._query(refs[0]),  # checked and decoded as a query is
                                                   self.config.heatmap_max_side * 2)
        return out

    def _result(self, future: Future[Any], deadline: float, refs: list[Upload]) -> StagedPair | InspectionResult:
        """An inspection's result from the model's thread; 503 (and cancelled) past the time limit."""
        try:
            return future.result(timeout=max(0.0, deadline - time.monotonic()))
        except (TimeoutError, CancelledError):
            future.cancel()  # not started yet: the model never sees it
            raise ServiceError(
                f"service busy: the model did not come free within {self.config.request_timeout_s:g} s", 503) from None
        except ImageError as exc:
            raise ServiceError(self._name_refs(str(exc), refs)) from None

    def _run_inspections(self, items: list[StagedPair | Whole]) -> list[StagedPair | InspectionResult | Exception]:
        """The model's part of a batch (its thread, under the model lock): staged pairs are encoded,
        then detected together; other items are inspected whole. Each item gets its result or its
        own exception (a reference that does not decode fails its request alone)."""
        cp = self.copilot
        self.requests += len(items)
        out: list[StagedPair | InspectionResult | Exception] = []
        for item in items:
            try:
                if isinstance(item, Whole):
                    out.append(cp.inspect(item.query, item.references, threshold=item.threshold))
                else:
                    cp.encode(item)  # only a Copilot prepares staged pairs
                    out.append(item)
            except Exception as exc:
                out.append(exc)
        staged = [x for x in out if isinstance(x, StagedPair)]
        if staged:
            try:
                cp.detect(staged)
            except Exception as exc:
                out = [exc if isinstance(x, StagedPair) else x for x in out]
        return out

    def ask(
        self, query: Upload, references: list[Upload], reference_set: str | None, question: str,
        history: str | None = None, product: str | None = None, material: str | None = None,
    ) -> dict[str, Any]:
        started = time.monotonic()
        cp = self.copilot
        question = (question or "").strip()
        if not question:
            raise ServiceError("the question is empty")
        if len(question) > self.config.max_question_chars:
            raise ServiceError(f"the question is too long ({len(question)} characters, limit {self.config.max_question_chars})")
        turns = parse_history(history, max_turns=self.config.max_history_turns, max_chars=self.config.max_history_chars)
        if not isinstance(cp, Answerer):
            raise ServiceError(f"model '{cp.model_name}' cannot answer questions (no language model)", 501)
        try:
            context = request_context(self._sets.get(reference_set) if reference_set else None, product, material, cp)
        except AdcopilotError as exc:
            raise ServiceError(str(exc), 422) from None
        qimg = self._query(query)
        refs = self._references(references, reference_set)
        choice = question_options(question)  # lettered options in the question: the answer names one
        letter = None
        with self._model(started):
            try:
                if choice is not None:
                    letter = cp.answer_choice(qimg, [d for _, d in refs], choice[0], choice[1], **context)
                answer = choice_text(letter, choice[1]) if choice is not None and letter else ""
                if not answer:  # no options, or a model whose words named none: its free answer
                    answer = cp.ask(qimg, [d for _, d in refs], question, history=turns,
                                    max_new_tokens=self.config.max_new_tokens, **context)
            except ImageError as exc:
                raise ServiceError(self._name_refs(str(exc), refs)) from None
            except AdcopilotError as exc:
                raise ServiceError(str(exc), 422) from None  # e.g. a malformed history
        out: dict[str, Any] = {"answer": answer, "model": cp.model_name, "question": question}
        if choice is not None:
            out.update(choice=letter if letter and letter in choice[1] else None, options=choice[1])
        return out

    @staticmethod
    def _name_refs(message: str, refs: list[Upload]) -> str:
        # The model names references by position ("reference 2: ..." in errors, "reference 2 is ..." in notes);
        # say which upload it was.
        for i, (n, _) in enumerate(refs):
            message = message.replace(f"reference {i + 1}:", f"{n}:")
            message = re.sub(rf"\breference {i + 1}\b(?!:)", lambda _m, n=n: f"reference {n}", message)
        return message
