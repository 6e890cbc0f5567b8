"""Inference with the full-scale model: text generation, and a copilot that answers in text.

:class:`FullModel` holds a loaded model and processor and turns images + a prompt into an
answer (greedy decoding with the KV cache, the release's settings: images thumbnailed to 512
pixels, 64x28x28 to 1280x28x28 pixels through the ViT). :class:`FullCopilot` makes it an
Inspector, Answerer and Localizer (:mod:`adcopilot.protocols`) for ``inspect``, ``chat``, ``serve``
and the batch tools:

- ``inspect`` asks the authors' own yes/no question ("Is there any anomaly in the second image?
  A. Yes B. No. Please answer the letter only."): A gives ``anomalous`` (score 1.0), B ``normal``
  (score 0.0), anything else ``unknown`` with the model's words in ``raw_answer``. When anomalous,
  a second turn asks for the defects' boxes in Qwen2.5-VL's JSON (``bbox_2d``), mapped from the
  frame the model saw back to the query's pixels;
- ``ask`` / ``chat`` answer a question about the pair, with the earlier turns as history;
- every answer is read after the reasoning of a Thinking model (``<think>...</think>``, see
  :mod:`adcopilot.reasoning`); ``generate`` follows the checkpoint's ``generation_config.json``
  (end tokens, repetition penalty) with greedy decoding;
- ``analyze`` (the anomaly-map path the batch tools use) rasterises those boxes into a map.

Usage::

    fm = FullModel.load("ckpt/", device="cuda", dtype="bfloat16")
    fm.generate(["good.png", "query.png"], "Is there any defect in the query object?")
    cp = FullCopilot(fm)
    r = cp.inspect("query.png", ["good.png"]); r.boxes
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import LogitsProcessorList

from adcopilot.errors import AdcopilotError
from adcopilot.full.loading import load_full_model, load_processor
from adcopilot.full.processing_adcopilot import format_chat
from adcopilot.imaging import ImageInput, load_image, load_thumbnail
from adcopilot.inputs import as_references, reference_names, source_name
from adcopilot.model.box_text import bbox_prompt, parse_box_text
from adcopilot.model.detector import Detector
from adcopilot.protocols import References, Turns
from adcopilot.reasoning import THINK_CLOSE, THINK_OPEN, final_answer
from adcopilot.registration import Registration
from adcopilot.results import Analysis, Box, InspectionResult, describe_findings

log = logging.getLogger(__name__)

#: The release's inference settings.
MAX_IMAGE_SIZE = 512
MIN_PIXELS = 64 * 28 * 28
MAX_PIXELS = 1280 * 28 * 28


def comparison_preamble(n_refs: int) -> str:
    """AD-Copilot's wording that says which images are the normal references and which the query."""
    if n_refs == 1:
        return "The first image is a normal sample. The second image is the query sample."
    return f"The first {n_refs} images are normal samples. The last image is the query sample."


def anomaly_question(n_refs: int) -> str:
    """The authors' yes/no question (their inference script's default prompt), for ``n_refs`` references."""
    if n_refs == 1:
        intro, query = "The first image is a normal sample.", "the second image"
    else:
        intro, query = f"The first {n_refs} images are normal samples.", "the last image"
    return f"{intro} Is there any anomaly in {query}? A. Yes B. No. Please answer the letter only."


_YES_NO = re.compile(r"^\W*(?:(A|B)\b|(yes|no)\b)", re.I)


def read_verdict(answer: str) -> str:
    """``anomalous`` for A / Yes, ``normal`` for B / No (at the answer's start), else ``unknown``."""
    m = _YES_NO.match(answer)
    if not m:
        return "unknown"
    word = (m.group(1) or m.group(2)).lower()
    return "anomalous" if word in ("a", "yes") else "normal"


def image_name(src: ImageInput, index: int) -> str:
    """How errors name an image: its path, else its place in the list."""
    return source_name(src, f"image {index + 1}")


class FullModel:
    """A loaded full-scale model and its processor: images + prompt -> text."""

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        max_new_tokens: int = 256,
        max_image_size: int | None = MAX_IMAGE_SIZE,
        name: str = "full",
        logits_processor: Sequence[Any] | None = None,
    ) -> None:
        self.model = model
        self.processor = processor
        # Constrained decoding: transformers LogitsProcessors applied at every generated token.
        self.logits_processor = list(logits_processor or [])
        self.max_new_tokens = max_new_tokens
        self.max_image_size = max_image_size
        self.name = name

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        device: str = "auto",
        dtype: str = "auto",
        attn_implementation: str | None = None,
        min_pixels: int = MIN_PIXELS,
        max_pixels: int = MAX_PIXELS,
        **kwargs: Any,
    ) -> FullModel:
        """Load a checkpoint folder (see :func:`adcopilot.full.loading.load_full_model`)."""
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        model = load_full_model(path, device=device, dtype=dtype, attn_implementation=attn_implementation)
        processor = load_processor(path, min_pixels=min_pixels, max_pixels=max_pixels, config=model.config)
        gen_file = Path(path) / "generation_config.json"
        if "max_new_tokens" not in kwargs and gen_file.is_file():
            # A checkpoint's own generation settings give the default answer length.
            try:
                limit = json.loads(gen_file.read_text()).get("max_new_tokens")
            except json.JSONDecodeError as exc:
                raise AdcopilotError(f"{gen_file}: malformed JSON ({exc.msg})") from None
            if isinstance(limit, int) and limit > 0:
                kwargs["max_new_tokens"] = limit
        return cls(model, processor, name=os.path.basename(os.path.normpath(str(path))) or "full", **kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def prepare(self, images: Sequence[ImageInput], turns: Sequence[dict[str, str]]) -> dict[str, torch.Tensor]:
        """Model inputs for ``images`` (references first, query last) and a conversation ending with a user turn."""
        pics = [load_thumbnail(src, self.max_image_size, name=image_name(src, i)) for i, src in enumerate(images)]
        text = format_chat(list(turns), len(pics))
        inputs = self.processor(images=pics or None, text=[text], return_tensors="pt")
        return {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in inputs.items()}

    def generate(
        self,
        images: Sequence[ImageInput],
        prompt: str,
        *,
        history: Sequence[dict[str, str]] | None = None,
        max_new_tokens: int | None = None,
    ) -> str:
        """Greedy answer to ``prompt`` about ``images`` (after the ``history`` turns, if any), read
        after any reasoning."""
        text, _ = self.generate_raw(images, prompt, history=history, max_new_tokens=max_new_tokens)
        return final_answer(text)

    def generate_raw(
        self,
        images: Sequence[ImageInput],
        prompt: str,
        *,
        history: Sequence[dict[str, str]] | None = None,
        max_new_tokens: int | None = None,
    ) -> tuple[str, tuple[int, int] | None]:
        """The whole reply (reasoning included) and the (w, h) of the query as the model saw it
        (its box coordinates' frame)."""
        turns = [*(history or []), {"role": "user", "content": prompt}]
        inputs = self.prepare(images, turns)
        with torch.inference_mode():
            extra: dict[str, Any] = {}
            if self.logits_processor:
                extra["logits_processor"] = LogitsProcessorList(self.logits_processor)
            out = self.model.generate(
                **inputs, max_new_tokens=max_new_tokens or self.max_new_tokens, do_sample=False, **extra
            )
        new = out[0, inputs["input_ids"].shape[1]:]
        reply = self.processor.tokenizer.decode(new, skip_special_tokens=True).strip()
        frame = None
        grid = inputs.get("image_grid_thw")
        if grid is not None and len(grid):
            patch = int(getattr(self.processor.image_processor, "patch_size", 14))
            _, gh, gw = (int(v) for v in grid[-1])
            frame = (gw * patch, gh * patch)
        return reply, frame


def option_letter(answer: str, options: dict[str, str]) -> str | None:
    """The first standalone capital letter of ``answer`` that is a key of ``options``, else None."""
    for m in re.finditer(r"\b([A-Z])\b", answer):
        if m.group(1) in options:
            return m.group(1)
    return None


_LABEL = re.compile(r'"label"\s*:\s*"([^"]*)"')


def parse_labelled_boxes(
    text: str, size: tuple[int, int], frame: tuple[int, int] | None
) -> list[tuple[list[int], str]] | None:
    """Boxes of a ``[{"bbox_2d": [...], "label": ...}]`` answer in query pixels, with labels.

    ``frame``: the (w, h) the coordinates refer to (the resized query); None if unparsable."""
    raw = parse_box_text(text)
    if raw is None:
        return None
    labels = _LABEL.findall(text)
    w, h = size
    fw, fh = frame or size
    out = []
    for i, (x1, y1, x2, y2) in enumerate(raw):
        xa, xb = sorted((x1 * w / fw, x2 * w / fw))
        ya, yb = sorted((y1 * h / fh, y2 * h / fh))
        box = [int(round(min(max(v, 0), lim))) for v, lim in ((xa, w), (ya, h), (xb, w), (yb, h))]
        if box[2] > box[0] and box[3] > box[1]:
            out.append((box, labels[i] if i < len(labels) and labels[i].strip() else "defect"))
    return out


class FullDetector(Detector):
    """The :class:`Detector` view of a full model, for the anomaly-map tools (batch, calibrate).

    Its map is the model's boxes, rasterised (1 inside a box, 0 elsewhere), and its score the
    map's maximum: the model gives no graded score, so a threshold between 0 and 1 is all there is."""

    name = "full"
    image_size = 448
    threshold = 0.5

    def __init__(self, full: FullModel) -> None:
        self.full = full

    def encode_reference(self, image: np.ndarray) -> np.ndarray:
        return image

    def _boxes(self, query: np.ndarray, references: list[np.ndarray]) -> list[tuple[list[int], str]]:
        imgs = [(np.clip(a, 0, 1) * 255).astype(np.uint8) for a in [*references, query]]
        reply, frame = self.full.generate_raw(imgs, bbox_prompt(len(references)))
        h, w = query.shape[:2]
        return parse_labelled_boxes(final_answer(reply), (w, h), frame) or []

    def anomaly_map(self, query: np.ndarray, references: list[Any]) -> np.ndarray:
        amap = np.zeros(query.shape[:2], dtype=np.float32)
        for (x1, y1, x2, y2), _ in self._boxes(query, references):
            amap[y1:y2, x1:x2] = 1.0
        return amap

    def detect(self, query: np.ndarray, references: list[Any]) -> tuple[np.ndarray, float]:
        amap = self.anomaly_map(query, references)
        return amap, float(amap.max())


class FullCopilot:
    """The full-scale copilot: boxes, verdict and answers in text.

    An Inspector, Answerer and Localizer (:mod:`adcopilot.protocols`); it answers every question
    itself, so it takes no grounding options. ``detector`` is its anomaly-map view for the batch
    and calibration tools."""

    registration = False  # the model compares the images itself
    calibration: dict[str, Any] | None = None

    def __init__(self, full: FullModel, *, threshold: float | None = None, model_name: str | None = None) -> None:
        self.full = full
        self.detector = FullDetector(full)
        self.threshold = float(threshold if threshold is not None else self.detector.threshold)
        self.fixed_threshold = threshold is not None
        self.model_name = model_name or full.name

    def threshold_with(self, references: int) -> float:
        """The threshold with this many references: one for all."""
        return self.threshold

    @classmethod
    def load(  # type: ignore[override]
        cls, model: str | os.PathLike, *, threshold: float | None = None, **kwargs: Any
    ) -> FullCopilot:
        return cls(FullModel.load(model, **kwargs), threshold=threshold)

    def inspect(
        self, query: ImageInput, references: ImageInput | Sequence[ImageInput], *, threshold: float | None = None
    ) -> InspectionResult:
        """The verdict from the authors' yes/no question; when anomalous, boxes from a second turn.

        An answer that is neither A/Yes nor B/No gives verdict ``unknown`` (never ``normal``), with
        the model's words in ``raw_answer``; an anomalous verdict whose boxes cannot be read keeps
        its verdict, with no boxes and the box answer in ``raw_answer``."""
        refs = as_references(references)
        thr = float(threshold if threshold is not None else self.threshold)
        t0 = time.perf_counter()
        qname = source_name(query, "query")
        w, h = load_image(query, name=qname).size
        images = [*refs, query]
        question = anomaly_question(len(refs))
        raw, _ = self.full.generate_raw(images, question)
        answer = final_answer(raw)
        verdict = read_verdict(answer)
        boxes: list[Box] = []
        raw_answer = raw if verdict == "unknown" else None
        if verdict == "anomalous":
            history = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
            box_raw, frame = self.full.generate_raw(images, bbox_prompt(len(refs)), history=history)
            found = parse_labelled_boxes(final_answer(box_raw), (w, h), frame)
            if found is None:
                log.warning("the model's box answer has no boxes to read: %r", box_raw[:200])
                raw_answer = box_raw
            boxes = [Box(bbox_2d=b, label=label, score=1.0) for b, label in found or []]
        score = 1.0 if verdict == "anomalous" else 0.0
        amap = np.zeros((h, w), dtype=np.float32)
        for b in boxes:
            x1, y1, x2, y2 = b.bbox_2d
            amap[y1:y2, x1:x2] = 1.0
        if verdict == "unknown":
            description = "No verdict: the model's answer to the yes/no question could not be read."
        else:
            description = describe_findings(verdict == "anomalous", boxes, w, h)
        return InspectionResult(
            query=qname,
            references=reference_names(refs),
            verdict=verdict,  # type: ignore[arg-type]
            score=score,
            threshold=thr,
            boxes=boxes,
            description=description,
            model=self.model_name,
            image_size=(w, h),
            registration=Registration().to_dict(),
            timings_ms={"total": (time.perf_counter() - t0) * 1e3},
            raw_answer=raw_answer,
            anomaly_map=amap,
        )

    def analyze(self, query: ImageInput, references: ImageInput | Sequence[ImageInput]) -> Analysis:
        r = self.inspect(query, references)
        return Analysis(r.anomaly_map, r.score, r.image_size, Registration(), r.timings_ms)

    def preload_language(self) -> None:
        """Nothing to preload: the model that inspects also answers."""

    def ask(
        self, query: ImageInput, references: References, question: str, history: Turns | None = None,
        *, result: InspectionResult | None = None, max_new_tokens: int | None = None,
    ) -> str:
        """The model's answer to ``question`` about the pair (after the ``history`` turns), read
        after any reasoning.

        The first turn opens with AD-Copilot's wording saying which image is the reference and
        which the query; ``result`` is accepted for interface compatibility and not needed."""
        return final_answer(self.ask_raw(query, references, question, history, max_new_tokens))

    def ask_raw(
        self, query: ImageInput, references: References, question: str, history: Turns | None = None,
        max_new_tokens: int | None = None,
    ) -> str:
        """:meth:`ask`'s whole reply, reasoning included."""
        if not question or not question.strip():
            raise AdcopilotError("the question is empty")
        refs = as_references(references)
        prompt = question.strip() if history else f"{comparison_preamble(len(refs))} {question.strip()}"
        return self.full.generate_raw([*refs, query], prompt, history=history, max_new_tokens=max_new_tokens)[0]

    def chat(
        self,
        query: ImageInput,
        references: ImageInput | Sequence[ImageInput],
        question: str,
        history: list[dict[str, str]] | None = None,
    ) -> tuple[str, list[dict[str, str]]]:
        """One turn of a conversation: the answer and the history including this turn."""
        history = list(history or [])
        answer = self.ask(query, references, question, history=history)
        prompt = question.strip()
        if not history:
            prompt = f"{comparison_preamble(len(as_references(references)))} {prompt}"
        return answer, [*history, {"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]

    def answer_choice(
        self, query: ImageInput, references: References, question: str, options: dict[str, str],
        *,
        result: InspectionResult | None = None,
    ) -> str:
        """The letter of the option the model names (MMAD's wording), or "" when its answer names none;
        ``result`` is accepted for interface compatibility and not needed.

        Read after any reasoning: the first standalone capital letter that is an option's key."""
        if not options:
            raise AdcopilotError("a multiple-choice question needs options")
        listed = "\n".join(f"{k}: {v}" for k, v in options.items())
        prompt = f"{question.strip()}\n{listed}\nAnswer with the option's letter from the given choices directly."
        raw = self.ask_raw(query, references, prompt, max_new_tokens=8)
        if THINK_OPEN in raw and THINK_CLOSE not in raw:  # a reasoning model: let it finish its reasoning
            raw = self.ask_raw(query, references, prompt)
        reply = final_answer(raw)
        letter = option_letter(reply, options)
        if letter is None:
            log.warning("the model's answer names no option of %s: %r", sorted(options), reply[:200])
            return ""
        return letter

    def localize(
        self,
        query: ImageInput,
        references: ImageInput | Sequence[ImageInput],
        *,
        result: InspectionResult | None = None,
    ) -> list[dict]:
        """Labelled defect boxes ``[{"bbox_2d", "label", "score"}]`` in query pixels, from the model's answer."""
        r = result or self.inspect(query, references)
        return [b.to_dict() for b in r.boxes]
