"""The processor: placeholder expansion with comparison tokens, chat format, training labels."""

from __future__ import annotations

import pytest
import torch

from adcopilot.full.processing_adcopilot import (
    IGNORE_INDEX,
    IMAGE_BLOCK,
    ADCopilotProcessor,
    chat_segments,
    format_chat,
)
from adcopilot.full.tiny import tiny_processor

TURNS = [
    {"role": "user", "content": "The first image is a normal sample. Is there any defect?"},
    {"role": "assistant", "content": "Yes."},
    {"role": "user", "content": "Where?"},
    {"role": "assistant", "content": "top left"},
]


def _image_runs(ids: torch.Tensor, image_id: int) -> list[int]:
    runs, n = [], 0
    for t in ids.tolist() + [-1]:
        if t == image_id:
            n += 1
        elif n:
            runs.append(n)
            n = 0
    return runs


def test_every_image_gets_base_plus_comparison_tokens(tiny, images):
    _, proc = tiny
    out = proc(images=images, text=[format_chat(TURNS[:1], 2)], return_tensors="pt")
    assert out["image_grid_thw"].tolist() == [[1, 4, 4], [1, 4, 4]]  # 16 patches -> 4 base tokens
    assert _image_runs(out["input_ids"][0], proc.image_token_id) == [4 + 8, 4 + 8]
    assert out["mm_token_type_ids"][0].sum() == 24


def test_query_placement_expands_only_each_samples_last_image(tiny, images):
    _, proc = tiny
    qp = tiny_processor(proc.tokenizer, compare_token_size=8, compare_placement="query")
    texts = [format_chat(TURNS[:1], 2), format_chat(TURNS[:1], 1)]
    out = qp(images=[*images, images[1]], text=texts, padding=True, return_tensors="pt")
    assert _image_runs(out["input_ids"][0], qp.image_token_id) == [4, 12]
    assert _image_runs(out["input_ids"][1], qp.image_token_id) == [12]
    plain = tiny_processor(proc.tokenizer, compare_token_size=0)
    out = plain(images=images, text=[format_chat(TURNS[:1], 2)], return_tensors="pt")
    assert _image_runs(out["input_ids"][0], plain.image_token_id) == [4, 4]


def test_chat_format_follows_qwen_and_images_open_the_first_turn():
    text = format_chat(TURNS[:1], 2)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")
    assert IMAGE_BLOCK * 2 + "The first image" in text
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")
    marked = format_chat([{"role": "user", "content": "<image> is normal. <image> is the query."}], 2)
    assert f"{IMAGE_BLOCK} is normal. {IMAGE_BLOCK} is the query." in marked
    with pytest.raises(ValueError, match="marks"):
        format_chat([{"role": "user", "content": "<image> only one"}], 2)
    with pytest.raises(ValueError, match="role"):
        chat_segments([{"role": "robot", "content": "x"}], 0)


def test_labels_cover_exactly_the_answers(tiny, images):
    _, proc = tiny
    enc = proc.encode_conversation(images, TURNS)
    ids, labels = enc["input_ids"], enc["labels"]
    assert ids.shape == labels.shape
    learned = proc.tokenizer.decode(ids[labels != IGNORE_INDEX])
    assert learned == "Yes.<|im_end|>top left<|im_end|>"
    assert enc["pixel_values"].shape == (32, 3 * 2 * 14 * 14) and enc["image_grid_thw"].shape == (2, 3)


def test_training_encoding_matches_the_inference_processor(tiny, images):
    """The prompt part of a training sample is token for token what inference feeds the model."""
    _, proc = tiny
    enc = proc.encode_conversation(images, TURNS[:2])
    out = proc(images=images, text=[format_chat(TURNS[:1], 2)], return_tensors="pt")
    n = out["input_ids"].shape[1]
    assert torch.equal(enc["input_ids"][:n], out["input_ids"][0])
    torch.testing.assert_close(enc["pixel_values"], out["pixel_values"])


def test_truncation_keeps_the_images(tiny, images):
    _, proc = tiny
    full = proc.encode_conversation(images, TURNS)
    cut = proc.encode_conversation(images, TURNS, max_length=len(full["input_ids"]) - 3)
    assert torch.equal(cut["input_ids"], full["input_ids"][:-3])
    with pytest.raises(ValueError, match="images alone"):
        proc.encode_conversation(images, TURNS, max_length=10)


def test_save_and_reload_keeps_the_comparison_settings(tiny, tmp_path):
    _, proc = tiny
    qp = tiny_processor(proc.tokenizer, compare_token_size=5, compare_placement="query")
    qp.save_pretrained(tmp_path)
    back = ADCopilotProcessor.from_pretrained(tmp_path)
    assert (back.compare_token_size, back.compare_placement) == (5, "query")
    with pytest.raises(ValueError, match="compare_placement"):
        ADCopilotProcessor(qp.image_processor, qp.tokenizer, compare_placement="middle")
