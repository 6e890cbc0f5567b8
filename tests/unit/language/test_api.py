"""Copilot.ask / answer_choice / localize / chat, the eval backend hook, and the chat command."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image

from adcopilot.api import AnsweringCopilot, Copilot
from adcopilot.cli import main
from adcopilot.errors import AdcopilotError
from adcopilot.eval.backends import CopilotBackend
from adcopilot.eval.mmad import Question
from adcopilot.language.nano_language import NanoLanguage
from adcopilot.language.visual import VisualEncoder
from adcopilot.protocols import Answerer, Localizer, require_answerer

OPTIONS = {"A": "Yes.", "B": "No.", "C": "Maybe."}


@pytest.fixture
def copilot(model, detector):
    lang = NanoLanguage(model=model, encoder=VisualEncoder(detector, registration=False))
    return AnsweringCopilot(detector, lang, registration=False, threshold=0.0)


def test_ask_answer_choice_and_chat(copilot, pair_images):
    q, r = pair_images
    assert isinstance(copilot, Answerer) and isinstance(copilot, Localizer)
    answer = copilot.ask(q, [r], "What is different?", max_new_tokens=4)
    assert isinstance(answer, str)
    assert copilot.answer_choice(q, r, "Is there any defect?", OPTIONS) in OPTIONS
    assert copilot.answer_choice(q, r, "Is there any defect?", OPTIONS, mode="letter") in OPTIONS
    reply, history = copilot.chat(q, [r], "What is different?")
    assert [t["role"] for t in history] == ["user", "assistant"] and history[1]["content"] == reply
    _, history = copilot.chat(q, [r], "Where?", history=history)
    assert len(history) == 4


def test_box_answers(copilot, pair_images):
    q, r = pair_images
    result = copilot.inspect(q, [r])
    assert result.boxes  # threshold 0: something is boxed
    head = copilot.localize(q, [r], mode="head", result=result)
    assert [b["bbox_2d"] for b in head] == [b.bbox_2d for b in result.boxes]
    assert all(b["label"] in ("Crack", "Stain", "Hole") for b in head)
    assert json.loads(copilot.ask(q, [r], "Output the bounding boxes of all defects as JSON.", result=result)) == head
    # Grounded text boxes are the detector's; the language model's own only with grounded=False.
    assert [b["bbox_2d"] for b in copilot.localize(q, [r], mode="text")] == [b.bbox_2d for b in result.boxes]
    own = copilot.localize(q, [r], mode="text", grounded=False)
    assert isinstance(own, list) and all(len(b["bbox_2d"]) == 4 for b in own)
    lm_head = copilot.localize(q, [r], mode="head", result=result, grounded=False)
    assert all(b["label"] in ("crack", "stain", "hole") for b in lm_head)
    with pytest.raises(AdcopilotError, match="box mode"):
        copilot.localize(q, [r], mode="guess")


def test_bad_questions(copilot, pair_images):
    q, r = pair_images
    with pytest.raises(AdcopilotError, match="empty"):
        copilot.ask(q, [r], "   ")
    with pytest.raises(AdcopilotError, match="history"):
        copilot.ask(q, [r], "Why?", history=[{"role": "user"}])
    with pytest.raises(AdcopilotError, match="reference"):
        copilot.ask(q, [], "Why?")


def test_without_language_model(detector, pair_images):
    q, r = pair_images
    cp = Copilot(detector, registration=False)
    assert not isinstance(cp, Answerer) and not isinstance(cp, Localizer)
    with pytest.raises(AdcopilotError, match="no language model"):
        require_answerer(cp)
    assert cp.inspect(q, [r]).verdict in ("normal", "anomalous")  # it still inspects


def test_backend_uses_the_language_model(copilot, tmp_path, pair_images):
    q, r = pair_images
    paths = []
    for name, arr in (("ref.png", r), ("query.png", q)):
        Image.fromarray(arr).save(tmp_path / name)
        paths.append(tmp_path / name)
    backend = CopilotBackend("nano", copilot=copilot)
    question = Question(index=0, text="What is the defect?", options={"A": "Crack.", "B": "Stain.", "C": "Hole.", "D": "None."},
                        answer="A", type="Defect Classification")
    assert backend.answer(paths, question) in "ABCD"
    assert backend.describe()["language_model"] is True
    assert isinstance(json.loads(backend.boxes(paths).text), list)


# --------------------------------------------------------------------------- the command line
def _write_checkpoint(tmp_path, model, detector):
    from .tiny import tiny_llm

    llm_dir = tmp_path / "tiny-llm"
    tiny_llm(len(model.tokenizer)).save_pretrained(llm_dir)
    model.tokenizer.save_pretrained(llm_dir)
    ckpt = tmp_path / "ckpt"
    detector.model.save(ckpt)
    model.cfg.llm = str(llm_dir)
    model.save(ckpt / "language")
    return ckpt


def refused(capsys, *args: str) -> str:
    """A command line that must stop with exit status 2, run in this process: its stderr."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def run(*args: str) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "adcopilot", *args], capture_output=True, text=True, timeout=300,
                          env=env)


def test_chat_command(tmp_path, model, detector, pair_images, capsys):
    q, r = pair_images
    Image.fromarray(q).save(tmp_path / "q.png")
    Image.fromarray(r).save(tmp_path / "r.png")
    ckpt = _write_checkpoint(tmp_path, model, detector)
    conv = tmp_path / "conv.json"
    p = run("chat", str(tmp_path / "q.png"), "--ref", str(tmp_path / "r.png"), "--model", str(ckpt),
            "--max-new-tokens", "3", "--ask", "What is different?", "--ask", f"/save {conv}", "--ask", "/reset",
            "--ask", "/save " + str(tmp_path / "empty.json"), "--ask", "/quit", "--ask", "never asked")
    assert p.returncode == 0, p.stderr
    saved = json.loads(conv.read_text())
    assert [t["role"] for t in saved["turns"]] == ["user", "assistant"]
    assert saved["turns"][0]["content"] == "What is different?"
    assert json.loads((tmp_path / "empty.json").read_text())["turns"] == []
    assert "never asked" not in p.stdout
    capsys.readouterr()
    assert "no language model" in refused(capsys, "chat", str(tmp_path / "q.png"), "--ref", str(tmp_path / "r.png"),
                                          "--model", "baseline", "--ask", "hi")
    assert "nope.png" in refused(capsys, "chat", str(tmp_path / "nope.png"), "--ref", str(tmp_path / "r.png"),
                                 "--model", str(ckpt))
    assert "--ask: the question is empty" in refused(capsys, "chat", str(tmp_path / "q.png"), "--ref",
                                                     str(tmp_path / "r.png"), "--model", str(ckpt), "--ask", " ")
    assert "--max-new-tokens must be at least 1, got 0" in refused(
        capsys, "chat", str(tmp_path / "q.png"), "--ref", str(tmp_path / "r.png"), "--model", str(ckpt),
        "--max-new-tokens", "0", "--ask", "What is different?")


def test_inspect_ask(tmp_path, model, detector, pair_images, capsys):
    q, r = pair_images
    Image.fromarray(q).save(tmp_path / "q.png")
    Image.fromarray(r).save(tmp_path / "r.png")
    ckpt = _write_checkpoint(tmp_path, model, detector)
    p = run("inspect", str(tmp_path / "q.png"), "--ref", str(tmp_path / "r.png"), "--model", str(ckpt), "--json",
            "--ask", "Is there a defect?")
    assert p.returncode == 0, p.stderr
    assert isinstance(json.loads(p.stdout)["answer"], str)
    assert isinstance(Copilot.load(ckpt), AnsweringCopilot)
    p = run("inspect", str(tmp_path / "q.png"), "--ref", str(tmp_path / "r.png"), "--model", str(ckpt), "--json",
            "--ask", "What is this object?", "--product", "bottle", "--material", "brown glass")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["answer"].startswith("The references are labelled bottle (brown glass)")
    (tmp_path / "dk.json").write_text("{not json")
    capsys.readouterr()
    assert "dk.json: malformed JSON" in refused(capsys, "inspect", str(tmp_path / "q.png"), "--ref",
                                                str(tmp_path / "r.png"), "--model", str(ckpt), "--ask",
                                                "What is the defect?", "--knowledge", str(tmp_path / "dk.json"))
    assert "--product" in refused(capsys, "inspect", str(tmp_path / "q.png"), "--ref", str(tmp_path / "r.png"),
                                  "--model", "baseline", "--product", "bottle")


def test_grounded_answers_agree_with_the_inspection(model, detector, pair_images, tmp_path):
    q, r = pair_images
    lang = NanoLanguage(model=model, encoder=VisualEncoder(detector, registration=False))
    yes_no = {"A": "Yes.", "B": "No."}
    for threshold, expected in ((0.0, "A"), (2.0, "B")):  # every score flags / none does
        cp = AnsweringCopilot(detector, lang, registration=False, threshold=threshold)
        assert cp.inspect(q, [r]).is_anomalous == (expected == "A")
        assert cp.answer_choice(q, r, "Is there any defect?", yes_no) == expected
        assert cp.answer_choice(q, r, "Is the object normal?", yes_no) == ("B" if expected == "A" else "A")
        # The language model alone still answers (its own reading, whatever it is).
        assert cp.answer_choice(q, r, "Is there any defect?", yes_no, grounded=False) in yes_no
    be = CopilotBackend("nano", copilot=AnsweringCopilot(detector, lang, registration=False, threshold=2.0))
    question = Question(index=0, text="Is there any defect?", options=yes_no, answer="A", type="Anomaly Detection")
    paths = [tmp_path / "r.png", tmp_path / "q.png"]
    for path, image in zip(paths, (r, q), strict=True):
        Image.fromarray(image).save(path)
    assert be.answer(paths, question) == "B"
    assert be.describe()["answers"] == "grounded"


def test_free_yes_no_answers_start_with_the_verdict(model, detector, pair_images):
    q, r = pair_images
    lang = NanoLanguage(model=model, encoder=VisualEncoder(detector, registration=False))
    for threshold, start in ((0.0, "Yes."), (2.0, "No.")):
        cp = AnsweringCopilot(detector, lang, registration=False, threshold=threshold)
        answer = cp.ask(q, [r], "Is there any defect?", max_new_tokens=5)
        assert answer.startswith(start)
        assert len(answer) > len(start)  # the facts follow


def test_calibrated_answers_through_the_copilot(copilot, pair_images):
    q, r = pair_images
    options = {"A": "Steel.", "B": "Glass.", "C": "Wood."}  # an object question: the language model answers
    assert copilot.answer_choice(q, r, "What is the object made of?", options, prior_weight=0.5) in options
    prior = copilot.language.prior()
    assert prior is copilot.language.prior() and prior.visual is not None and len(prior._scores) == 1
    with pytest.raises(AdcopilotError, match="prior_weight"):
        copilot.answer_choice(q, r, "What is the object made of?", options, prior_weight=2.0)


def test_type_questions_are_answered_by_the_type_head(copilot, pair_images):
    import torch

    q, r = pair_images
    options = {"A": "Crack.", "B": "Stain.", "C": "Hole."}  # the tiny model's labels: crack, stain, hole
    head = copilot.language.model.projectors.type_head[1]  # Linear(304 -> 3)
    with torch.no_grad():
        head.weight.zero_()
        for favoured, letter in ((1, "B"), (2, "C"), (0, "A")):
            head.bias.copy_(torch.nn.functional.one_hot(torch.tensor(favoured), 3).float() * 5)
            assert copilot.answer_choice(q, r, "What type of defect is present?", options) == letter
    # An option naming no trained label: the language model answers (any of the options).
    assert copilot.answer_choice(q, r, "What type of defect is present?", {"A": "Glue.", "B": "Stain."}) in ("A", "B")


def test_type_question_about_a_named_region_reads_that_cell(copilot, pair_images):
    import torch

    from adcopilot.language.visual import CELL_STATS

    q, r = pair_images
    options = {"A": "Crack.", "B": "Stain."}
    head = copilot.language.model.projectors.type_head
    cells = copilot.language.visual(q, [r], copilot.threshold).cells
    with torch.no_grad():
        # Per cell, the head's preference between crack and stain, then ask about each cell by name.
        prefs = [head(cells[i, CELL_STATS:]).softmax(-1)[:2] for i in range(9)]
        names = ["top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right"]
        for i, name in enumerate(names):
            want = "A" if float(prefs[i][0]) >= float(prefs[i][1]) else "B"
            assert copilot.answer_choice(q, r, f"What type of defect is at the {name} of the image?", options) == want
