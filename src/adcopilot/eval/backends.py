"""Evaluation backends: one interface for our models, local Qwen2.5-VL checkpoints and chat endpoints.

Every backend answers one MMAD question at a time from the normal references and the query
(``images = [*references, query]``) and returns the raw reply text, which the scorer parses:

========================  ==========================================================================
``nano``                   the trained AD-Copilot-nano checkpoint (``Copilot.load("default")`` or a
                           folder); with a language model (``answer_choice``) it answers every
                           question, else it answers Anomaly Detection from the verdict and Defect
                           Localization from the top box's grid cell, and gives an empty reply to
                           the other sub-tasks (scored as the chosen scoring mode says)
``baseline``               the same rules with the training-free nearest-patch detector
``transformers``           a local Qwen2.5-VL-family checkpoint folder (AD-Copilot-style ones,
                           model_type ``ad_copilot``/``yangjian``, through ``adcopilot.full``),
                           the benchmark's prompt, greedy decoding, 128 new tokens, CPU or CUDA
``openai``                 any OpenAI-compatible chat endpoint taking images (e.g. a vLLM server of
                           Qwen2.5-VL): ``ADCOPILOT_OPENAI_BASE_URL``, ``ADCOPILOT_OPENAI_API_KEY``,
                           ``ADCOPILOT_OPENAI_MODEL`` (or ``model=``); the request of the
                           benchmark's Qwen2.5-VL script (``protocol="qwen"``) or of its GPT-4o
                           script (``"gpt4o"``), see :mod:`adcopilot.eval.openai_protocols`;
                           images as base64 data URLs; retries with exponential back-off; at
                           most ``concurrency`` requests in flight
========================  ==========================================================================

For MMAD-BBox, :meth:`Backend.boxes` returns the reply to the localization prompt
(:func:`adcopilot.eval.bbox.bbox_prompt`) and the frame its coordinates refer to.

Usage::

    backend = make_backend("baseline")
    reply = backend.answer([ref_path, query_path], question)     # e.g. "A"
    box = backend.boxes([ref_path, query_path])                   # BoxAnswer(text='[{"bbox_2d": ...}]')
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import platform
import random
import threading
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adcopilot.api import AnsweringCopilot, Copilot
from adcopilot.errors import AdcopilotError
from adcopilot.eval.bbox import BoxCoords, bbox_prompt
from adcopilot.eval.mmad import PromptPart, Question, official_prompt
from adcopilot.eval.openai_protocols import gpt4o_text, is_refusal, smart_resize
from adcopilot.eval.openai_protocols import protocol as get_protocol
from adcopilot.eval.qwen_inputs import ProcessorInputs, QwenInputs
from adcopilot.grounding import (  # noqa: F401 - re-exported: the backends' answer rules
    option_cells,
    pick_region_option,
    predicted_cells,
    question_kind,
    yes_means_defect,
    yes_no_letters,
)
from adcopilot.imaging import load_thumbnail
from adcopilot.language.answer import PRIOR_WEIGHT
from adcopilot.model.checkpoint_kind import DEFAULT_CHECKPOINT, kind_of_config, read_config_json
from adcopilot.protocols import Answerer, Inspector, Localizer
from adcopilot.reasoning import final_answer

log = logging.getLogger(__name__)

AD = "Anomaly Detection"
DL = "Defect Localization"


@dataclass
class BoxAnswer:
    """A localization reply and the coordinate frame of its numbers."""

    text: str
    coords: BoxCoords = "pixel"
    frame: tuple[int, int] | None = None  # (w, h) the pixel coordinates refer to; None = the query


class Backend(ABC):
    """Answers MMAD questions about ``[*references, query]``."""

    name: str = "backend"
    #: How many questions may be asked at once (the runner's thread count).
    concurrency: int = 1
    supports_boxes: bool = False
    #: Whether every question needs at least one normal reference (a comparison model cannot answer 0-shot).
    needs_references: bool = False

    @abstractmethod
    def answer(self, images: Sequence[str | os.PathLike], question: Question) -> str:
        """The raw reply to one multiple-choice question (the query is the last image)."""

    def answer_in_conversation(
        self, images: Sequence[str | os.PathLike], question: Question, earlier: Sequence[Question]
    ) -> str:
        """The reply to ``question`` asked after ``earlier`` (the image's questions before it, in
        the file's order). A protocol that asks them turn by turn uses them; by default each
        question is asked alone."""
        return self.answer(images, question)

    def boxes(self, images: Sequence[str | os.PathLike]) -> BoxAnswer:
        """The reply to the localization prompt (MMAD-BBox)."""
        raise AdcopilotError(f"backend '{self.name}' does not answer with boxes")

    def describe(self) -> dict[str, Any]:
        """Backend name and configuration, recorded with every run."""
        return {"name": self.name}


# --------------------------------------------------------------------------- nano / baseline
class CopilotBackend(Backend):
    """Our models through :class:`adcopilot.Copilot` (``nano`` or ``baseline``).

    With a language model, ``grounded`` (default) answers defect yes/no and defect-location
    questions from the detector and defect-type questions from the type head
    (:mod:`adcopilot.grounding`), and the rest with the language model;
    ``grounded=False`` asks the language model everything; ``prior_weight`` calibrates its option
    scores against a content-free pair (None: the default); ``knowledge`` adds knowledge files
    (YAML, or MMAD's ``domain_knowledge.json``) to those description and analysis questions are
    matched against. MMAD-BBox with a language model: grounded, both box modes give the dense
    head's boxes labelled by the type head; with ``grounded=False``, ``box_mode="head"`` labels
    them by the language model's words, ``"text"`` gives the boxes the language model writes."""

    supports_boxes = True
    needs_references = True

    def __init__(self, name: str, model: str | os.PathLike = "default", copilot: Inspector | None = None,
                 threshold: float | None = None, box_mode: str = "head", grounded: bool = True,
                 prior_weight: float | None = None, knowledge: Sequence[str | os.PathLike] = ()) -> None:
        self.name = name
        self.model = str(model)
        self.box_mode = box_mode
        self.grounded = grounded
        self.prior_weight = prior_weight
        self.copilot = copilot if copilot is not None else Copilot.load(model, threshold=threshold)
        self.knowledge = [os.fspath(k) for k in knowledge]
        if self.knowledge:
            if not isinstance(self.copilot, AnsweringCopilot):
                raise AdcopilotError("--knowledge needs a model with a language model (the nano default)")
            self.copilot.use_knowledge(self.knowledge)
        self._results: OrderedDict[tuple[str, ...], Any] = OrderedDict()
        self._lock = threading.Lock()

    def inspect(self, images: Sequence[str | os.PathLike]) -> Any:
        """The inspection result of ``images`` (the last is the query), cached per image list."""
        if len(images) < 2:
            raise AdcopilotError(f"backend '{self.name}' compares with normal references: use --k-shot 1 or more")
        key = tuple(os.fspath(p) for p in images)
        with self._lock:
            if key in self._results:
                self._results.move_to_end(key)
                return self._results[key]
        result = self.copilot.inspect(images[-1], list(images[:-1]))
        with self._lock:
            self._results[key] = result
            while len(self._results) > 8:
                self._results.popitem(last=False)
        return result

    def answer(self, images: Sequence[str | os.PathLike], question: Question) -> str:
        cp = self.copilot
        args = (images[-1], list(images[:-1]), question.text, question.options)
        if isinstance(cp, AnsweringCopilot):
            # The cached inspection, when the detector answers this question.
            result = self.inspect(images) if self.grounded and question_kind(question.text, question.options) else None
            return str(cp.answer_choice(*args, grounded=self.grounded, result=result, prior_weight=self.prior_weight))
        if isinstance(cp, Answerer):  # the full-scale model answers every question itself
            return str(cp.answer_choice(*args))
        if question.subtask == AD:
            yes, no = yes_no_letters(question.options)
            if yes is None or no is None:
                return ""
            defective = self.inspect(images).is_anomalous
            return yes if defective == yes_means_defect(question.text) else no
        if question.subtask == DL:
            return pick_region_option(self.predicted_cells(images), question.options)
        return ""  # no language model: nothing to say

    def predicted_cells(self, images: Sequence[str | os.PathLike]) -> list[str]:
        """Grid cells of the two strongest boxes, or of the anomaly map's peak when none."""
        return predicted_cells(self.inspect(images))

    def boxes(self, images: Sequence[str | os.PathLike]) -> BoxAnswer:
        cp = self.copilot
        if isinstance(cp, Localizer):
            r = self.inspect(images) if self.box_mode == "head" else None
            if isinstance(cp, AnsweringCopilot):
                found = cp.localize(images[-1], list(images[:-1]), mode=self.box_mode, result=r, grounded=self.grounded)
            else:
                found = cp.localize(images[-1], list(images[:-1]), result=r)
            return BoxAnswer(json.dumps([{"bbox_2d": b["bbox_2d"], "label": b["label"]} for b in found]))
        r = self.inspect(images)
        return BoxAnswer(json.dumps([{"bbox_2d": b.bbox_2d, "label": b.label} for b in r.boxes]))

    def describe(self) -> dict[str, Any]:
        d = {"name": self.name, "model": self.copilot.model_name, "threshold": float(self.copilot.threshold)}
        d["language_model"] = isinstance(self.copilot, Answerer)
        if d["language_model"]:
            d["box_mode"] = self.box_mode
            if isinstance(self.copilot, AnsweringCopilot):
                d["answers"] = "grounded" if self.grounded else "language"
                d["prior_weight"] = PRIOR_WEIGHT if self.prior_weight is None else float(self.prior_weight)
                d["knowledge"] = list(self.knowledge)
        d["detector"] = self.copilot.detector.describe()
        return d


# --------------------------------------------------------------------------- transformers
class TransformersBackend(Backend):
    """A local Qwen2.5-VL-family checkpoint with Hugging Face transformers (no hub access)."""

    name = "transformers"
    supports_boxes = True

    def __init__(
        self,
        model_path: str | os.PathLike,
        device: str = "auto",
        dtype: str = "auto",
        max_new_tokens: int = 128,
        min_pixels: int = 64 * 28 * 28,
        max_pixels: int = 1280 * 28 * 28,
        max_image_size: int | None = None,
        seed: int = 0,
    ) -> None:
        if importlib.util.find_spec("transformers") is None:
            raise AdcopilotError("backend 'transformers' needs the transformers package: pip install transformers==5.24.0")
        path = Path(model_path)
        if not (path / "config.json").is_file():
            raise AdcopilotError(f"{path}: not a local checkpoint folder (no config.json); the transformers backend never downloads")
        import inspect

        import torch

        raw = read_config_json(path)
        model_type, kind = str(raw.get("model_type", "")), kind_of_config(raw)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        torch_dtype: Any = dtype
        if dtype != "auto":
            torch_dtype = getattr(torch, dtype, None)
            if not isinstance(torch_dtype, torch.dtype):
                raise AdcopilotError(f"unknown dtype '{dtype}'; use auto, float32, bfloat16 or float16")
        torch.manual_seed(seed)
        self.inputs: Any
        if kind == "ad-copilot":
            # AD-Copilot-style: the Comparison Encoder inside Qwen2.5-VL (adcopilot.full), whose
            # processor adds the comparison-token placeholders.
            from adcopilot.full.loading import (  # transformers: this backend only
                load_full_model,
                load_processor,
            )

            self.model = load_full_model(path, device=device, dtype=dtype)
            self.inputs = ProcessorInputs(load_processor(path, min_pixels, max_pixels, config=self.model.config))
        else:
            if model_type == "qwen2_5_vl":
                from transformers import Qwen2_5_VLForConditionalGeneration as model_cls
            elif model_type == "qwen2_vl":
                from transformers import Qwen2VLForConditionalGeneration as model_cls
            else:
                raise AdcopilotError(f"{path}: model_type '{model_type}' is not a Qwen2.5-VL-family checkpoint")
            self.model = model_cls.from_pretrained(path, dtype=torch_dtype, local_files_only=True).to(device).eval()
            self.inputs = QwenInputs(path, min_pixels, max_pixels)
        # Older transformers compute M-RoPE positions from the ids alone and take no token types.
        self._token_types = "mm_token_type_ids" in inspect.signature(self.model.forward).parameters
        self.path, self.device, self.model_type = path, device, model_type
        self.max_new_tokens, self.max_image_size = max_new_tokens, max_image_size
        self.min_pixels, self.max_pixels = min_pixels, max_pixels
        self._lock = threading.Lock()

    def _generate(self, parts: Sequence[PromptPart]) -> tuple[str, Any]:
        import torch

        loaded = [(k, load_thumbnail(v, self.max_image_size) if k == "image" else v) for k, v in parts]
        batch = self.inputs.encode(loaded, with_token_types=self._token_types)
        batch = {k: v.to(self.device) for k, v in batch.items()}
        with self._lock, torch.inference_mode():
            out = self.model.generate(**batch, max_new_tokens=self.max_new_tokens, do_sample=False)
        # A reasoning model's answer is what follows its <think>...</think>.
        reply = final_answer(self.inputs.decode(out[0, batch["input_ids"].shape[1] :]))
        return reply, batch.get("image_grid_thw")

    def answer(self, images: Sequence[str | os.PathLike], question: Question) -> str:
        return self._generate(official_prompt(images[:-1], images[-1], question))[0]

    def boxes(self, images: Sequence[str | os.PathLike]) -> BoxAnswer:
        parts: list[PromptPart] = [("image", os.fspath(p)) for p in images]
        parts.append(("text", bbox_prompt(len(images) - 1)))
        reply, grid = self._generate(parts)
        # Qwen2.5-VL answers in pixels of the image it saw: the query's resized frame.
        frame = self.inputs.frame(grid[-1]) if grid is not None and len(grid) else None
        return BoxAnswer(reply, "pixel", frame)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": str(self.path),
            "model_type": self.model_type,
            "device": self.device,
            "dtype": str(next(self.model.parameters()).dtype),
            "parameters": int(sum(p.numel() for p in self.model.parameters())),
            "max_new_tokens": self.max_new_tokens,
            "min_pixels": self.min_pixels,
            "max_pixels": self.max_pixels,
            "decoding": "greedy",
        }


# --------------------------------------------------------------------------- openai
class OpenAIBackend(Backend):
    """An OpenAI-compatible ``/chat/completions`` endpoint that accepts images.

    ``protocol`` is how the benchmark's published runs asked (:mod:`adcopilot.eval.openai_protocols`):
    ``qwen`` (the Qwen2.5-VL script) or ``gpt4o`` (the GPT-4o script). ``vision_ids`` (qwen)
    asks the server to label the images "Picture N: " in its chat template, as the Qwen script
    did (``chat_template_kwargs``, which vLLM takes; OpenAI's own API refuses it).
    """

    name = "openai"
    supports_boxes = True

    def __init__(
        self,
        model: str | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        concurrency: int = 4,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        timeout_s: float = 120.0,
        max_image_size: int | None = None,
        max_tokens: int | None = None,
        box_coords: str = "qwen",
        seed: int = 0,
        protocol: str = "qwen",
        vision_ids: bool = True,
    ) -> None:
        if importlib.util.find_spec("httpx") is None:
            raise AdcopilotError("backend 'openai' needs the httpx package: pip install httpx==0.28.1")
        import httpx

        self.protocol = get_protocol(protocol)
        base = base_url or os.environ.get("ADCOPILOT_OPENAI_BASE_URL")
        if not base:
            raise AdcopilotError("backend 'openai' needs ADCOPILOT_OPENAI_BASE_URL (e.g. http://localhost:8000/v1)")
        self.model = model or os.environ.get("ADCOPILOT_OPENAI_MODEL")
        if not self.model:
            raise AdcopilotError("backend 'openai' needs a model name: --model NAME or ADCOPILOT_OPENAI_MODEL")
        if box_coords not in ("pixel", "relative1000", "qwen"):
            raise AdcopilotError(f"unknown box coordinates '{box_coords}'; use pixel, relative1000 or qwen")
        if concurrency < 1:
            raise AdcopilotError(f"--concurrency must be at least 1, got {concurrency}")
        if max_image_size is not None and max_image_size < 0:
            raise AdcopilotError(f"--max-image-size must be 0 (no limit) or more, got {max_image_size}")
        key = api_key if api_key is not None else os.environ.get("ADCOPILOT_OPENAI_API_KEY", "")
        self.url = base.rstrip("/") + "/chat/completions"
        self.concurrency, self.max_retries, self.backoff_s = concurrency, max_retries, backoff_s
        self.max_image_size = max_image_size or None
        self.max_tokens = max_tokens or self.protocol.max_tokens
        self.box_coords, self.seed = box_coords, seed
        self.vision_ids = vision_ids and self.protocol.name == "qwen"
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.Client(headers=headers, timeout=timeout_s)
        self._slots = threading.BoundedSemaphore(concurrency)
        self._httpx = httpx
        self._jitter = random.Random(seed)

    def _image(self, path: str | os.PathLike) -> tuple[dict[str, Any], tuple[int, int]]:
        url, size = self.protocol.encode(path, self.max_image_size)
        image_url: dict[str, Any] = {"url": url}
        if self.protocol.image_detail:
            image_url["detail"] = self.protocol.image_detail
        return {"type": "image_url", "image_url": image_url}, size

    def _content(self, parts: Sequence[PromptPart]) -> tuple[list[dict[str, Any]], tuple[int, int] | None]:
        content, last_size = [], None
        for kind, value in parts:
            if kind == "image":
                part, last_size = self._image(value)
                content.append(part)
            else:
                content.append({"type": "text", "text": value})
        return content, last_size

    def payload(self, content: list[dict[str, Any]]) -> dict[str, Any]:
        """The request body for one user message with ``content``."""
        body: dict[str, Any] = {"model": self.model, "messages": [{"role": "user", "content": content}],
                                "max_tokens": self.max_tokens}
        if self.protocol.greedy:
            body.update(temperature=0, seed=self.seed)
        if self.vision_ids:
            body["chat_template_kwargs"] = {"add_vision_id": True}
        return body

    def chat(self, content: list[dict[str, Any]]) -> str:
        """POST one user message; retry connection errors, 429 and 5xx with exponential back-off
        (and, with the gpt4o protocol, replies that refuse)."""
        payload = self.payload(content)
        last = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                delay = self.backoff_s * 2 ** (attempt - 1) * (1 + 0.1 * self._jitter.random())
                log.info("retrying %s in %.1f s (%s)", self.url, delay, last)
                time.sleep(delay)
            try:
                with self._slots:
                    resp = self._client.post(self.url, json=payload)
            except self._httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
                continue
            if resp.status_code == 429 or resp.status_code >= 500:
                last = f"HTTP {resp.status_code}"
                continue
            if resp.status_code >= 400:
                hint = ""
                if self.vision_ids and "chat_template_kwargs" in resp.text:
                    hint = " (this server takes no chat_template_kwargs: use --no-vision-ids)"
                raise AdcopilotError(f"{self.url}: HTTP {resp.status_code}: {resp.text[:200]}{hint}")
            text = self._reply_text(resp)
            if self.protocol.retry_refusals and is_refusal(text):
                last = f"refused: {text[:80]!r}"
                continue
            return text
        raise AdcopilotError(f"{self.url}: no answer after {self.max_retries + 1} attempts ({last})")

    def _reply_text(self, resp: Any) -> str:
        try:
            message = resp.json()["choices"][0]["message"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise AdcopilotError(f"{self.url}: reply is not a chat completion: {resp.text[:200]}") from None
        text = message.get("content") or ""
        if isinstance(text, list):  # content parts
            text = "".join(p.get("text", "") for p in text if isinstance(p, dict))
        return str(text)

    def answer(self, images: Sequence[str | os.PathLike], question: Question) -> str:
        return self.answer_in_conversation(images, question, [])

    def answer_in_conversation(
        self, images: Sequence[str | os.PathLike], question: Question, earlier: Sequence[Question]
    ) -> str:
        if not self.protocol.accumulate:
            content, _ = self._content(official_prompt(images[:-1], images[-1], question))
            return self.chat(content)
        # gpt4o: every image first (templates, then the query), then one text block listing the
        # questions asked so far; the reply's last letter answers the last of them.
        content = [self._image(p)[0] for p in images]
        content.append({"type": "text", "text": gpt4o_text(len(images) - 1, [*earlier, question])})
        return self.chat(content)

    def boxes(self, images: Sequence[str | os.PathLike]) -> BoxAnswer:
        parts: list[PromptPart] = [("image", os.fspath(p)) for p in images]
        parts.append(("text", bbox_prompt(len(images) - 1)))
        content, sent = self._content(parts)
        text = self.chat(content)
        if self.box_coords == "relative1000":
            return BoxAnswer(text, "relative1000")
        if self.box_coords == "qwen" and sent is not None:
            return BoxAnswer(text, "pixel", smart_resize(*sent))  # the frame a Qwen2.5-VL server saw
        return BoxAnswer(text, "pixel", sent)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.model,
            "url": self.url,
            "protocol": self.protocol.name,
            "vision_ids": self.vision_ids,
            "concurrency": self.concurrency,
            "max_retries": self.max_retries,
            "max_image_size": self.max_image_size,
            "max_tokens": self.max_tokens,
            "temperature": 0 if self.protocol.greedy else "server default",
            "box_coords": self.box_coords,
        }

    def close(self) -> None:
        self._client.close()


# --------------------------------------------------------------------------- registry
def _baseline(model: str | None, options: dict[str, Any]) -> Backend:
    return CopilotBackend("baseline", "baseline", threshold=options.get("threshold"))


def _nano(model: str | None, options: dict[str, Any]) -> Backend:
    target = model or "default"
    if target == "default" and not (DEFAULT_CHECKPOINT / "config.json").exists():
        raise AdcopilotError(
            f"backend 'nano' needs a trained checkpoint: none at {DEFAULT_CHECKPOINT}; "
            "pass --model FOLDER or use --backend baseline"
        )
    return CopilotBackend("nano", target, threshold=options.get("threshold"),
                          box_mode=options.get("box_mode") or "head",
                          grounded=options.get("answers", "grounded") != "language",
                          prior_weight=options.get("prior_weight"), knowledge=options.get("knowledge") or ())


def _transformers(model: str | None, options: dict[str, Any]) -> Backend:
    if not model:
        raise AdcopilotError("backend 'transformers' needs --model PATH (a local Qwen2.5-VL checkpoint folder)")
    keys = ("device", "dtype", "max_new_tokens", "min_pixels", "max_pixels", "max_image_size", "seed")
    return TransformersBackend(model, **{k: v for k, v in options.items() if k in keys and v is not None})


def _openai(model: str | None, options: dict[str, Any]) -> Backend:
    keys = ("base_url", "api_key", "concurrency", "max_retries", "backoff_s", "timeout_s", "max_image_size",
            "max_tokens", "box_coords", "seed", "protocol", "vision_ids")
    return OpenAIBackend(model, **{k: v for k, v in options.items() if k in keys and v is not None})


#: Evaluation backends by name: (model, options) -> Backend.
BACKENDS: dict[str, Callable[[str | None, dict[str, Any]], Backend]] = {
    "nano": _nano,
    "baseline": _baseline,
    "transformers": _transformers,
    "openai": _openai,
}


def make_backend(name: str, model: str | None = None, **options: Any) -> Backend:
    """Build a backend by name (see the module docstring); ``model`` is its checkpoint or model name."""
    if name not in BACKENDS:
        raise AdcopilotError(f"unknown backend '{name}'; known: {', '.join(BACKENDS)}")
    return BACKENDS[name](model, options)


def versions() -> dict[str, str]:
    """Versions of what produced a run (recorded in run.json)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("adcopilot", "torch", "transformers", "numpy", "httpx"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out
