"""Model inputs for a local Qwen2.5-VL-family checkpoint: chat template, image patches, image tokens.

This does what ``Qwen2_5_VLProcessor`` does for images, from the checkpoint's own tokenizer,
image processor and chat template, so that it also works where the processor class cannot be
built (transformers 5 needs torchvision for Qwen's video processor, which the CPU install here
lacks): render the chat template (``add_vision_id=True``, as the benchmark's script), resize and
patch the images with the image processor (``min_pixels`` / ``max_pixels``), expand each
``<|image_pad|>`` to one token per merged patch (``grid_t * grid_h * grid_w / merge_size^2``),
and mark those tokens in ``mm_token_type_ids`` for the model's M-RoPE positions.

Usage::

    inputs = QwenInputs("path/to/Qwen2.5-VL-7B-Instruct", min_pixels=64 * 28 * 28, max_pixels=1280 * 28 * 28)
    batch = inputs.encode([("text", "Describe "), ("image", "part.png")])
    out = model.generate(**batch, max_new_tokens=128, do_sample=False)
    reply = inputs.decode(out[0, batch["input_ids"].shape[1]:])
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adcopilot.errors import AdcopilotError

IMAGE_TOKEN = "<|image_pad|>"


def _chat_template(path: Path, tokenizer: Any) -> str:
    """The checkpoint's multimodal chat template (processor files first, then the tokenizer's)."""
    jinja = path / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    js = path / "chat_template.json"
    if js.is_file():
        try:
            return str(json.loads(js.read_text(encoding="utf-8"))["chat_template"])
        except (json.JSONDecodeError, KeyError) as exc:
            raise AdcopilotError(f"{js}: no chat_template in it ({exc})") from None
    if getattr(tokenizer, "chat_template", None):
        return str(tokenizer.chat_template)
    raise AdcopilotError(f"{path}: the checkpoint has no chat template (chat_template.jinja or .json)")


def _user_turn(tokenizer: Any, template: str, parts: Sequence[tuple[str, Any]]) -> tuple[str, list[Any]]:
    """``parts`` as one user turn through the chat template (images labelled 'Picture N:') -> the prompt
    text, with one image slot per image, and the images in order."""
    content: list[dict[str, str]] = []
    images: list[Any] = []
    for kind, value in parts:
        if kind == "image":
            content.append({"type": "image"})
            images.append(value)
        else:
            content.append({"type": "text", "text": value})
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": content}],
        chat_template=template,
        tokenize=False,
        add_generation_prompt=True,
        add_vision_id=True,
    )
    return text, images


def _frame(grid_thw: Any, patch: int) -> tuple[int, int]:
    """(w, h) in pixels of the resized image behind one ``image_grid_thw`` row (t, h, w in patches)."""
    _, gh, gw = (int(v) for v in grid_thw)
    return gw * patch, gh * patch


class QwenInputs:
    """Tokenizer + image processor + chat template of a Qwen2.5-VL-family checkpoint folder."""

    def __init__(self, path: str | os.PathLike, min_pixels: int, max_pixels: int) -> None:
        from transformers import AutoImageProcessor, AutoTokenizer

        self.path = Path(path)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
            self.image_processor = AutoImageProcessor.from_pretrained(
                self.path, local_files_only=True, min_pixels=min_pixels, max_pixels=max_pixels
            )
        except (OSError, ValueError) as exc:
            raise AdcopilotError(f"{self.path}: cannot load the tokenizer or image processor ({exc})") from None
        self.template = _chat_template(self.path, self.tokenizer)
        self.image_token_id = int(self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))
        self.merge = int(getattr(self.image_processor, "merge_size", 2))
        self.patch = int(getattr(self.image_processor, "patch_size", 14))

    def encode(self, parts: Sequence[tuple[str, Any]], with_token_types: bool = True) -> dict[str, Any]:
        """``[("text", str) | ("image", PIL image), ...]`` as one user turn -> model inputs (batch of 1)."""
        import torch

        text, images = _user_turn(self.tokenizer, self.template, parts)
        batch: dict[str, Any] = {}
        if images:
            pix = self.image_processor(images=images, return_tensors="pt")
            grid = pix["image_grid_thw"]  # (n_images, 3): t, h, w in patches
            pieces = text.split(IMAGE_TOKEN)
            if len(pieces) != len(images) + 1:
                raise AdcopilotError(f"{self.path}: the chat template wrote {len(pieces) - 1} image slots for {len(images)} images")
            counts = [int(g.prod()) // (self.merge**2) for g in grid]
            text = pieces[0] + "".join(IMAGE_TOKEN * n + rest for n, rest in zip(counts, pieces[1:], strict=True))
            batch.update(pixel_values=pix["pixel_values"], image_grid_thw=grid)
        enc = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)
        batch.update(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        if with_token_types:
            batch["mm_token_type_ids"] = (enc["input_ids"] == self.image_token_id).to(torch.int32)
        return batch

    def frame(self, grid_thw: Any) -> tuple[int, int]:
        """(w, h) in pixels of the resized image behind one ``image_grid_thw`` row."""
        return _frame(grid_thw, self.patch)

    def decode(self, ids: Any) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False))


class ProcessorInputs:
    """The same interface over a processor object (the full model's ``ADCopilotProcessor``, which
    also writes the comparison-token placeholders of AD-Copilot-style checkpoints)."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor
        self.patch = int(getattr(processor.image_processor, "patch_size", 14))

    def encode(self, parts: Sequence[tuple[str, Any]], with_token_types: bool = True) -> dict[str, Any]:
        text, images = _user_turn(self.processor.tokenizer, self.processor.chat_template, parts)
        batch = dict(self.processor(images=images or None, text=[text], return_tensors="pt"))
        if not with_token_types:
            batch.pop("mm_token_type_ids", None)
        return batch

    def frame(self, grid_thw: Any) -> tuple[int, int]:
        return _frame(grid_thw, self.patch)

    def decode(self, ids: Any) -> str:
        return str(self.processor.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False))
