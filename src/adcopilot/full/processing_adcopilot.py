"""Processor of the full-scale model: images + text -> tensors, with the comparison placeholders.

:class:`ADCopilotProcessor` is Qwen2.5-VL's processor (same image processor, tokenizer, chat
format) whose placeholder expansion adds the comparison tokens: an image that receives them
expands to (its base-token count + L) ``<|image_pad|>`` tokens between ``<|vision_start|>`` and
``<|vision_end|>`` (no new special tokens, as the released model). ``compare_placement`` says
which images receive them: ``"all"`` or only the last image of each sample (``"query"``). The
model reads the same information back from the run lengths, so the two always agree.

Conversations use Qwen2.5-VL's chat format; :func:`format_chat` writes it from Chat-AD turns and
:meth:`ADCopilotProcessor.encode_conversation` tokenizes a whole conversation with labels on the
assistant's words only (training). Videos are not supported (AD-Copilot compares still images).

Usage::

    proc = ADCopilotProcessor(image_processor, tokenizer, compare_token_size=100)
    text = format_chat([{"role": "user", "content": "Is there any defect?"}], num_images=2)
    batch = proc(images=[ref, query], text=[text], return_tensors="pt")
    enc = proc.encode_conversation([ref, query], turns)      # input_ids, labels, pixel_values, ...
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from transformers import Qwen2_5_VLProcessor

IMAGE_TOKEN = "<|image_pad|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
#: Special tokens the tokenizer must know (Qwen2.5-VL's).
SPECIAL_TOKENS = ("<|endoftext|>", IM_START, IM_END, VISION_START, VISION_END, IMAGE_TOKEN, "<|video_pad|>")
DEFAULT_SYSTEM = "You are a helpful assistant."
IMAGE_BLOCK = VISION_START + IMAGE_TOKEN + VISION_END
#: In Chat-AD text, ``<image>`` marks where an image goes (else all images open the first user turn).
IMAGE_MARK = "<image>"
IGNORE_INDEX = -100

#: Qwen2-VL's chat template (Apache-2.0), saved with the processor so ``apply_chat_template`` works.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _place_images(content: str, num_images: int) -> str:
    """User text with the images' blocks: at its ``<image>`` marks, else all at its start."""
    marks = content.count(IMAGE_MARK)
    if marks == 0:
        return IMAGE_BLOCK * num_images + content
    if marks != num_images:
        raise ValueError(f"the text has {marks} {IMAGE_MARK} marks for {num_images} images")
    return content.replace(IMAGE_MARK, IMAGE_BLOCK)


def chat_segments(
    turns: Sequence[dict[str, str]], num_images: int, system: str | None = DEFAULT_SYSTEM,
    add_generation_prompt: bool = False,
) -> list[tuple[str, bool]]:
    """A conversation in Qwen2.5-VL's chat format as (text, is_assistant_answer) pieces.

    The images go into the first user turn. Answers include their closing ``<|im_end|>`` so the
    model learns to stop."""
    if not turns:
        raise ValueError("a conversation needs at least one turn")
    pieces: list[tuple[str, bool]] = []
    prefix = f"{IM_START}system\n{system}{IM_END}\n" if system else ""
    first_user = True
    for turn in turns:
        role, content = turn.get("role"), turn.get("content")
        if role not in ("user", "assistant") or not isinstance(content, str):
            raise ValueError(f"a turn needs role 'user' or 'assistant' and text content, got {turn!r}")
        if role == "user":
            if first_user:
                content = _place_images(content, num_images)
                first_user = False
            prefix += f"{IM_START}user\n{content}{IM_END}\n"
        else:
            pieces.append((prefix + f"{IM_START}assistant\n", False))
            pieces.append((content + IM_END, True))
            prefix = "\n"
    if first_user and num_images:
        raise ValueError("the conversation has no user turn to carry the images")
    if add_generation_prompt:
        prefix += f"{IM_START}assistant\n"
    if prefix:
        pieces.append((prefix, False))
    return pieces


def format_chat(
    turns: Sequence[dict[str, str]], num_images: int, system: str | None = DEFAULT_SYSTEM,
    add_generation_prompt: bool = True,
) -> str:
    """The conversation as one prompt string (with the assistant header appended by default)."""
    return "".join(t for t, _ in chat_segments(turns, num_images, system, add_generation_prompt))


class ADCopilotProcessor(Qwen2_5_VLProcessor):
    """Qwen2.5-VL's processor with the comparison placeholders (no video)."""

    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: Any = None,
        chat_template: str | None = None,
        compare_token_size: int = 100,
        compare_placement: str = "all",
        **kwargs: Any,
    ) -> None:
        if compare_placement not in ("all", "query"):
            raise ValueError(f"compare_placement must be 'all' or 'query', got {compare_placement!r}")
        self.compare_token_size = int(compare_token_size)
        self.compare_placement = compare_placement
        self._compare_flags: list[bool] | None = None
        # Qwen2_5_VLProcessor's init with no video processor (this processor's attributes are the
        # image processor and the tokenizer only).
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template or CHAT_TEMPLATE, **kwargs)

    # ------------------------------------------------------------------ placeholders
    def compare_flags(self, images_per_sample: Sequence[int]) -> list[bool]:
        """Whether each image of the flattened batch receives comparison tokens."""
        flags: list[bool] = []
        for n in images_per_sample:
            flags += [self.compare_placement == "all" or i == n - 1 for i in range(n)]
        return flags

    def num_image_tokens(self, grid_thw: Sequence[int] | torch.Tensor, with_comparison: bool) -> int:
        """Placeholder count of one image: base tokens (+ L comparison tokens)."""
        t, h, w = (int(v) for v in grid_thw)
        base = t * h * w // self.image_processor.merge_size**2
        return base + (self.compare_token_size if with_comparison else 0)

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs: Any) -> str:
        flags = self._compare_flags
        with_comparison = True if flags is None else flags[image_idx]
        return self.image_token * self.num_image_tokens(image_inputs["image_grid_thw"][image_idx], with_comparison)

    def __call__(self, images: Any = None, text: Any = None, videos: Any = None, audio: Any = None, **kwargs: Any):
        if videos is not None:
            raise ValueError("the AD-Copilot processor does not take videos")
        texts = [text] if isinstance(text, str) else list(text or [])
        self._compare_flags = self.compare_flags([t.count(self.image_token) for t in texts])
        try:
            return super().__call__(images=images, text=text, **kwargs)
        finally:
            self._compare_flags = None

    # ------------------------------------------------------------------ training
    def encode_conversation(
        self,
        images: Sequence[Any],
        turns: Sequence[dict[str, str]],
        system: str | None = DEFAULT_SYSTEM,
        max_length: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Tokenize one conversation with its images for training.

        Returns ``input_ids`` (S,), ``labels`` (S,) (the assistant's words, -100 elsewhere),
        ``pixel_values`` (sum N_i, 3*2*14*14) and ``image_grid_thw`` (n, 3). Sequences longer than
        ``max_length`` are cut at the end (never inside the image placeholders)."""
        vision: dict[str, torch.Tensor] = {}
        counts: list[int] = []
        if images:
            vision = dict(self.image_processor(list(images), return_tensors="pt"))
            flags = self.compare_flags([len(images)])
            counts = [self.num_image_tokens(g, f) for g, f in zip(vision["image_grid_thw"], flags, strict=True)]
        count_iter = iter(counts)
        ids: list[int] = []
        labels: list[int] = []
        block = re.escape(IMAGE_BLOCK)
        for text, target in chat_segments(turns, len(images), system):
            # Expand each image block to its placeholder count (in order over the conversation).
            text = re.sub(block, lambda _m: VISION_START + IMAGE_TOKEN * next(count_iter) + VISION_END, text)
            piece = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            ids += piece
            labels += piece if target else [IGNORE_INDEX] * len(piece)
        if max_length is not None and len(ids) > max_length:
            last_image = max((i for i, t in enumerate(ids) if t == self.image_token_id), default=-1)
            if last_image >= max_length:
                raise ValueError(f"the images alone need {last_image + 1} tokens, more than max_length {max_length}")
            ids, labels = ids[:max_length], labels[:max_length]
        out = {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels)}
        out.update({k: vision[k] for k in ("pixel_values", "image_grid_thw") if k in vision})
        return out
