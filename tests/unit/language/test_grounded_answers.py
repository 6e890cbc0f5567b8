"""Answers composed from the inspection, knowledge-matched options and the product context."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from adcopilot.api import AnsweringCopilot
from adcopilot.data.knowledge import Knowledge
from adcopilot.errors import AdcopilotError
from adcopilot.language.knowledge_match import LexicalMatcher, choose_by_knowledge, make_matcher
from adcopilot.language.nano_language import NanoLanguage
from adcopilot.language.visual import VisualEncoder
from adcopilot.results import Box, InspectionResult
from adcopilot.serve.app import create_app

LOOK = {  # descriptions of the built-in taxonomy's crack, stain and hole, in other words
    "A": "A blotch from a liquid or dirt, darker than the surface, with soft edges.",
    "B": "A thin sharp-edged line where the material has split, often branching.",
    "C": "A small round opening into the surface.",
}


@pytest.fixture
def copilot(model, detector):
    lang = NanoLanguage(model=model, encoder=VisualEncoder(detector, registration=False))
    return AnsweringCopilot(detector, lang, registration=False, threshold=0.0)


def force_type(copilot: AnsweringCopilot, index: int) -> None:
    """Make the tiny type head say label ``index`` (crack 0, stain 1, hole 2) in every cell."""
    head = copilot.language.model.projectors.type_head[1]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.nn.functional.one_hot(torch.tensor(index), 3).float() * 8)


def result(verdict: str, boxes: list[Box]) -> InspectionResult:
    return InspectionResult(query="q.png", references=["r.png"], verdict=verdict, score=0.8 if boxes else 0.1,
                            threshold=0.5, boxes=boxes, image_size=(64, 64))


def test_free_defect_answers_state_inspects_facts(copilot, pair_images):
    q, r = pair_images
    force_type(copilot, 1)  # stain
    boxes = [Box([40, 40, 60, 60], score=0.4), Box([2, 2, 18, 18], score=0.9)]  # the strongest: top left
    answer = copilot.ask(q, [r], "What is the defect and where is it?", result=result("anomalous", boxes))
    assert answer.startswith("Stain at the top left of the image, box [2, 2, 18, 18], about 6.2% of the image; "
                             "2 defect regions in all.")
    assert "blotch" in answer  # what the knowledge says about stains
    force_type(copilot, 2)
    answer = copilot.ask(q, [r], "Is there a defect?", result=result("anomalous", boxes[:1]))
    assert answer.startswith("Yes. Hole at the bottom right of the image") and "regions in all" not in answer


def test_what_the_inspection_says_is_streamed_before_the_visual_inputs_are_computed(copilot, pair_images):
    q, r = pair_images
    force_type(copilot, 2)
    boxes = [Box([40, 40, 60, 60], score=0.9)]
    pieces = copilot.ask_stream(q, [r], "Is there a defect?", result=result("anomalous", boxes))
    assert next(pieces) == "Yes." and copilot.language._visual == {}  # the type head has not run yet
    rest = "".join(pieces)
    assert rest.startswith(" Hole at the bottom right of the image") and len(copilot.language._visual) == 1
    assert "Yes." + rest == copilot.ask(q, [r], "Is there a defect?", result=result("anomalous", boxes))
    # A normal verdict needs nothing but the inspection: one piece, no visual inputs.
    copilot.language._visual.clear()
    assert list(copilot.ask_stream(q, [r], "Is it normal?", result=result("normal", []))) == [
        "Yes. No defect: the query matches the normal reference (score 0.10, below the threshold 0.50)."]
    assert copilot.language._visual == {}


def test_a_normal_verdict_is_never_a_defect(copilot, pair_images):
    q, r = pair_images
    force_type(copilot, 1)
    normal = result("normal", [])
    for question in ("What is the defect and where is it?", "Is there a defect?", "How large is the damage?"):
        answer = copilot.ask(q, [r], question, result=normal)
        assert "No defect" in answer and "Stain" not in answer and "stain" not in answer
    assert copilot.ask(q, [r], "Is the part normal?", result=normal).startswith("Yes. No defect")
    assert json.loads(copilot.ask(q, [r], "Output the bounding boxes as JSON.", result=normal)) == []


@pytest.mark.parametrize("matcher", ["lexical", "auto"])  # auto: the embeddings where installed
def test_description_and_analysis_options_follow_the_type_head(copilot, pair_images, matcher, monkeypatch):
    monkeypatch.setenv("ADCOPILOT_TEXT_MATCHER", matcher)
    assert copilot.matcher.name == (matcher if matcher == "lexical" else make_matcher("auto").name)
    q, r = pair_images
    for index, letter in ((0, "B"), (1, "A"), (2, "C")):
        force_type(copilot, index)
        assert copilot.answer_choice(q, r, "What does the defect look like?", LOOK) == letter
    cause = {"A": "Spilled or dripping liquid.", "B": "A puncture by a sharp object.", "C": "Thermal stress during cooling."}
    force_type(copilot, 2)
    assert copilot.answer_choice(q, r, "What is the most likely cause of this defect?", cause) == "B"
    force_type(copilot, 0)
    assert copilot.answer_choice(q, r, "What is the most likely cause of this defect?", cause) == "C"


def test_mmad_domain_knowledge_format(tmp_path):
    path = tmp_path / "domain_knowledge.json"
    path.write_text(json.dumps({"DS": {"widget": {
        "good": " <Normal>\n Description: A blue anodised disc with six bolt holes.",
        "combined": " <Widget Defects>\n Description: everything at once.",
        "bent_flange": " <Bent Flange>\n Description: The flange rim is folded upward, casting a long shadow.",
    }}}))
    kb = Knowledge.load([path])
    passages = kb.passages("bent_flange", product="widget")
    assert any("folded upward" in p.text and p.product == "widget" for p in passages)
    assert not any("everything at once" in p.text for p in kb.texts)
    assert any("six bolt holes" in p.text for p in kb.passages(None, "widget"))
    options = {"A": "The rim is folded upward.", "B": "A blotch of oil.", "C": "A round opening."}
    assert choose_by_knowledge({"bent flange": 0.9, "stain": 0.1}, options, kb, LexicalMatcher(), "widget") == "A"
    for bad, message in (("{", "malformed JSON"), ("[1]", "expected"), ('{"DS": {"w": {"x": 3}}}', "expected text"),
                         ('{"DS": {"w": {"combined": "x"}}}', "no knowledge texts")):
        path.write_text(bad)
        with pytest.raises(AdcopilotError, match=message):
            Knowledge.load([path])


def test_product_context_answers_object_questions(copilot, pair_images):
    q, r = pair_images
    names = {"A": "Zipper.", "B": "Bottle.", "C": "Metal nut."}
    assert copilot.answer_choice(q, r, "Which object is being inspected?", names, product="glass bottle") == "B"
    use = {"A": "Joins two edges of fabric.", "B": "Holds and dispenses liquids.", "C": "Fastens parts on a bolt."}
    assert copilot.answer_choice(q, r, "What is this object used for?", use, product="bottle") == "B"
    surface = {"A": "Brushed steel.", "B": "Green recycled plastic, matt.", "C": "Grey crushed rock."}
    assert copilot.answer_choice(q, r, "What does the surface of the object look like?", surface,
                                 product="crate", material="green recycled plastic") == "B"
    answer = copilot.ask(q, [r], "What is this object?", product="bottle", material="brown glass")
    assert answer.startswith("The references are labelled bottle (brown glass)")
    # A question on its use, build or material: that field of the product's entry, whatever sentence is closer.
    assert copilot.ask(q, [r], "What is it used for?", product="bottle") == \
        "The references are labelled bottle: holds and dispenses liquids."
    # Without the context: what the object looks like to the tower's ImageNet classifier.
    fc = copilot.language.encoder.tower._fc
    saved = fc.bias.detach().clone()
    try:
        with torch.no_grad():
            fc.bias.copy_(torch.nn.functional.one_hot(torch.tensor(967), 1000).float() * 50)  # espresso
        coffee = {"A": "Zipper.", "B": "Espresso.", "C": "Metal nut."}
        assert copilot.answer_choice(q, r, "Which object is being inspected?", coffee) == "B"
        assert copilot.answer_choice(q, r, "Which object is being inspected?", coffee, product="metal nut") == "C"
        said = copilot.ask(q, [r], "What is this object?")
        assert said.startswith("No product name was given; to the vision tower's ImageNet classifier it looks most "
                               "like espresso (100 %)"), said
        # What it is made of or for: nothing is known without the product's name, and the answer says so (the
        # language model made such answers up).
        assert copilot.ask(q, [r], "What is this object made of?", max_new_tokens=4).startswith(
            "No product name was given, so nothing is known here about what it is made of or for; to the vision "
            "tower's ImageNet classifier it looks most like espresso (100 %)")
    finally:
        with torch.no_grad():
            fc.bias.copy_(saved)


def test_matchers():
    assert make_matcher("lexical").name == "lexical"
    with pytest.raises(AdcopilotError, match="unknown text matcher"):
        make_matcher("bm25")
    sim = LexicalMatcher().similarity(["Spilled liquid."], ["spilling of liquids", "a crack"])
    assert sim.shape == (1, 2) and sim[0, 0] == pytest.approx(1.0) and sim[0, 1] == 0.0
    assert np.isfinite(sim).all()


def test_the_service_takes_the_product_context(copilot, pair_images):
    def png(a: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        return buf.getvalue()

    q, r = pair_images
    files = [("query", ("q.png", png(q), "image/png")), ("references", ("r.png", png(r), "image/png"))]
    with TestClient(create_app(copilot)) as client:
        ok = client.post("/v1/ask", files=files, data={"question": "What is this object?", "product": "bottle",
                                                       "material": "brown glass"})
        assert ok.status_code == 200, ok.text
        assert ok.json()["answer"].startswith("The references are labelled bottle (brown glass)")
        bad = client.post("/v1/ask", files=files, data={"question": "What is this object?", "material": "glass"})
        assert bad.status_code == 422 and "--product" in bad.text
