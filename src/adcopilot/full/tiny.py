"""A tiny random full-scale model, built offline in a second: for tests and cluster smoke runs.

Same classes, same files and the same code paths as the 7B model, at toy sizes (ViT 2 blocks of
width 32, LLM 2 layers of width 64, 8 comparison tokens) with a byte-level BPE tokenizer trained
on the given texts (Qwen2.5-VL's special tokens included). Use it to check a multi-GPU or
multi-node setup end to end before spending hours on the real model::

    from adcopilot.full.tiny import build_tiny_checkpoint
    build_tiny_checkpoint("tiny-ckpt", texts=["Is there any defect?", "No."])
    # accelerate launch -m adcopilot train --scale full --model tiny-ckpt --data train.jsonl --stage 3 ...
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from adcopilot.full.configuration_adcopilot import ADCopilotConfig
from adcopilot.full.loading import save_full_model
from adcopilot.full.modeling_adcopilot import ADCopilotVLForConditionalGeneration
from adcopilot.full.processing_adcopilot import SPECIAL_TOKENS, ADCopilotProcessor

BASE_TEXTS = (
    "You are a helpful assistant. The first image is a normal sample. The second image is the query sample. "
    "Is there any defect in the query object? Yes. No. There is a scratch, a crack, a hole, a stain. "
    'Answer with [{"bbox_2d": [x1, y1, x2, y2], "label": "defect"}] 0123456789 top left right bottom center.'
)


def tiny_tokenizer(texts: Iterable[str] = (), vocab_size: int = 400):
    """A byte-level BPE tokenizer trained on ``texts`` (+ a base text), with Qwen2.5-VL's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator([BASE_TEXTS, *texts], trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(SPECIAL_TOKENS),
    )


def tiny_processor(tokenizer: Any, compare_token_size: int = 8, compare_placement: str = "all") -> ADCopilotProcessor:
    """The processor at toy image sizes (56 to 112 pixels a side: 4 to 16 base tokens an image)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=56 * 56, max_pixels=112 * 112, patch_size=14, merge_size=2, temporal_patch_size=2
    )
    return ADCopilotProcessor(
        image_processor, tokenizer, compare_token_size=compare_token_size, compare_placement=compare_placement
    )


def tiny_config(tokenizer: Any, **overrides: Any) -> ADCopilotConfig:
    """A toy :class:`ADCopilotConfig` matching ``tokenizer``'s vocabulary and special-token ids."""
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    settings: dict[str, Any] = dict(
        vision_config=dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
            patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
            fullatt_block_indexes=[1],
        ),
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            bos_token_id=None, eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        compare_token_size=8,
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    settings.update(overrides)
    return ADCopilotConfig(**settings)


def build_tiny(texts: Iterable[str] = (), seed: int = 0, **overrides: Any):
    """(model, processor): a tiny random model (seeded) and its processor."""
    tokenizer = tiny_tokenizer(texts)
    config = tiny_config(tokenizer, **overrides)
    torch.manual_seed(seed)
    model = ADCopilotVLForConditionalGeneration(config).eval()
    model.generation_config.max_new_tokens = 16  # a toy: short answers
    processor = tiny_processor(tokenizer, config.compare_token_size, config.compare_placement)
    return model, processor


def build_tiny_checkpoint(path: str | os.PathLike, texts: Iterable[str] = (), seed: int = 0, **overrides: Any) -> Path:
    """Write a tiny random checkpoint folder (the same layout as a real one) and return its path."""
    model, processor = build_tiny(texts, seed, **overrides)
    return save_full_model(model, processor, path, extra="A tiny random model for tests and smoke runs.")
