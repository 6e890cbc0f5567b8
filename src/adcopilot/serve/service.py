"""What the REST service does, apart from HTTP: validate uploads, keep reference sets, run the model.

One :class:`InspectionService` wraps one :class:`adcopilot.Copilot`. The model runs under a lock
(one inference at a time: the model and its reference cache are not thread-safe, and on a small
CPU parallel inferences only compete for the same cores), while uploads are received and decoded
in parallel. Reference sets are kept in memory, least recently used first out.

Usage::

    svc = InspectionService(Copilot.load(), ServeConfig(max_pixels=20_000_000))
    rid = svc.register_references([("good.png", data)])["id"]
    out = svc.inspect(("q.png", qdata), [], rid, heatmap=True)
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import threading
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from PIL import Image

from adcopilot.api import Copilot
from adcopilot.errors import AdcopilotError, ImageError
from adcopilot.imaging import SUPPORTED_FORMATS, load_image

log = logging.getLogger(__name__)

Upload = tuple[str, bytes]  # (file name, content)


class ServiceError(AdcopilotError):
    """A request the service refuses, with the HTTP status to answer."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class ServeConfig:
    api_key: str | None = None
    max_upload_bytes: int = 32 * 2**20  # whole request body
    max_pixels: int = 40_000_000  # per image
    max_references: int = 16  # per request or set
    max_reference_sets: int = 64
    heatmap_max_side: int = 512
    max_question_chars: int = 2000


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
        raise ServiceError(f"{name}: unsupported image format {fmt}; use PNG, JPEG, BMP, TIFF or WebP", 415)
    if w * h > max_pixels:
        raise ServiceError(f"{name}: image too large ({w}x{h} pixels, limit {max_pixels:,})", 413)


def heatmap_png(amap: np.ndarray, threshold: float, max_side: int) -> str:
    """The anomaly map as a transparent colour overlay (PNG data URI), same colours as the
    annotated images: clear below half the threshold, red at twice the threshold."""
    h, w = amap.shape
    scale = min(1.0, max_side / max(h, w))
    if scale < 1.0:
        amap = cv2.resize(amap, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    thr = max(threshold, 1e-6)
    norm = np.clip((amap - 0.5 * thr) / (1.5 * thr), 0, 1)
    bgr = cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_JET)
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
    def __init__(self, copilot: Copilot, config: ServeConfig | None = None) -> None:
        self.copilot = copilot
        self.config = config or ServeConfig()
        self.started = time.time()
        self.requests = 0
        self._model_lock = threading.Lock()
        self._sets_lock = threading.Lock()
        self._sets: OrderedDict[str, dict[str, Any]] = OrderedDict()

    # ------------------------------------------------------------------ information
    def health(self) -> dict[str, Any]:
        return {"status": "ok", "model": self.copilot.model_name,
                "uptime_s": round(time.time() - self.started, 1), "requests": self.requests}

    def models(self) -> dict[str, Any]:
        cp = self.copilot
        cal = cp.calibration
        return {"models": [{
            "name": cp.model_name,
            "loaded": True,
            "image_size": cp.detector.image_size,
            "threshold": cp.threshold,
            "threshold_source": "calibration" if cal else "model",
            "calibration": None if not cal else {k: cal.get(k) for k in (
                "path", "date", "miss_cost", "false_alarm_cost", "target_miss_rate", "prevalence", "metrics")},
            "registration": cp.registration,
            "language": hasattr(cp, "ask") and getattr(cp, "language", None) is not None,
        }], "object": "list",  # and OpenAI's model list, which chat clients read
            "data": [{"id": cp.model_name, "object": "model", "created": int(self.started), "owned_by": "adcopilot"}]}

    # ------------------------------------------------------------------ reference sets
    def register_references(self, uploads: list[Upload], name: str | None = None) -> dict[str, Any]:
        refs = self._check_refs(uploads)
        for n, data in refs:  # decode fully once, so a set never holds a broken image
            try:
                load_image(data, name=n, max_pixels=self.config.max_pixels)
            except ImageError as exc:
                raise ServiceError(str(exc)) from None
        digest = hashlib.sha1()
        for _, data in refs:
            digest.update(hashlib.sha1(data).digest())
        rid = digest.hexdigest()[:16]
        entry = {"id": rid, "name": name or refs[0][0], "count": len(refs), "files": [n for n, _ in refs],
                 "data": [d for _, d in refs], "created": time.time()}
        with self._sets_lock:
            self._sets[rid] = entry
            self._sets.move_to_end(rid)
            while len(self._sets) > self.config.max_reference_sets:
                self._sets.popitem(last=False)
        return self._public(entry)

    def reference_sets(self) -> dict[str, Any]:
        with self._sets_lock:
            return {"reference_sets": [self._public(e) for e in self._sets.values()]}

    def delete_references(self, rid: str) -> None:
        with self._sets_lock:
            if self._sets.pop(rid, None) is None:
                raise ServiceError(f"reference set '{rid}' not found", 404)

    @staticmethod
    def _public(e: dict[str, Any]) -> dict[str, Any]:
        return {k: e[k] for k in ("id", "name", "count", "files")}

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
            with self._sets_lock:
                e = self._sets.get(reference_set)
                if e is None:
                    raise ServiceError(f"reference set '{reference_set}' not found; register it with POST /v1/references", 404)
                self._sets.move_to_end(reference_set)
                return list(zip(e["files"], e["data"], strict=True))
        return self._check_refs(uploads)

    def _query(self, upload: Upload) -> Image.Image:
        check_header(upload, self.config.max_pixels)
        try:
            return load_image(upload[1], name=upload[0], max_pixels=self.config.max_pixels)
        except ImageError as exc:
            raise ServiceError(str(exc)) from None

    # ------------------------------------------------------------------ model calls
    def inspect(
        self, query: Upload, references: list[Upload], reference_set: str | None = None,
        *, threshold: float | None = None, heatmap: bool = False, preview: bool = False,
    ) -> dict[str, Any]:
        qimg = self._query(query)
        refs = self._references(references, reference_set)
        # Reference bytes go to the model as they are: its cache knows them by content.
        with self._model_lock:
            self.requests += 1
            try:
                r = self.copilot.inspect(qimg, [d for _, d in refs], threshold=threshold)
            except ImageError as exc:
                raise ServiceError(self._name_refs(str(exc), refs)) from None
        r.query = query[0]
        r.references = [n for n, _ in refs]
        out = r.to_dict()
        out["reference_set"] = reference_set
        if heatmap and r.anomaly_map is not None:
            out["heatmap"] = heatmap_png(r.anomaly_map, r.threshold, self.config.heatmap_max_side)
        if preview:  # for clients that cannot show the format (a browser and a TIFF)
            out["preview"] = jpeg_preview(qimg, self.config.heatmap_max_side * 2)
        return out

    def ask(
        self, query: Upload, references: list[Upload], reference_set: str | None, question: str,
        history: str | None = None,
    ) -> dict[str, Any]:
        cp = self.copilot
        question = (question or "").strip()
        if not question:
            raise ServiceError("the question is empty")
        if len(question) > self.config.max_question_chars:
            raise ServiceError(f"the question is too long ({len(question)} characters, limit {self.config.max_question_chars})")
        turns = self._history(history)
        if not hasattr(cp, "ask"):
            raise ServiceError(f"model '{cp.model_name}' cannot answer questions (no language model)", 501)
        qimg = self._query(query)
        refs = self._references(references, reference_set)
        with self._model_lock:
            self.requests += 1
            try:
                answer = cp.ask(qimg, [d for _, d in refs], question, history=turns)
            except ImageError as exc:
                raise ServiceError(self._name_refs(str(exc), refs)) from None
            except AdcopilotError as exc:
                # Without a language model, the model says so: that is "not implemented here".
                raise ServiceError(str(exc), 501 if getattr(cp, "language", None) is None else 422) from None
        return {"answer": answer, "model": cp.model_name, "question": question}

    @staticmethod
    def _history(history: str | None) -> list[dict[str, str]] | None:
        if not history:
            return None
        try:
            turns = json.loads(history)
        except json.JSONDecodeError as exc:
            raise ServiceError(f"history: malformed JSON ({exc.msg})") from None
        ok = isinstance(turns, list) and all(
            isinstance(t, dict) and t.get("role") in ("user", "assistant") and isinstance(t.get("content"), str)
            for t in turns
        )
        if not ok:
            raise ServiceError('history: expected a list of {"role": "user"|"assistant", "content": "..."}')
        return turns

    @staticmethod
    def _name_refs(message: str, refs: list[Upload]) -> str:
        # The model names references by position; say which upload it was.
        for i, (n, _) in enumerate(refs):
            message = message.replace(f"reference {i + 1}:", f"{n}:")
        return message
