"""The transformers backend end to end on a tiny random Qwen2.5-VL built here (answers are noise)."""

from __future__ import annotations

import json

import pytest

from adcopilot.errors import AdcopilotError
from adcopilot.eval.backends import BoxAnswer, make_backend
from adcopilot.eval.mmad import load_mmad
from adcopilot.eval.runner import run_bbox, run_mmad
from adcopilot.eval.scoring import score

from .tiny_qwen import write_tiny_qwen


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory):
    return write_tiny_qwen(tmp_path_factory.mktemp("qwen") / "tiny-qwen2.5-vl")


def test_answers_deterministically_and_boxes_carry_the_frame(tiny_qwen, small_bench):
    be = make_backend("transformers", str(tiny_qwen), device="cpu", max_new_tokens=6)
    bench = load_mmad(small_bench)
    item = bench.items[0]
    images = [*bench.references(item, 1), bench.query(item)]
    reply = be.answer(images, item.questions[0])
    assert isinstance(reply, str) and reply == be.answer(images, item.questions[0])  # greedy
    box = be.boxes(images)
    assert isinstance(box, BoxAnswer) and box.coords == "pixel"
    assert box.frame is not None and box.frame[0] % 28 == 0 and box.frame[1] % 28 == 0
    d = be.describe()
    assert d["model_type"] == "qwen2_5_vl" and d["device"] == "cpu" and d["decoding"] == "greedy"


def test_runs_mmad_and_bbox_pipelines(tiny_qwen, small_bench, tmp_path):
    be = make_backend("transformers", str(tiny_qwen), device="cpu", max_new_tokens=4)
    bench = load_mmad(small_bench)
    items = bench.select(limit=2)
    records = run_mmad(bench, items, be, tmp_path / "run", progress=False)
    assert len(records) == sum(len(i.questions) for i in items) and not any(r.error for r in records)
    table = score(records, "strict")
    assert table.n_counted == len(records)
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta["backend"]["name"] == "transformers" and "transformers" in meta["versions"]
    boxes, skipped = run_bbox(bench, items, be, tmp_path / "bbox", progress=False)
    assert len(boxes) == 2 and skipped == {"no_mask": 0, "bad_mask": 0}


def test_clear_errors(tmp_path, tiny_qwen):
    with pytest.raises(AdcopilotError, match="needs --model PATH"):
        make_backend("transformers")
    with pytest.raises(AdcopilotError, match="no config.json"):
        make_backend("transformers", str(tmp_path))
    other = tmp_path / "llama"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(AdcopilotError, match="not a Qwen2.5-VL-family checkpoint"):
        make_backend("transformers", str(other))
    with pytest.raises(AdcopilotError, match="unknown dtype"):
        make_backend("transformers", str(tiny_qwen), dtype="float7")


def test_ad_copilot_style_checkpoint_answers_the_official_prompt(tmp_path, small_bench):
    from adcopilot.full.tiny import build_tiny_checkpoint

    ckpt = build_tiny_checkpoint(tmp_path / "tiny-ad-copilot")
    be = make_backend("transformers", str(ckpt), device="cpu", max_new_tokens=4)
    assert be.describe()["model_type"] == "ad_copilot"
    bench = load_mmad(small_bench)
    item = bench.items[0]
    images = [*bench.references(item, 1), bench.query(item)]
    batch = be.inputs.encode([("text", "x"), ("image", _pil(images[0])), ("image", _pil(images[1]))])
    # Each image: its base tokens plus the comparison tokens the processor adds.
    n_pad = int((batch["input_ids"] == be.inputs.processor.image_token_id).sum())
    base = int(batch["image_grid_thw"].prod(dim=1).sum()) // 4
    assert n_pad == base + 2 * be.model.config.compare_token_size
    reply = be.answer(images, item.questions[0])
    assert isinstance(reply, str) and reply == be.answer(images, item.questions[0])


def _pil(path):
    from PIL import Image

    return Image.open(path).convert("RGB")
