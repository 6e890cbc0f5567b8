"""The full-scale path end to end with answers forced by constrained decoding.

The tiny random model runs for real (processor, vision tower, Comparison Encoder, LLM, KV-cache
generation); a transformers ``LogitsProcessor`` forces its tokens to spell a scripted answer to
each question it is asked. So what ``inspect``, ``ask``, ``answer_choice`` and ``localize`` make of
known answers is checked against known values: verdicts, reasoning stripped, option letters, and
boxes mapped from the frame the model saw to the query's pixels (width and height scaled apart).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import LogitsProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

from adcopilot.errors import AdcopilotError
from adcopilot.full.pipeline import (
    FullCopilot,
    FullModel,
    anomaly_question,
    parse_labelled_boxes,
    read_verdict,
)
from adcopilot.full.tiny import build_tiny
from adcopilot.model.box_text import bbox_prompt
from adcopilot.reasoning import final_answer, split_reasoning
from adcopilot.results import InspectionResult
from adcopilot.serve.service import InspectionService


class Scripted(LogitsProcessor):
    """Forces the reply to the last user turn: the answer of the first key found in that turn."""

    def __init__(self, tokenizer, answers: dict[str, str]) -> None:
        self.tok = tokenizer
        self.answers = answers
        self.asked: list[str] = []
        self.steps = 0  # tokens generated, over every question
        self.im_start = tokenizer.convert_tokens_to_ids("<|im_start|>")
        self.eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.header = len(tokenizer("assistant\n", add_special_tokens=False)["input_ids"])

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        ids = input_ids[0].tolist()
        starts = [i for i, t in enumerate(ids) if t == self.im_start]
        user = self.tok.decode(ids[starts[-2]:starts[-1]])
        done = len(ids) - starts[-1] - 1 - self.header
        self.steps += 1
        if done == 0:
            self.asked.append(user)
        answer = next(a for key, a in self.answers.items() if key in user)
        target = [*self.tok(answer, add_special_tokens=False)["input_ids"], self.eos]
        forced = torch.full_like(scores, float("-inf"))
        forced[:, target[min(done, len(target) - 1)]] = 0.0
        return forced


QUERY_W, QUERY_H = 200, 100  # not square: a swapped width and height would show


@pytest.fixture(scope="module")
def model_and_processor():
    return build_tiny(seed=0)


@pytest.fixture
def pair(tmp_path):
    rng = np.random.default_rng(0)
    ref = (rng.random((QUERY_H, QUERY_W, 3)) * 80 + 80).astype(np.uint8)
    Image.fromarray(ref).save(tmp_path / "ref.png")
    ref[60:80, 150:190] = 250
    Image.fromarray(ref).save(tmp_path / "query.png")
    return tmp_path / "query.png", tmp_path / "ref.png"


def _copilot(model_and_processor, answers: dict[str, str]) -> tuple[FullCopilot, Scripted]:
    model, processor = model_and_processor
    script = Scripted(processor.tokenizer, answers)
    full = FullModel(model, processor, max_new_tokens=64, name="scripted", logits_processor=[script])
    return FullCopilot(full), script


def _frame(processor) -> tuple[int, int]:
    """(w, h) the processor resizes the query to: Qwen2-VL's rule, computed by transformers."""
    ip = processor.image_processor
    lo = ip.size["shortest_edge"] if "shortest_edge" in (ip.size or {}) else ip.min_pixels
    hi = ip.size["longest_edge"] if "longest_edge" in (ip.size or {}) else ip.max_pixels
    h, w = smart_resize(QUERY_H, QUERY_W, factor=28, min_pixels=lo, max_pixels=hi)
    return w, h


def test_inspect_reads_the_verdict_then_the_boxes_in_query_pixels(model_and_processor, pair):
    query, ref = pair
    fw, fh = _frame(model_and_processor[1])
    assert (fw, fh) != (QUERY_W, QUERY_H) and fw != fh  # the model sees a resized, non-square frame
    box = [fw // 2, fh // 4, fw * 3 // 4, fh // 2]  # in the frame the model saw
    cp, script = _copilot(model_and_processor, {
        "A. Yes B. No": "A",
        "bbox_2d": json.dumps([{"bbox_2d": box, "label": "scratch"}]),
    })
    r = cp.inspect(query, [ref])
    assert r.verdict == "anomalous" and r.score == 1.0 and r.raw_answer is None
    expected = [round(box[0] * QUERY_W / fw), round(box[1] * QUERY_H / fh),
                round(box[2] * QUERY_W / fw), round(box[3] * QUERY_H / fh)]
    assert [b.bbox_2d for b in r.boxes] == [expected] and r.boxes[0].label == "scratch"
    assert r.anomaly_map.shape == (QUERY_H, QUERY_W)
    assert r.anomaly_map[expected[1]:expected[3], expected[0]:expected[2]].all() and r.anomaly_map.sum() == (
        (expected[2] - expected[0]) * (expected[3] - expected[1]))
    assert len(script.asked) == 2 and anomaly_question(1) in script.asked[0] and "bbox_2d" in script.asked[1]
    assert cp.localize(query, [ref], result=r) == [b.to_dict() for b in r.boxes]


def test_a_no_asks_nothing_more_and_an_unreadable_answer_is_unknown(model_and_processor, pair):
    query, ref = pair
    cp, script = _copilot(model_and_processor, {"A. Yes B. No": "B", "bbox_2d": "[]"})
    r = cp.inspect(query, [ref])
    assert r.verdict == "normal" and r.boxes == [] and len(script.asked) == 1
    cp, _ = _copilot(model_and_processor, {"A. Yes B. No": "Perhaps, hard to say.", "bbox_2d": "[]"})
    r = cp.inspect(query, [ref])
    assert r.verdict == "unknown" and r.raw_answer == "Perhaps, hard to say." and r.boxes == []
    assert r.to_dict()["raw_answer"] == "Perhaps, hard to say." and r.to_dict()["verdict"] == "unknown"


def test_the_thinking_variants_answers_are_read_after_the_reasoning(model_and_processor, pair):
    query, ref = pair
    cp, _ = _copilot(model_and_processor, {
        "A. Yes B. No": "<think>The second image has a bright patch. Yes.</think>B",
        "colour": "<think>It is bright.</think>White.",
        "Which defect": "<think>A is wrong, so C.</think>C",
        "bbox_2d": "[]",
    })
    assert cp.inspect(query, [ref]).verdict == "normal"  # the answer B, not the "Yes" of the reasoning
    assert cp.ask(query, [ref], "What colour is the defect?") == "White."
    letter = cp.answer_choice(query, [ref], "Which defect is it?", {"A": "crack", "B": "hole", "C": "stain"})
    assert letter == "C"  # its reasoning outgrows the 8 tokens of a letter: asked again, to the end


def test_answer_choice_returns_only_an_option_letter(model_and_processor, pair):
    query, ref = pair
    options = {"A": "Yes.", "B": "No."}
    cp, _ = _copilot(model_and_processor, {"Is there": "B: No."})
    assert cp.answer_choice(query, [ref], "Is there a defect?", options) == "B"
    cp, _ = _copilot(model_and_processor, {"Is there": "Defect found."})
    assert cp.answer_choice(query, [ref], "Is there a defect?", options) == ""  # no option named


def test_reasoning_parser():
    assert split_reasoning("<think> a </think> B ") == ("a", "B")
    assert split_reasoning("plain") == (None, "plain")
    assert split_reasoning("<think>cut off") == ("cut off", "")
    assert split_reasoning("opened in the prompt</think>A") == ("opened in the prompt", "A")
    assert final_answer("<think>x</think><answer> C </answer>") == "C"


def test_unknown_is_a_verdict_results_accept():
    r = InspectionResult(query="q", references=["r"], verdict="unknown", score=0.0, threshold=0.5, raw_answer="hm")
    assert not r.is_anomalous and json.loads(r.to_json())["raw_answer"] == "hm"
    with pytest.raises(ValueError, match="verdict"):
        InspectionResult(query="q", references=[], verdict="maybe", score=0.0, threshold=0.5)


def test_large_images_are_thumbnailed_with_lanczos_as_the_authors_scripts(model_and_processor):
    model, processor = model_and_processor
    rng = np.random.default_rng(1)
    big = Image.fromarray((rng.random((700, 900, 3)) * 255).astype(np.uint8))
    full = FullModel(model, processor)  # the release's 512-pixel thumbnails
    got = full.prepare([big], [{"role": "user", "content": "Is there any defect?"}])["pixel_values"]

    def pixels(resample) -> torch.Tensor:
        small = big.copy()
        small.thumbnail((512, 512), resample)
        return processor.image_processor([small], return_tensors="pt")["pixel_values"]

    assert torch.equal(got, pixels(Image.Resampling.LANCZOS))
    assert not torch.equal(got, pixels(Image.Resampling.BICUBIC))


def test_the_checkpoints_end_tokens_stop_the_answer(pair, tmp_path):
    from adcopilot.full.tiny import build_tiny_checkpoint

    query, ref = pair
    ckpt = build_tiny_checkpoint(tmp_path / "ckpt")
    tok = FullModel.load(ckpt).processor.tokenizer
    answer = "There is a scratch at the top."
    ids = tok(answer, add_special_tokens=False)["input_ids"]
    stop = ids[2]  # a second end token, as generation_config.json lists several
    gen = json.loads((ckpt / "generation_config.json").read_text())
    (ckpt / "generation_config.json").write_text(json.dumps({**gen, "eos_token_id": [gen["eos_token_id"], stop]}))
    script = Scripted(tok, {"defect": answer})
    cp = FullCopilot(FullModel.load(ckpt, logits_processor=[script], max_new_tokens=32))
    assert cp.ask(query, [ref], "Is there any defect?") == tok.decode(ids[:3], skip_special_tokens=True).strip()


def test_the_anomaly_map_view_rasterises_the_boxes_of_the_images_it_was_given(model_and_processor):
    """The batch and calibration tools' view: float images in [0, 1] reach the model as the 8-bit pixels
    they stand for (out-of-range values clipped), the boxes come back in query pixels as a 0/1 map."""
    model, processor = model_and_processor
    fw, fh = _frame(processor)
    box = [fw // 4, fh // 4, fw // 2, fh * 3 // 4]
    cp, script = _copilot(model_and_processor, {"bbox_2d": json.dumps([{"bbox_2d": box, "label": "stain"}])})
    rng = np.random.default_rng(2)
    ref8, query8 = (rng.integers(0, 256, (QUERY_H, QUERY_W, 3), dtype=np.uint8) for _ in range(2))
    ref, query = ((a + 0.5) / 255.0 for a in (ref8, query8))  # the middle of each 8-bit level
    query[:5], query8[:5] = -0.3, 0  # out of range: clipped
    query[-5:], query8[-5:] = 1.4, 255
    seen: list[torch.Tensor] = []
    def look(_module, args, kwargs):  # what the vision tower is given: the images' patches
        seen.append(args[0] if args else kwargs["hidden_states"])

    hook = model.model.visual.register_forward_pre_hook(look, with_kwargs=True)
    try:
        amap, score = cp.detector.detect(query, [cp.detector.encode_reference(ref)])
    finally:
        hook.remove()
    want = cp.full.prepare([ref8, query8], [{"role": "user", "content": bbox_prompt(1)}])["pixel_values"]
    assert len(seen) == 1 and torch.equal(seen[0], want)
    x1, y1, x2, y2 = (round(v * s / f) for v, s, f in zip(box, (QUERY_W, QUERY_H) * 2, (fw, fh) * 2, strict=True))
    assert amap.shape == (QUERY_H, QUERY_W) and amap.dtype == np.float32 and score == 1.0
    assert amap[y1:y2, x1:x2].all() and amap.sum() == (x2 - x1) * (y2 - y1)
    cp, script = _copilot(model_and_processor, {"bbox_2d": "[]"})
    amap, score = cp.detector.detect(query, [ref, ref])
    assert score == 0.0 and not amap.any() and bbox_prompt(2) in script.asked[0]


def test_boxes_are_clipped_to_the_image_and_empty_ones_dropped():
    text = json.dumps([{"bbox_2d": b} for b in ([-5, -3, 20, 10], [10, 50, 30, 60], [10, 10, 10, 20], [10, 10, 20, 10],
                                                 [90, 95, 130, 120])])
    got = parse_labelled_boxes(text, (100, 100), None)
    assert got == [([0, 0, 20, 10], "defect"), ([10, 50, 30, 60], "defect"), ([90, 95, 100, 100], "defect")]


def test_a_choice_lists_its_options_and_needs_some(model_and_processor, pair):
    query, ref = pair
    cp, script = _copilot(model_and_processor, {"Which defect": "B"})
    assert cp.answer_choice(query, [ref], "Which defect is it?", {"A": "crack", "B": "hole"}) == "B"
    assert ("Which defect is it?\nA: crack\nB: hole\nAnswer with the option's letter from the given choices directly."
            in script.asked[0])
    assert len(script.asked) == 1  # a plain answer is not asked for again
    # A letter gets eight tokens: a chatty answer that names its option later is cut before it.
    cp, script = _copilot(model_and_processor, {"Which defect": "Looking at the two images closely, I would say B."})
    assert cp.answer_choice(query, [ref], "Which defect is it?", {"A": "crack", "B": "hole"}) == ""
    assert script.steps == 8 and len(script.asked) == 1
    with pytest.raises(AdcopilotError, match="a multiple-choice question needs options"):
        cp.answer_choice(query, [ref], "Which defect is it?", {})


def test_the_authors_yes_no_question_and_how_its_answer_is_read():
    assert anomaly_question(1) == ("The first image is a normal sample. Is there any anomaly in the second image? "
                                   "A. Yes B. No. Please answer the letter only.")
    assert anomaly_question(3) == ("The first 3 images are normal samples. Is there any anomaly in the last image? "
                                   "A. Yes B. No. Please answer the letter only.")
    verdicts = {"A": "anomalous", "(A) Yes": "anomalous", "Yes, a scratch.": "anomalous", "yes": "anomalous",
                "B.": "normal", "No, it looks fine.": "normal", "NO": "normal",
                "Answer: A": "unknown", "Perhaps.": "unknown", "": "unknown", "Yesterday": "unknown"}
    assert {answer: read_verdict(answer) for answer in verdicts} == verdicts


def test_the_service_describes_a_full_scale_copilot_and_its_threshold(model_and_processor):
    """GET /v1/models' body for a full-scale copilot: one threshold, whatever the number of references."""
    cp, _ = _copilot(model_and_processor, {})
    m = InspectionService(cp).models()["models"][0]
    assert m["name"] == "scripted" and m["threshold_by_references"] == {"1": cp.threshold} == {"1": m["threshold"]}
