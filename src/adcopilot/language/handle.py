"""The language model behind ``Copilot.ask`` / ``answer_choice`` / ``chat``, loaded on first use.

``Copilot.load()`` only notes where a checkpoint's ``language/`` folder is (fast); the language
model (about 3 s) is read the first time a question is asked. Visual inputs of the last few
(query, references) pairs are cached, so a conversation about one pair computes them once.

Usage::

    lang = NanoLanguage(Path("checkpoints/nano/language"), detector)   # nothing loaded yet
    lang.model                                                         # NanoCopilot, loaded now
    v = lang.visual("query.png", ["good.png"])
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from adcopilot.imaging import ImageInput
from adcopilot.language.visual import VisualEncoder, VisualInputs

log = logging.getLogger(__name__)


def _pair_key(query: ImageInput, refs: Sequence[ImageInput], size: int) -> str | None:
    from adcopilot.api import _cache_key

    keys = [_cache_key(x, size) for x in [query, *refs]]
    return None if any(k is None for k in keys) else "|".join(keys)  # type: ignore[arg-type]


class NanoLanguage:
    """A nano checkpoint's language model (lazy) and the visual encoder feeding it."""

    def __init__(
        self,
        folder: str | os.PathLike | None = None,
        detector: Any = None,
        *,
        model: Any = None,
        encoder: VisualEncoder | None = None,
        registration: bool = True,
    ) -> None:
        if folder is None and model is None:
            raise ValueError("give a language checkpoint folder or a loaded model")
        self.folder = Path(folder) if folder is not None else None
        self._model = model
        self._detector = detector
        self._encoder = encoder
        self._registration = registration
        self._visual: OrderedDict[str, VisualInputs] = OrderedDict()
        self._prefixes: dict[str, Any] = {}  # pair key -> cache of the prompt up to the image tokens
        self._prior: Any = None
        self._lock = threading.Lock()

    @property
    def model(self) -> Any:
        """The :class:`~adcopilot.language.model.NanoCopilot`, loaded on first access."""
        with self._lock:
            if self._model is None:
                from adcopilot.language.model import NanoCopilot

                t0 = time.perf_counter()
                assert self.folder is not None
                self._model = NanoCopilot.load(self.folder)
                self._model.merge_adapters()  # answering only: same answers, faster
                log.info("language model loaded from %s in %.1f s", self.folder, time.perf_counter() - t0)
            return self._model

    def preload(self) -> None:
        """Start loading the language model in a background thread (overlaps with inspection)."""
        if self._model is None and self.folder is not None:
            threading.Thread(target=self._preload, daemon=True, name="adcopilot-llm-load").start()

    def _preload(self) -> None:
        try:
            self.model  # noqa: B018 - loads it
        except Exception as exc:  # reported again, with its message, when the model is used
            log.debug("background load of the language model failed: %s", exc)

    @property
    def encoder(self) -> VisualEncoder:
        if self._encoder is None:
            if self._detector is None:
                raise ValueError("no detector to encode images with")
            detector = self._detector
            # The comparison model the language model was trained with, when the checkpoint
            # keeps its own copy (the detector may since have been retrained or adapted).
            own = self.folder / "comparison" if self.folder is not None else None
            if own is not None and (own / "config.json").exists():
                from adcopilot.model.nano import NanoComparisonModel, NanoDetector

                detector = NanoDetector(NanoComparisonModel.load(own), getattr(detector, "tower", None))
            self._encoder = VisualEncoder(detector, registration=self._registration)
        return self._encoder

    def _rescore(self, threshold: float | None) -> float | None:
        """The verdict threshold to map onto the detector line's, or None when no mapping is needed."""
        cfg = self.model.cfg
        if threshold is None or not cfg.evidence or abs(float(threshold) - cfg.evidence_threshold) < 1e-9:
            return None
        return float(threshold)

    def visual(
        self, query: ImageInput, references: Sequence[ImageInput], threshold: float | None = None
    ) -> VisualInputs | None:
        """Visual inputs of the pair (None for a text-only model), cached per pair of files.

        ``threshold``: the verdict threshold in use (``inspect``'s); the image score the language
        model reads is mapped so that this threshold lands on its detector line's
        (:meth:`VisualInputs.rescored`), so its verdict agrees with ``inspect``'s."""
        if not self.model.cfg.use_images:
            return None
        key = _pair_key(query, references, self.encoder.size)
        if key is not None and key in self._visual:
            self._visual.move_to_end(key)
            v = self._visual[key]
        else:
            v = self.encoder.encode(query, list(references))
            if key is not None:
                self._visual[key] = v
                while len(self._visual) > 8:
                    old, _ = self._visual.popitem(last=False)
                    for k in [k for k in self._prefixes if k.startswith(old)]:
                        self._prefixes.pop(k, None)
        t = self._rescore(threshold)
        return v if t is None else v.rescored(t, self.model.cfg.evidence_threshold)

    def prior(self) -> Any:
        """The :class:`adcopilot.language.answer.Prior`: option scores given a content-free pair
        (two flat grey images), for calibrated multiple-choice answers."""
        if self._prior is None:
            import numpy as np

            from adcopilot.language.answer import Prior

            visual = None
            if self.model.cfg.use_images:
                grey = np.full((self.encoder.size, self.encoder.size, 3), 128, np.uint8)
                visual = self.encoder.encode(grey, [grey])
            self._prior = Prior(visual)
        return self._prior

    def prefix(
        self, query: ImageInput, references: Sequence[ImageInput], threshold: float | None = None
    ) -> tuple[dict[str, Any], str] | None:
        """(store, key) for reusing the prompt prefix of this pair (at this verdict threshold)
        across questions (None: no reuse)."""
        key = _pair_key(query, references, self.encoder.size)
        if key is None or not self.model.cfg.use_images:
            return None
        t = self._rescore(threshold)
        return (self._prefixes, key if t is None else f"{key}@{t:.6g}")


# --------------------------------------------------------------------------- Copilot methods
_BOX_REQUEST = None


def is_box_request(question: str) -> bool:
    """Whether a question asks for defect boxes (answered with ``bbox_2d`` JSON)."""
    import re

    global _BOX_REQUEST
    if _BOX_REQUEST is None:
        _BOX_REQUEST = re.compile(r"\b(bbox(_2d)?|bounding[ -]box(es)?|boxes)\b", re.IGNORECASE)
    return bool(_BOX_REQUEST.search(question))


def localize(
    copilot: Any, lang: NanoLanguage, query: ImageInput, refs: list[ImageInput], *, mode: str = "head",
    result: Any = None,
) -> list[dict[str, Any]]:
    """Defect boxes in query pixels with labels: ``head`` = the dense head's boxes labelled by the
    language model (``result`` reused when given, its boxes relabelled), ``text`` = boxes the
    language model writes itself."""
    from adcopilot.errors import AdcopilotError
    from adcopilot.imaging import load_image
    from adcopilot.language import answer as A

    if mode == "text":
        from adcopilot.api import _source_name

        size = load_image(query, name=_source_name(query, "query")).size
        t = copilot.threshold
        _, boxes = A.text_boxes(lang.model, lang.visual(query, refs, t), size, lang.encoder.size,
                                prefix=lang.prefix(query, refs, t))
        return boxes
    if mode != "head":
        raise AdcopilotError(f"unknown box mode {mode!r}; use 'head' or 'text'")
    r = result if result is not None else copilot.inspect(query, refs)
    if not r.boxes:
        return []
    labels = A.label_boxes(lang.model, lang.visual(query, refs, r.threshold), [b.bbox_2d for b in r.boxes],
                           r.image_size, prefix=lang.prefix(query, refs, r.threshold))
    for b, label in zip(r.boxes, labels, strict=True):
        b.label = label
    return [b.to_dict() for b in r.boxes]


def ask_stream(
    copilot: Any, lang: NanoLanguage, query: ImageInput, refs: list[ImageInput], question: str,
    history: Sequence[dict[str, str]] | None = None, result: Any = None, max_new_tokens: int = 64,
    grounded: bool = True,
) -> Iterator[str]:
    """The answer to ``question`` after ``history`` as the language model writes it, one piece of
    text per token (:func:`adcopilot.language.answer.text_pieces`); a box request is answered with
    boxes as JSON, in one piece. ``grounded``: a yes/no defect
    question's answer starts with the inspection's verdict (:func:`adcopilot.grounding.grounded_start`)."""
    import json

    from adcopilot.errors import AdcopilotError
    from adcopilot.language import answer as A

    q = (question or "").strip()
    if not q:
        raise AdcopilotError("the question is empty")
    for t in history or []:
        if not isinstance(t, dict) or t.get("role") not in ("user", "assistant") or not isinstance(t.get("content"), str):
            raise AdcopilotError("history: each turn must be {'role': 'user' | 'assistant', 'content': str}")
    if is_box_request(q):
        yield json.dumps(localize(copilot, lang, query, refs, result=result))
        return
    turns = [*(history or []), {"role": "user", "content": q}]
    from adcopilot.grounding import grounded_start, verdict_question

    start, t = "", (result.threshold if result is not None else copilot.threshold)
    if grounded and verdict_question(q):
        start = grounded_start(result if result is not None else copilot.inspect(query, refs), q)
    if not grounded:
        t = None  # the language model's own reading, at the threshold it was trained with
    # After the verdict, the model goes on explaining; it may not open with a second yes/no.
    ban = sorted({lang.model._ids(w)[0] for w in (" Yes", " No", " yes", " no", "Yes", "No")}) if start else []
    yield from A.generate_stream(lang.model, lang.visual(query, refs, t), turns, max_new_tokens=max_new_tokens,
                                 prefix=lang.prefix(query, refs, t), start=start, ban_after_start=ban)


def ask(
    copilot: Any, lang: NanoLanguage, query: ImageInput, refs: list[ImageInput], question: str,
    history: Sequence[dict[str, str]] | None, result: Any, max_new_tokens: int, grounded: bool = True,
) -> str:
    """The whole answer of :func:`ask_stream`."""
    return "".join(ask_stream(copilot, lang, query, refs, question, history, result, max_new_tokens, grounded))
