"""The nano/baseline backend rules: yes/no polarity, region options, answers from inspection."""

from __future__ import annotations

import json

import pytest

from adcopilot.api import Copilot
from adcopilot.errors import AdcopilotError
from adcopilot.eval.backends import (
    CopilotBackend,
    make_backend,
    option_cells,
    pick_region_option,
    smart_resize,
    yes_means_defect,
    yes_no_letters,
)
from adcopilot.eval.mmad import load_mmad
from adcopilot.model.baseline import NearestPatchDetector
from adcopilot.model.vision import load_vision_tower


@pytest.fixture(scope="module")
def tiny_copilot() -> Copilot:
    # Random-weight tower: identical images give a zero map, a blacked-out square does not.
    detector = NearestPatchDetector(tower=load_vision_tower(pretrained=False), image_size=64, threshold=1e-4)
    return Copilot(detector, registration=False)


def test_option_cells_and_region_choice():
    assert option_cells("Top left.") == ["top left"]
    assert option_cells("Upper-left and centre.") == ["top left", "center"]
    assert option_cells("In the middle of the image") == ["center"]
    assert option_cells("Yes.") == []
    opts = {"A": "Top.", "B": "Top left.", "C": "Bottom right.", "D": "Center."}
    assert pick_region_option(["top left"], opts) == "B"
    assert pick_region_option(["left"], opts) == "B"  # nearest cell on the grid
    two = {"A": "Top left and top.", "B": "Top left and center.", "C": "Bottom."}
    assert pick_region_option(["center", "top left"], two) == "B"
    assert pick_region_option(["top left"], {"A": "Yes.", "B": "No."}) == ""


def test_yes_no_polarity():
    assert yes_no_letters({"A": "No.", "B": "Yes."}) == ("B", "A")
    assert yes_means_defect("Is there any defect in the object?")
    assert yes_means_defect("Compared with the normal sample, is the query object defective?")
    assert not yes_means_defect("Is the object normal?")


def test_smart_resize_matches_qwen_rule():
    assert smart_resize(64, 64) == (56, 56)
    assert smart_resize(1024, 1024) == (980, 980)  # 37 x 37 patches > 1280: scaled down
    w, h = smart_resize(2000, 500)
    assert w % 28 == 0 and h % 28 == 0 and w * h <= 28 * 28 * 1280


def test_answers_detection_and_localization_from_inspection(tiny_copilot, small_bench):
    be = CopilotBackend("baseline", copilot=tiny_copilot)
    bench = load_mmad(small_bench)
    for item in bench.items:
        images = [*bench.references(item, 1), bench.query(item)]
        for q in item.questions:
            reply = be.answer(images, q)
            if q.type == "Anomaly Detection":
                assert reply == q.answer  # the black square is found, the copies are normal
            elif q.type == "Defect Localization":
                assert reply in q.options
            else:
                assert reply == ""  # no language model
    bad = bench.items[0]
    ans = be.boxes([*bench.references(bad, 1), bench.query(bad)])
    boxes = json.loads(ans.text)
    assert boxes and all(len(b["bbox_2d"]) == 4 for b in boxes)
    good = bench.items[3]
    assert json.loads(be.boxes([*bench.references(good, 1), bench.query(good)]).text) == []
    with pytest.raises(AdcopilotError, match="--k-shot 1 or more"):
        be.answer([bench.query(bad)], bad.questions[0])


def test_nano_needs_a_checkpoint(tmp_path):
    with pytest.raises(AdcopilotError, match="no such model"):
        make_backend("nano", str(tmp_path / "absent"))
