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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from adcopilot.imaging import ImageInput
from adcopilot.inputs import pair_key
from adcopilot.language.answer import Prior
from adcopilot.language.model import NanoCopilot
from adcopilot.language.visual import VisualEncoder, VisualInputs
from adcopilot.model.nano import NanoComparisonModel

log = logging.getLogger(__name__)


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
        self.deblock = True  # set by the copilot it answers for (``Copilot.deblock``, ``Copilot.refocus``)
        self.refocus = False
        self._visual: OrderedDict[str, VisualInputs] = OrderedDict()
        self._prefixes: dict[str, Any] = {}  # pair key -> cache of the prompt up to the image tokens
        self._prior: Any = None
        self._lock = threading.Lock()

    @property
    def model(self) -> Any:
        """The :class:`~adcopilot.language.model.NanoCopilot`, loaded on first access."""
        with self._lock:
            if self._model is None:
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
            # The comparison tokens come from the comparison model the language model was trained
            # with, when the checkpoint keeps its own copy (the detector may since have been
            # retrained or adapted); map, distance and score always come from the detector, so the
            # language model reads what ``inspect`` reports.
            own = self.folder / "comparison" if self.folder is not None else None
            comparison = NanoComparisonModel.load(own) if own is not None and (own / "config.json").exists() else None
            self._encoder = VisualEncoder(self._detector, registration=self._registration, comparison=comparison)
        self._encoder.deblock, self._encoder.refocus = self.deblock, self.refocus
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
        key = pair_key(query, references, self.encoder.size)
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
        key = pair_key(query, references, self.encoder.size)
        if key is None or not self.model.cfg.use_images:
            return None
        t = self._rescore(threshold)
        return (self._prefixes, key if t is None else f"{key}@{t:.6g}")
