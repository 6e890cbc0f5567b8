"""Which questions the detector answers itself, and the letters it gives."""

from __future__ import annotations

import math

import numpy as np
import pytest

from adcopilot.grounding import (
    defect_facts,
    detector_choice,
    free_defect_question,
    identity_question,
    knowledge_question,
    names_the_object,
    object_question,
    predicted_cells,
    question_kind,
    strongest_box,
)
from adcopilot.results import Box, InspectionResult

YES_NO = {"A": "Yes.", "B": "No."}
REGIONS = {"A": "Top left.", "B": "Center.", "C": "Bottom right.", "D": "Top."}


def result(anomalous: bool, boxes: list[list[int]] = (), peak: tuple[int, int] | None = None) -> InspectionResult:
    amap = np.zeros((90, 90), np.float32)
    if peak is not None:
        amap[peak] = 1.0
    return InspectionResult(
        query="q.png", references=["r.png"], verdict="anomalous" if anomalous else "normal", score=0.0,
        threshold=0.5, boxes=[Box(bbox_2d=list(b)) for b in boxes], image_size=(90, 90), anomaly_map=amap,
    )


def test_question_kinds():
    assert question_kind("Is there any defect in the object?", YES_NO) == "defect"
    assert question_kind("Compared with the normal sample, is the query object defective?", {"A": "No", "B": "Yes"}) == "defect"
    assert question_kind("Is the object normal?", YES_NO) == "defect"
    assert question_kind("Where is the defect located in the image?", REGIONS) == "location"
    # Not the detector's: a region-specific yes/no, a yes/no about something else, a type question.
    assert question_kind("Is there a defect at the top left?", YES_NO) is None
    assert question_kind("Is the object made of metal?", YES_NO) is None
    assert question_kind("What type of defect is present?", {"A": "Scratch.", "B": "Hole."}) is None
    assert question_kind("Where is the defect?", {"A": "Scratch.", "B": "Hole."}) is None
    assert question_kind("Is there any defect?", {"A": "Yes.", "B": "No.", "C": "Maybe."}) is None


def test_defect_answers_follow_the_verdict_and_the_question_polarity():
    assert detector_choice(result(True), "Is there any defect?", YES_NO) == "A"
    assert detector_choice(result(False), "Is there any defect?", YES_NO) == "B"
    assert detector_choice(result(True), "Is the object normal?", YES_NO) == "B"
    assert detector_choice(result(False), "Is the object normal?", {"A": "No.", "B": "Yes."}) == "B"
    # Negated defect words: "Yes" claims normality.
    for q in ("Is the part free of defects?", "Is there no defect in the object?", "Is the surface without any damage?"):
        assert detector_choice(result(True), q, YES_NO) == "B", q
        assert detector_choice(result(False), q, YES_NO) == "A", q


@pytest.mark.parametrize(
    ("question", "yes_is_defect"),
    [
        ("Does this image show a faulty product?", True),
        ("Is the product broken?", True),
        ("Is there something wrong with this sample?", True),
        ("Are there any irregularities on the surface?", True),
        ("Does the query image differ from the reference?", True),
        ("Should this part be rejected?", True),
        ("Is this part OK?", False),
        ("Would this product pass quality inspection?", False),
        ("Is the item acceptable?", False),
        ("Does the product look fine?", False),
        ("Is the cell usable?", False),
        ("Can this part be shipped?", False),
        ("Is the product defect-free?", False),
        ("Is the product free from any problems?", False),
        ("Is there no problem with it?", False),
        ("Should we scrap this unit?", True),
        ("Should this board be reworked?", True),
        ("Is it NG?", True),
        ("Should I throw it away?", True),
        ("Would you ship this part?", False),
        ("Can I use this part?", False),
        ("Would you sell this item?", False),
        ("Is anything missing?", True),
        ("Are there foreign objects on it?", True),
        ("Is the print misaligned?", True),
        ("Is this bad?", True),
        ("Is the part fine?", False),
        ("Is the surface clean?", False),
        ("Does it meet the spec?", False),
    ],
)
def test_an_inspectors_own_wording_of_the_verdict_question_is_answered_by_the_verdict(question, yes_is_defect):
    assert question_kind(question, YES_NO) == "defect"
    assert detector_choice(result(True), question, YES_NO) == ("A" if yes_is_defect else "B")
    assert detector_choice(result(False), question, YES_NO) == ("B" if yes_is_defect else "A")


@pytest.mark.parametrize("question", ["Which side of the object has the defect?", "In what area is the defect?",
                                      "Which quadrant shows the defect?", "What part of the image shows the defect?",
                                      "In which portion of the image does the defect appear?"])
def test_an_inspectors_own_wording_of_where_is_answered_from_the_boxes(question):
    assert question_kind(question, REGIONS) == "location"


@pytest.mark.parametrize("question", ["Is this part OK?", "Would it pass inspection?", "Should this part be rejected?",
                                      "Will this sample be accepted as good?", "Can the item be called normal?",
                                      "Would you ship this part?", "Should this unit be scrapped?"])
def test_a_free_verdict_question_in_an_inspectors_words_starts_with_the_verdict(question):
    from adcopilot.grounding import free_defect_question, grounded_start, object_question

    assert free_defect_question(question) and not object_question(question)
    yes_is_defect = "reject" in question or "scrap" in question
    assert grounded_start(result(True), question) == ("Yes." if yes_is_defect else "No.")
    assert grounded_start(result(False), question) == ("No." if yes_is_defect else "Yes.")


def test_yes_no_questions_about_something_else_stay_with_the_language_model():
    for q in ("Is the object made of metal?", "Is this a screw?", "Is the problem at the top left?",
              "Does the sample contain contamination?"):  # a defect type: the verdict alone cannot say
        assert question_kind(q, YES_NO) is None, q
    assert question_kind("What part is shown in the image?", {"A": "A screw.", "B": "A top left bracket."}) is None


def test_location_answers_from_boxes_or_the_peak():
    r = result(True, boxes=[[0, 0, 20, 20]])
    assert predicted_cells(r) == ["top left"]
    assert detector_choice(r, "Where is the defect located?", REGIONS) == "A"
    r = result(True, peak=(80, 85))  # no box: the map's peak, bottom right
    assert detector_choice(r, "Where is the defect located?", REGIONS) == "C"
    assert detector_choice(r, "What type of defect is present?", {"A": "Scratch.", "B": "Hole."}) is None


def test_free_answers_start_with_the_verdict():
    from adcopilot.grounding import grounded_start, verdict_question

    assert verdict_question("Is there any defect in the object?")
    assert verdict_question("Does this part look normal?")
    assert not verdict_question("What kind of defect is it?")
    assert not verdict_question("Is there a defect at the bottom left?")
    assert not verdict_question("Is the crack fine?")  # fine as in thin: the type head, not the verdict
    assert grounded_start(result(True), "Is there any defect?") == "Yes."
    assert grounded_start(result(False), "Is there any defect?") == "No."
    assert grounded_start(result(True), "Does this part look normal?") == "No."
    assert grounded_start(result(True), "Describe the defect.") == ""


LABELS = ["Contamination", "Crack", "Dark Region", "Extra Material", "Hole", "Missing Material", "Pitting", "Scratch",
          "Stain"]


def test_options_are_matched_to_trained_defect_labels():
    from adcopilot.grounding import option_label

    expect = {"Stain.": "Stain", "Metal contamination": "Contamination", "Scratches": "Scratch", "Cracks": "Crack",
              "Missing": "Missing Material", "Pits": "Pitting", "Dark region.": "Dark Region",
              "Material missing.": "Missing Material"}
    for text, label in expect.items():
        assert LABELS[option_label(text, LABELS)] == label, text
    for text in ("Whole.", "Cut", "Broken large", "Glue", "a", "Material."):  # "Material": two labels fit
        assert option_label(text, LABELS) is None, text


def test_type_questions():
    from adcopilot.grounding import type_options

    opts = {"A": "Stain.", "B": "Hole.", "C": "Scratch.", "D": "Crack."}
    assert type_options("What type of defect is present in the object?", opts, LABELS) == {"A": 8, "B": 4, "C": 7, "D": 1}
    assert type_options("Which defect does the query show?", opts, LABELS) is not None
    assert type_options("What is the defect category?", opts, LABELS) is not None
    assert type_options("What is the defect in the query image?", opts, LABELS) is not None
    assert type_options("What is wrong with the part?", opts, LABELS) is not None  # an inspector's words
    assert type_options("What problem does the surface show?", opts, LABELS) is not None
    assert type_options("What is the object made of?", opts, LABELS) is None  # not about a defect
    assert type_options("Where is the defect?", opts, LABELS) is None  # not a type question
    assert type_options("What type of defect is present?", {**opts, "D": "Glue."}, LABELS) is None  # unknown label
    assert type_options("What type of defect is present?", {"A": "Stain.", "B": "Stains."}, LABELS) is None  # same label
    assert type_options("What type of defect is present?", opts, []) is None


def test_question_kinds_for_knowledge_objects_and_free_answers():
    labels = ["Stain", "Hole"]
    look = {"A": "A blotch left by a liquid.", "B": "A small round opening."}
    assert knowledge_question("What is the most likely cause of this defect?", look, labels)
    assert knowledge_question("How does the defect look?", look, labels)
    assert not knowledge_question("What type of defect is it?", {"A": "Stain.", "B": "Hole."}, labels)  # the type head's
    assert not knowledge_question("Where is the defect?", {"A": "Top.", "B": "Center."}, labels)
    assert not knowledge_question("Is there a defect?", {"A": "Yes.", "B": "No."}, labels)
    assert not knowledge_question("What is this object used for?", look, labels)
    assert object_question("Which object is being inspected?") and not object_question("Is the object defective?")
    assert names_the_object("Which object is being inspected?", {"A": "Gravel.", "B": "Metal nut."})
    assert not names_the_object("What does the surface of the object look like?", {"A": "Grey rock.", "B": "Steel."})
    assert not names_the_object("Which object is shown?", {"A": "Loose angular stones packed together in rows."})
    for q in ("What is the defect and where is it?", "Where is it?", "How large is the damage?", "What is wrong?",
              "Is the part normal?", "Compare the two images.", "Compare the part with the reference.",
              "How severe is it?", "How bad is the damage?", "What do you see?", "Explain the result.",
              "Any visible issues?", "What should I do with this part?"):
        assert free_defect_question(q), q
        assert not object_question(q), q
    assert not free_defect_question("What is this object used for?")
    assert identity_question("What is this object?") and identity_question("Which product is being inspected?")
    for q in ("What is this object made of?", "What is the object used for?", "Is the object defective?"):
        assert not identity_question(q), q


def test_defect_facts():
    r = result(anomalous=True, boxes=[[40, 40, 60, 60], [0, 0, 10, 10]])
    r.boxes[1].score = 0.9
    assert strongest_box(r) is r.boxes[1]
    assert defect_facts(r, "Scratch") == ("Scratch at the top left of the image, box [0, 0, 10, 10], about 1.2% of "
                                          "the image; 2 defect regions in all.")
    normal = result(anomalous=False, boxes=[])
    assert defect_facts(normal, "Scratch").startswith("No defect") and "Scratch" not in defect_facts(normal, "Scratch")
    assert "no compact defect region" in defect_facts(result(anomalous=True, boxes=[]), None)


def test_yes_no_questions_on_the_defects_type_place_and_size():
    from adcopilot.grounding import grounded_start, named_label, region_question

    labels = ["Crack", "Dark Region", "Scratch", "Missing Material"]
    assert named_label("Is it a scratch?", labels) == 2
    assert named_label("Are these cracks?", labels) == 0
    assert named_label("Is there missing material?", labels) == 3
    assert named_label("Is it a dark region?", labels) == 1
    assert named_label("What is the scratch?", labels) is None  # not a yes/no question
    assert named_label("Is the region dark?", labels) == 1  # both words of the label
    assert named_label("Is it a stain?", labels) is None
    assert named_label("Is the scratch deep?", labels) is None  # its size: the facts answer with a figure
    assert region_question("Is the defect in the center?") == ["center"]
    assert region_question("Is it at the top right?") == ["top right"]
    assert region_question("Is the object round?") == []
    top_left = result(True, boxes=[[0, 0, 20, 20]])  # a 90 x 90 image: the top left cell
    assert grounded_start(top_left, "Is the defect at the top left?") == "Yes."
    assert grounded_start(top_left, "Is it in the center?") == "No."
    assert grounded_start(result(False), "Is it at the top left?") == "No."
    assert grounded_start(top_left, "Is the defect large?") == ""  # the facts give its size
    assert grounded_start(top_left, "Is there a defect?") == "Yes."


def test_how_many_defects_is_answered_by_the_number_of_boxes():
    from adcopilot.grounding import count_choice, count_options

    opts = {"A": "None.", "B": "One.", "C": "Two.", "D": "Three or more."}
    counts = count_options("How many defects are visible?", opts)
    assert counts == {"A": (0, 0), "B": (1, 1), "C": (2, 2), "D": (3, math.inf)}
    assert count_choice(result(False), counts) == "A"
    assert count_choice(result(True, boxes=[[0, 0, 9, 9]]), counts) == "B"
    assert count_choice(result(True), counts) == "B"  # anomalous with no compact region: still one defect
    assert count_choice(result(True, boxes=[[0, 0, 9, 9]] * 4), counts) == "D"
    assert count_options("What is the number of anomalous regions?", {"A": "1", "B": "more than 1"}) == {
        "A": (1, 1), "B": (2, math.inf)}
    assert count_options("How many defects are there?", {"A": "Several.", "B": "No defect.", "C": "A few."}) == {
        "A": (2, math.inf), "B": (0, 0), "C": (2, math.inf)}
    assert count_options("How many defects are there?", {"A": "Scratches.", "B": "One."}) is None  # not all counts
    assert count_options("How many legs does the transistor have?", {"A": "Two.", "B": "Three."}) is None


def test_the_option_saying_there_is_no_defect():
    from adcopilot.grounding import no_defect_option

    assert no_defect_option({"A": "It has a stain.", "B": "Nothing.", "C": "A hole."}) == "B"
    assert no_defect_option({"A": "There is no defect.", "B": "A crack."}) == "A"
    assert no_defect_option({"A": "The part is normal.", "B": "A crack."}) == "A"
    assert no_defect_option({"A": "A crack.", "B": "A hole."}) is None
    assert no_defect_option({"A": "None.", "B": "Nothing."}) is None  # two such options: not one answer


def test_a_free_how_many_starts_with_the_number_of_regions():
    from adcopilot.grounding import free_defect_question, grounded_start

    assert free_defect_question("How many defects are there?")
    assert grounded_start(result(False), "How many defects are there?") == "None."
    assert grounded_start(result(True, boxes=[[0, 0, 9, 9]]), "How many defects are there?") == "One."
    assert grounded_start(result(True, boxes=[[0, 0, 9, 9]] * 5), "What is the number of defects?") == "5."


def test_what_is_it_made_of_is_about_the_object_even_without_naming_it():
    from adcopilot.grounding import object_question

    assert object_question("What is it made of?") and object_question("What is this used for?")
    assert object_question("What material is it?")
    assert not object_question("What is the defect made of?") and not object_question("Is it OK?")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("What kind of defect is it? A: crack B: scratch C: dark region",
         ("What kind of defect is it?", {"A": "crack", "B": "scratch", "C": "dark region"})),
        ("Question: Is there any defect in the object?\nA. Yes.\nB. No.\n",
         ("Is there any defect in the object?", {"A": "Yes.", "B": "No."})),
        ("Where is it?\n(A) top left\n(B) center", ("Where is it?", {"A": "top left", "B": "center"})),
        ("Is it defective? Options: A) Yes, B) No", ("Is it defective?", {"A": "Yes", "B": "No"})),
        ("Question: Is the part normal?\nOptions:\nA. Yes\nB. No\nAnswer with the option's letter from the given choices.",
         ("Is the part normal?", {"A": "Yes", "B": "No"})),
        ("Is this a grade A. part?", None),  # one letter is no choice
        ("Should we follow plan A: rework it, or plan B: scrap it?", None),  # not after the question's end
        ("Is the defect in area A. B. or C.?", None),  # an empty option
        ("A. yes B. no", None),  # no question
        ("Which? A. one A. two", None),  # the letters do not run on
        ("Is the scratch longer than the crack?", None),
    ],
)
def test_options_written_into_a_question_are_read(text, expected):
    from adcopilot.grounding import question_options

    assert question_options(text) == expected


def test_a_refused_query_is_said_to_be_one_and_a_score_question_gets_the_score():
    from adcopilot.grounding import free_defect_question, score_question, score_sentence

    refused = result(anomalous=True, boxes=[[0, 0, 10, 10]])
    refused.image_check = "blank image"
    facts = defect_facts(refused, "Scratch")
    assert facts.startswith("Not inspected as the product: blank image") and "Scratch" not in facts
    assert "anomalous all the same" in score_sentence(refused)  # its score is 0, below the threshold
    for q in ("How confident are you?", "What's the anomaly score?", "Are you sure?", "How likely is a defect?"):
        assert score_question(q) and free_defect_question(q), q
    assert not score_question("Where is the defect?")
    r = result(anomalous=True, boxes=[[0, 0, 10, 10]])
    r.score = 0.8
    assert score_sentence(r) == "The anomaly score is 0.80, above the threshold 0.50 (anomalous)."
