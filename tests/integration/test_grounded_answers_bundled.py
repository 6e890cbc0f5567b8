"""The shipped model's free answers name inspect's findings on every bundled held-out photo."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from adcopilot.api import AnsweringCopilot, Copilot


def _script():
    path = Path(__file__).parents[2] / "benchmarks" / "grounded_answers.py"
    spec = importlib.util.spec_from_file_location("grounded_answers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_free_answers_follow_the_inspection_on_the_bundled_photos():
    cp = Copilot.load("default")
    assert isinstance(cp, AnsweringCopilot)
    counts = _script().check(cp)
    assert counts["images"] == 120 and counts["anomalous_verdicts"] >= 20  # 31 at the default threshold
    assert counts["named_region_and_type"] == counts["anomalous_verdicts"], counts["failures"][:3]
    assert counts["normal_verdicts"] > 0 and counts["normal_described_as_defect"] == 0, counts["failures"][:3]


def test_an_inspectors_yes_no_questions_about_the_defect_follow_the_inspection():
    """A hole at the top right of a gravel photo (the defect-type head reads it as a hole): questions on its
    type, place and size, and on the verdict in an inspector's words, against a normal cup as well."""
    from adcopilot.eval.bundled import ensure_bundled

    photos = ensure_bundled(progress=False).parent / "HeldOut-Photos"
    cp = Copilot.load("default")
    hole = (photos / "gravel/test/hole/012.png", [photos / "gravel/train/good/007.png"])
    cup = (photos / "coffee_cup/test/good/000.png", [photos / "coffee_cup/train/good/000.png"])
    expected = {
        "Is it a hole?": ("Yes.", "No."), "Is it a scratch?": ("No.", "No."),
        "Is it at the top right?": ("Yes.", "No."), "Is the defect in the center?": ("No.", "No."),
        "Would it pass inspection?": ("No.", "Yes."), "Is this part OK?": ("No.", "Yes."),
        "Should it be rejected?": ("Yes.", "No."),
    }
    for question, (on_hole, on_cup) in expected.items():
        assert cp.ask(*hole, question).startswith(on_hole + " Hole at the top right"), question
        assert cp.ask(*cup, question) == f"{on_cup} No defect: the query matches the normal reference " \
            f"(score 0.08, below the threshold 0.50).", question  # the blended one-reference score (0.04 pooled)
    # Its size is a figure, not a yes or a no; its cause comes from what is known about holes.
    assert cp.ask(*hole, "Is the defect large?").startswith("Hole at the top right of the image, box [217, 0, 256, 33], about 2.0%")
    assert "What is known about it: material inclusion that fell out." in cp.ask(*hole, "What caused it?")
    # The same as multiple-choice questions (the type head and the boxes, not the verdict alone).
    yn = {"A": "Yes.", "B": "No."}
    for question, (on_hole, on_cup) in {"Is the defect a hole?": ("A", "B"), "Is the defect a scratch?": ("B", "B"),
                                        "Is there a defect at the top right?": ("A", "B"),
                                        "Is there a defect in the center?": ("B", "B")}.items():
        assert (cp.answer_choice(*hole, question, yn), cp.answer_choice(*cup, question, yn)) == (on_hole, on_cup), question
    counts = {"A": "None.", "B": "One.", "C": "Two.", "D": "Three or more."}
    assert cp.answer_choice(*hole, "How many defects are visible?", counts) == "B"
    assert cp.answer_choice(*cup, "How many defects are visible?", counts) == "A"
    wrong = {"A": "It has a stain.", "B": "It has a hole.", "C": "It is scratched.", "D": "Nothing."}
    assert cp.answer_choice(*cup, "What is wrong with the part?", wrong) == "D"  # the verdict is normal
