"""Caption, localization, VQA, MCQ and comparison samples: shapes and facts from labels only."""

from __future__ import annotations

import json

import numpy as np
import pytest

from adcopilot.data.curate import validate_sample
from adcopilot.data.knowledge import Knowledge
from adcopilot.data.masks import describe_regions
from adcopilot.data.questions import LabelledItem
from adcopilot.data.samples import (
    ItemFacts,
    caption_sample,
    comparison_sample,
    localization_sample,
    make_samples,
    vqa_sample,
)


@pytest.fixture(scope="module")
def kb() -> Knowledge:
    return Knowledge.load()


def _facts(category="tile", defect="crack", bright=False, split="train", before=None) -> ItemFacts:
    img = np.full((100, 120, 3), 128, np.uint8)
    mask = np.zeros((100, 120), bool)
    mask[10:14, 70:110] = True  # a thin horizontal line at the top right
    img[mask] = 230 if bright else 20
    facts = describe_regions(img, mask)
    boxes = [r["bbox_2d"] for r in facts["regions"]]
    item = LabelledItem("/d/q.png", category, defect, None, (120, 100), boxes)
    return ItemFacts(item, key="set/q.png", split=split, references=["/d/ref.png"], facts=facts, before=before)


def _answers(s: dict) -> list[str]:
    return [t["content"] for t in s["turns"] if t["role"] == "assistant"]


def test_caption_shape_and_facts(kb):
    s = caption_sample(_facts(), kb, np.random.default_rng(0))
    cap = json.loads(_answers(s)[0])
    assert set(cap) == {"description", "defect_details", "defect_description"}
    assert cap["defect_details"] == [{"bbox_2d": [70, 10, 110, 14], "label": "Crack"}]
    assert cap["description"].lower().startswith(kb.object("tile").description.lower())
    text = cap["defect_description"]
    assert text.startswith("In the second image, there is a crack on the tile, at the top right of the image.")
    assert "elongated" in text and "horizontally" in text and "darker" in text and "brighter" not in text
    assert s["boxes"] == cap["defect_details"] and s["image_size"] == [120, 100]
    assert validate_sample(s) == []


def test_measured_brightness_is_stated_not_assumed(kb):
    s = caption_sample(_facts(bright=True), kb, np.random.default_rng(0))
    text = json.loads(_answers(s)[0])["defect_description"]
    assert "brighter" in text and "darker" not in text


def test_localization_and_good_items(kb):
    s = localization_sample(_facts(), kb, np.random.default_rng(0))
    assert json.loads(_answers(s)[0]) == [{"bbox_2d": [70, 10, 110, 14], "label": "Crack"}]
    good = ItemFacts(LabelledItem("/d/g.png", "tile", None, None, (120, 100), None), "set/g.png", "train", ["/d/r.png"])
    assert json.loads(_answers(localization_sample(good, kb, np.random.default_rng(0)))[0]) == []
    cap = json.loads(_answers(caption_sample(good, kb, np.random.default_rng(0)))[0])
    assert cap["defect_details"] == [] and "no defect" in cap["defect_description"]
    assert "neither has a defect" in _answers(comparison_sample(good, kb, np.random.default_rng(0)))[0]


def test_label_only_item_states_no_place_or_shape(kb):
    f = ItemFacts(LabelledItem("/d/q.png", "tile", "crack", None, (120, 100), None), "set/q.png", "train", ["/d/r.png"])
    assert caption_sample(f, kb, np.random.default_rng(0)) is None
    assert localization_sample(f, kb, np.random.default_rng(0)) is None
    for seed in range(20):
        s = vqa_sample(f, kb, np.random.default_rng(seed))
        questions = " ".join(t["content"] for t in s["turns"] if t["role"] == "user")
        assert "Where" not in questions and "shape" not in questions and "How large" not in questions
        assert validate_sample(s) == []


def test_unknown_defect_gets_no_invented_cause_or_verdict(kb):
    f = _facts(category="gizmo", defect="zorblax")
    for seed in range(30):
        s = vqa_sample(f, kb, np.random.default_rng(seed))
        text = " ".join(_answers(s))
        assert "caused" not in text and "consequence" not in text.lower() and "reject" not in text
        assert "zorblax defect" in _answers(s)[0]


def test_vqa_turns_and_first_question(kb):
    s = vqa_sample(_facts(), kb, np.random.default_rng(3))
    assert 3 <= len(s["turns"]) // 2 <= 6
    assert "difference" in s["turns"][0]["content"] or "differ" in s["turns"][0]["content"]
    assert _answers(s)[0] == "The second image shows a crack at the top right of the image that the normal sample does not have."


def test_comparison_of_an_exact_pair(kb):
    s = comparison_sample(_facts(before="/d/before.png"), kb, np.random.default_rng(0))
    assert s["references"] == ["/d/before.png"]
    assert "otherwise the two images are identical" in _answers(s)[0]
    s2 = comparison_sample(_facts(), kb, np.random.default_rng(0))
    assert s2["references"] == ["/d/ref.png"] and "identical" not in _answers(s2)[0]


def test_make_samples_all_tasks_valid_and_deterministic(kb):
    a = make_samples(_facts(), kb, np.random.default_rng(0), defect_names=["crack", "oil"])
    b = make_samples(_facts(), kb, np.random.default_rng(0), defect_names=["crack", "oil"])
    assert a == b
    assert {s["task"] for s in a} == {"caption", "vqa", "localization", "mcq", "comparison"}
    assert len({s["id"] for s in a}) == len(a)
    for s in a:
        assert validate_sample(s) == []
        if s["task"] == "mcq":
            assert s["turns"][-1]["content"] == s["answer"] and s["answer"] in s["options"]
            assert all(f"{k}. {v}" in s["turns"][0]["content"] for k, v in s["options"].items())


def test_validation_catches_bad_boxes_and_letters(kb):
    s = localization_sample(_facts(), kb, np.random.default_rng(0))
    s["turns"][-1]["content"] = json.dumps([{"bbox_2d": [70, 10, 130, 14], "label": "Crack"}])
    assert any("not inside" in p for p in validate_sample(s))
    m = [x for x in make_samples(_facts(), kb, np.random.default_rng(0)) if x["task"] == "mcq"][0]
    m["answer"] = "E"
    assert any("not an option" in p for p in validate_sample(m))
