"""MMAD-style multiple-choice questions: types, answers, distractors, balance, determinism."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from adcopilot.data.knowledge import Knowledge, normalise
from adcopilot.data.questions import (
    MMAD_SUBTASK,
    MMAD_TYPES,
    LabelledItem,
    LetterBalancer,
    format_mcq,
    mmad_conversation,
    neighbour_cells,
)


@pytest.fixture(scope="module")
def kb() -> Knowledge:
    return Knowledge.load()


def _mask(box, size=(90, 90)) -> np.ndarray:
    m = np.zeros(size[::-1], np.uint8)
    x1, y1, x2, y2 = box
    m[y1:y2, x1:x2] = 255
    return m


def _correct(entry) -> str:
    return entry["Options"][entry["Answer"]]


def test_anomalous_item_gets_all_types_with_correct_answers(kb):
    item = LabelledItem("q.png", "bottle", "broken_large", _mask((62, 5, 85, 20)), (90, 90), None)
    conv = mmad_conversation(item, kb, np.random.default_rng(0), defect_names=["broken_small", "contamination"])
    assert [e["type"] for e in conv] == MMAD_TYPES
    assert {MMAD_SUBTASK[e["type"]] for e in conv} == set(MMAD_SUBTASK.values()) and len(set(MMAD_SUBTASK.values())) == 7
    by = {e["type"]: e for e in conv}
    assert _correct(by["Anomaly Detection"]) == "Yes."
    assert _correct(by["Defect Classification"]) == "Broken."
    # broken_small is the same type: it must not appear as a wrong option; contamination should.
    assert "Contamination." in by["Defect Classification"]["Options"].values()
    assert _correct(by["Defect Localization"]) == "Top right."
    wrong = [v for k, v in by["Defect Localization"]["Options"].items() if k != by["Defect Localization"]["Answer"]]
    assert all(normalise(w.rstrip(".")) in neighbour_cells("top right") for w in wrong)
    broken = kb.defect("broken")
    assert _correct(by["Defect Description"]).rstrip(".").lower() == broken.description.lower()
    assert _correct(by["Defect Analysis"]).rstrip(".").lower() in [x.lower() for x in broken.causes + broken.effects]
    assert _correct(by["Object Classification"]) == "Bottle."
    assert _correct(by["Object Structure"]).rstrip(".").lower() == kb.object("bottle").structure.lower()
    for e in conv:
        assert e["Answer"] in e["Options"]
        texts = [normalise(t) for t in e["Options"].values()]
        assert len(set(texts)) == len(texts), e  # no duplicate options
        assert len(e["Options"]) == (2 if e["type"] == "Anomaly Detection" else 4)
        assert isinstance(e["annotation"], bool) and isinstance(e["Question"], str)


def test_normal_item_gets_detection_and_object_questions_only(kb):
    item = LabelledItem("g.png", "screw", None, None, (90, 90), None)
    conv = mmad_conversation(item, kb, np.random.default_rng(1))
    assert [e["type"] for e in conv] == ["Anomaly Detection", "Object Classification", "Object Structure",
                                         "Object Details", "Object Analysis"]
    assert _correct(conv[0]) == "No."


def test_questions_left_out_when_facts_are_missing(kb):
    # image-level label only: no localization
    conv = mmad_conversation(LabelledItem("q.png", "tile", "crack", None, (90, 90), None), kb, np.random.default_rng(0))
    assert "Defect Localization" not in [e["type"] for e in conv]
    assert "Defect Classification" in [e["type"] for e in conv]
    # generic label: nothing about its kind; unknown class: only the object's name
    conv = mmad_conversation(LabelledItem("q.png", "gizmo", "defective", None, (90, 90), [[1, 1, 9, 9]]), kb,
                             np.random.default_rng(0))
    assert [e["type"] for e in conv] == ["Anomaly Detection", "Defect Localization", "Object Classification"]
    assert _correct(conv[-1]) == "Gizmo."
    # defects in more than two cells: no localization question
    boxes = [[0, 0, 10, 10], [80, 80, 90, 90], [40, 0, 50, 10]]
    conv = mmad_conversation(LabelledItem("q.png", "tile", "crack", None, (90, 90), boxes), kb, np.random.default_rng(0))
    assert "Defect Localization" not in [e["type"] for e in conv]


def test_two_cells_answer(kb):
    boxes = [[0, 0, 20, 20], [70, 70, 90, 90]]
    item = LabelledItem("q.png", "tile", "crack", None, (90, 90), boxes)
    (loc,) = [e for e in mmad_conversation(item, kb, np.random.default_rng(0)) if e["type"] == "Defect Localization"]
    assert _correct(loc) in ("Top left and bottom right.", "Bottom right and top left.")
    assert all(" and " in v for v in loc["Options"].values())


def test_letters_balanced_and_deterministic(kb):
    bal = LetterBalancer()
    counts: dict[int, Counter] = {2: Counter(), 4: Counter()}
    for i in range(40):
        item = LabelledItem(f"{i}.png", "wood", ["hole", "scratch", None][i % 3], _mask((10, 10, 30, 30)), (90, 90), None)
        for e in mmad_conversation(item, kb, np.random.default_rng(i), defect_names=["hole", "scratch", "color"],
                                   balancer=bal):
            counts[len(e["Options"])][e["Answer"]] += 1
    for c in counts.values():
        assert max(c.values()) - min(c.values()) <= 1, c
    item = LabelledItem("q.png", "wood", "hole", _mask((10, 10, 30, 30)), (90, 90), None)
    a = mmad_conversation(item, kb, np.random.default_rng(5))
    b = mmad_conversation(item, kb, np.random.default_rng(5))
    c = mmad_conversation(item, kb, np.random.default_rng(6))
    assert a == b and a != c


def test_format_mcq():
    text = format_mcq("Is there any defect?", {"A": "Yes.", "B": "No."})
    assert text.splitlines() == ["Is there any defect?", "A. Yes.", "B. No.",
                                 "Answer with the option's letter from the given choices directly."]


@pytest.mark.parametrize("category,shown", [("plates", "plate"), ("batteries", "battery"), ("glass", "glass"),
                                            ("pcb3", "PCB"), ("metal_nut", "metal nut"), ("capsules", "capsules")])
def test_object_names_in_sentences(kb, category, shown):
    from adcopilot.data.questions import object_display

    assert object_display(category, kb) == shown


def test_analysis_distractors_are_not_second_right_answers(kb):
    from adcopilot.data.questions import _words

    for name, d in kb.defects.items():
        if not (d.causes or d.effects) or name in ("defect", "combined"):
            continue
        item = LabelledItem("q.png", "bottle", name, None, (90, 90), None)
        for seed in range(4):
            (q,) = [e for e in mmad_conversation(item, kb, np.random.default_rng(seed)) if e["type"] == "Defect Analysis"]
            truths = d.causes if normalise(_correct(q).rstrip(".")) in [normalise(c) for c in d.causes] else d.effects
            for letter, text in q["Options"].items():
                if letter != q["Answer"]:
                    assert all(not (_words(text) & _words(t)) for t in truths), (name, text, truths)
