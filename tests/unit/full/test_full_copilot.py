"""--model PATH with a full-scale checkpoint: the Copilot API, the CLI, the service, the eval backend."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from adcopilot.api import AnsweringCopilot, Copilot
from adcopilot.full.pipeline import FullCopilot, comparison_preamble, parse_labelled_boxes
from adcopilot.full.tiny import build_tiny_checkpoint
from adcopilot.protocols import Answerer, Inspector, Localizer


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return build_tiny_checkpoint(tmp_path_factory.mktemp("full") / "tiny")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("pair")
    rng = np.random.default_rng(0)
    ref = (rng.random((80, 100, 3)) * 80 + 80).astype(np.uint8)
    query = ref.copy()
    query[30:50, 40:70] = 250
    Image.fromarray(ref).save(root / "ref.png")
    Image.fromarray(query).save(root / "query.png")
    return root / "query.png", root / "ref.png"


@pytest.fixture(scope="module")
def copilot(ckpt):
    cp = Copilot.load(ckpt)
    cp.full.max_new_tokens = 12
    return cp


def test_boxes_are_read_with_labels_and_mapped_to_query_pixels():
    text = 'Found: ```json\n[{"bbox_2d": [10, 20, 30, 40], "label": "scratch"}, {"bbox_2d": [50, 5, 40, 15]}]\n```'
    assert parse_labelled_boxes(text, size=(200, 100), frame=(100, 50)) == [
        ([20, 40, 60, 80], "scratch"), ([80, 10, 100, 30], "defect")]
    assert parse_labelled_boxes("[]", (10, 10), None) == []
    assert parse_labelled_boxes("no idea", (10, 10), None) is None
    assert comparison_preamble(1).startswith("The first image is a normal sample.")
    assert comparison_preamble(3).startswith("The first 3 images are normal samples.")


def test_copilot_load_gives_a_text_copilot(copilot, pair):
    assert isinstance(copilot, FullCopilot) and copilot.model_name == "tiny"
    query, ref = pair
    r = copilot.inspect(query, [ref])
    assert r.image_size == (100, 80) and r.anomaly_map.shape == (80, 100)
    # A random model's answer to the yes/no question: whatever it is, a verdict or "unknown" with its words.
    assert r.verdict in ("normal", "anomalous", "unknown")
    assert (r.raw_answer is not None) == (r.verdict == "unknown") or r.verdict == "anomalous"
    assert not r.boxes or r.verdict == "anomalous"
    assert r.score == (1.0 if r.verdict == "anomalous" else 0.0)
    json.loads(r.to_json())
    assert copilot.inspect(query, [ref]).to_dict()["boxes"] == r.to_dict()["boxes"]  # greedy: repeatable


def test_ask_and_chat_are_deterministic_and_keep_history(copilot, pair):
    query, ref = pair
    a1 = copilot.ask(query, [ref], "Is there any defect?")
    a2 = copilot.ask(query, [ref], "Is there any defect?")
    assert isinstance(a1, str) and a1 == a2
    answer, history = copilot.chat(query, [ref], "Is there any defect?")
    assert answer == a1 and len(history) == 2 and history[0]["content"].startswith(comparison_preamble(1))
    _, history = copilot.chat(query, [ref], "Where is it?", history)
    assert [t["role"] for t in history] == ["user", "assistant", "user", "assistant"]
    assert isinstance(copilot, Inspector) and isinstance(copilot, Answerer) and isinstance(copilot, Localizer)
    assert not isinstance(copilot, Copilot)  # a copilot of its own, not the nano one's subclass
    letter = copilot.answer_choice(query, [ref], "Is there any defect?", {"A": "Yes", "B": "No"})
    assert letter in ("A", "B", "")
    assert copilot.localize(query, [ref]) == [b.to_dict() for b in copilot.inspect(query, [ref]).boxes]


def test_cli_inspect_with_the_checkpoint(ckpt, pair, tmp_path, capsys):
    from adcopilot.cli import main

    query, ref = pair
    main(["inspect", str(query), "--ref", str(ref), "--model", str(ckpt), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == "tiny" and out["verdict"] in ("normal", "anomalous", "unknown")
    main(["inspect", str(query), "--ref", str(ref), "--model", str(ckpt)])
    printed = capsys.readouterr().out
    assert printed.split()[0] == out["verdict"].upper()
    # An unreadable answer is printed as such, with the model's words.
    assert ("no verdict could be read" in printed) == (out["verdict"] == "unknown")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "ad_copilot"}))
    with pytest.raises(SystemExit) as exc:
        main(["inspect", str(query), "--ref", str(ref), "--model", str(broken)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err
    assert err.strip().startswith("error: ") and "no .safetensors weights" in err


def test_service_inspects_and_answers(copilot, pair):
    from fastapi.testclient import TestClient

    from adcopilot.serve.app import create_app

    query, ref = pair
    client = TestClient(create_app(copilot))
    files = [("query", ("q.png", query.read_bytes(), "image/png")), ("references", ("r.png", ref.read_bytes(), "image/png"))]
    r = client.post("/v1/inspect", files=files)
    assert r.status_code == 200, r.text
    assert r.json()["verdict"] in ("normal", "anomalous", "unknown")
    r = client.post("/v1/ask", files=files, data={"question": "Is there any defect?",
                                                  "history": json.dumps([])})
    assert r.status_code == 200, r.text
    assert isinstance(r.json()["answer"], str)


def test_transformers_eval_backend_loads_it(ckpt, pair):
    from adcopilot.eval.backends import make_backend

    query, ref = pair
    backend = make_backend("transformers", model=str(ckpt), max_new_tokens=6)
    assert backend.describe()["model_type"] == "ad_copilot"
    answer = backend.boxes([str(ref), str(query)])
    assert isinstance(answer.text, str) and answer.frame is not None


def test_batch_tools_get_a_map_from_the_boxes(copilot, pair):
    query, ref = pair
    a = copilot.analyze(query, [ref])
    assert a.amap.shape == (80, 100) and a.score == float(a.amap.max())
    buf = io.BytesIO()
    Image.open(query).save(buf, format="PNG")
    assert copilot.inspect(buf.getvalue(), [ref]).query == "query"


def test_nano_eval_backend_lets_the_full_model_answer_every_question(copilot, pair):
    from adcopilot.eval.backends import CopilotBackend
    from adcopilot.eval.mmad import Question

    query, ref = pair
    assert not isinstance(copilot, AnsweringCopilot)  # it answers itself: no grounding, no detector pass
    be = CopilotBackend("nano", copilot=copilot)
    q = Question(index=0, text="Is there any defect?", options={"A": "Yes.", "B": "No."}, answer="A",
                 type="Anomaly Detection")
    reply = be.answer([ref, query], q)
    assert reply == copilot.answer_choice(query, [ref], q.text, q.options)
    assert "answers" not in be.describe()
