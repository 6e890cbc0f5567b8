"""POST /v1/chat/completions on a real uvicorn server with tiny models: whole and streamed answers
read by a client written here (and by the ``openai`` package when it is installed), the detector-only
rules, the API key, and bad requests answered as OpenAI's error JSON."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from adcopilot.api import AnsweringCopilot, Copilot
from adcopilot.eval.mmad import Question, official_prompt
from adcopilot.language.model import NanoCopilot, NanoCopilotConfig
from adcopilot.language.nano_language import NanoLanguage
from adcopilot.language.visual import VisualEncoder
from adcopilot.serve.app import create_app
from adcopilot.serve.local import serve_in_thread
from adcopilot.serve.service import ServeConfig

from ..language.tiny import tiny_detector, tiny_llm, tiny_tokenizer

DEFECT_Q = Question(0, "Is there any defect in the object?", {"A": "Yes.", "B": "No."}, "A", "Anomaly Detection")
OTHER_Q = Question(1, "What is the shape of the object?", {"A": "Round.", "B": "Square.", "C": "Long."}, "A",
                   "Object Structure")


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def image_part(data: bytes) -> dict:
    return {"type": "image_url", "image_url": {"url": data_url(data)}}


def mmad_content(ref: bytes, query: bytes, q: Question) -> list[dict]:
    """The content the openai evaluation backend sends (the benchmark's prompt), images as given."""
    parts = official_prompt(["ref"], "query", q)
    return [image_part({"ref": ref, "query": query}[v]) if k == "image" else {"type": "text", "text": v}
            for k, v in parts]


def ask_body(ref: bytes, query: bytes, question: str, **extra) -> dict:
    content = [image_part(ref), image_part(query), {"type": "text", "text": question}]
    return {"model": "any", "messages": [{"role": "user", "content": content}], **extra}


@pytest.fixture(scope="module")
def lm_copilot() -> Copilot:
    """A nano detector with a tiny random language model (threshold 0: every query is defective)."""
    tok = tiny_tokenizer()
    cfg = NanoCopilotConfig(hidden=32, compare_width=24, num_compare=4, defect_labels=["crack", "stain", "hole"])
    model = NanoCopilot.build(cfg, tiny_llm(len(tok)), tok)
    det = tiny_detector()
    lang = NanoLanguage(model=model, encoder=VisualEncoder(det, registration=False))
    return AnsweringCopilot(det, lang, registration=False, threshold=0.0, model_name="tiny-lm")


@pytest.fixture(scope="module")
def lm_url(lm_copilot) -> Iterator[str]:
    with serve_in_thread(create_app(lm_copilot, ServeConfig(api_key="k3y"))) as url:
        yield url


@pytest.fixture(scope="module")
def baseline_url(tiny_copilot) -> Iterator[str]:
    with serve_in_thread(create_app(tiny_copilot, ServeConfig(max_upload_bytes=400_000))) as url:
        yield url


KEY = {"Authorization": "Bearer k3y"}


def post(url: str, body, headers=KEY, **kw) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", json=body, headers=headers, timeout=60, **kw)


def sse_events(url: str, body: dict) -> tuple[httpx.Response, list]:
    """The data of each server-sent event, JSON-decoded ("[DONE]" kept as is), read as they arrive."""
    events = []
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, headers=KEY, timeout=60) as r:
        buf = ""
        for text in r.iter_text():
            buf += text
            while "\n\n" in buf:
                block, buf = buf.split("\n\n", 1)
                assert block.startswith("data: "), block
                data = block[len("data: "):]
                events.append(data if data == "[DONE]" else json.loads(data))
        assert buf == ""
    return r, events


def test_choices_and_free_answers_whole(lm_url, lm_copilot, images):
    ref, bad = images["ref"], images["bad"]
    r = post(lm_url, {"model": "x", "messages": [{"role": "user", "content": mmad_content(ref, bad, OTHER_Q)}],
                      "temperature": 0, "seed": 0, "max_tokens": 128, "chat_template_kwargs": {"add_vision_id": True}})
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["object"] == "chat.completion" and d["model"] == "tiny-lm" and d["id"].startswith("chatcmpl-")
    letter = lm_copilot.answer_choice(bad, [ref], OTHER_Q.text, OTHER_Q.options)
    assert d["choices"][0]["message"] == {"role": "assistant", "content": letter}
    assert d["choices"][0]["finish_reason"] == "stop"
    u = d["usage"]
    assert u["prompt_tokens"] > 45 and u["completion_tokens"] == 1 and u["total_tokens"] == u["prompt_tokens"] + 1
    # The detector's verdict answers the defect question (threshold 0: defective).
    d = post(lm_url, {"model": "x", "messages": [{"role": "user", "content": mmad_content(ref, bad, DEFECT_Q)}]}).json()
    assert d["choices"][0]["message"]["content"] == "A"
    free = post(lm_url, ask_body(ref, bad, "What is different?", max_tokens=5)).json()
    expected = lm_copilot.ask(bad, [ref], "What is different?", max_new_tokens=5)
    assert free["choices"][0]["message"]["content"] == expected
    n = free["usage"]["completion_tokens"]
    assert 0 < n <= 5 and free["choices"][0]["finish_reason"] == ("length" if n == 5 else "stop")


def test_a_question_with_its_options_in_its_text_is_answered_with_one_of_them(lm_url, lm_copilot, images):
    ref, bad = images["ref"], images["bad"]
    for text in ("Is there any defect? A. Yes. B. No.", "Is there any defect?\n(A) Yes.\n(B) No.",
                 "Question: Is there any defect?\nA: Yes.\nB: No."):
        assert lm_copilot.ask(bad, [ref], text) == "A. Yes.", text  # threshold 0: the verdict is defective
    options = {"A": "Matte grey.", "B": "Shiny red.", "C": "Striped blue."}
    letter = lm_copilot.answer_choice(bad, [ref], "What does the surface look like?", options)
    text = "What does the surface look like? A: Matte grey. B: Shiny red. C: Striped blue."
    assert lm_copilot.ask(bad, [ref], text) == f"{letter}. {options[letter]}"
    files = [("query", ("q.png", bad, "image/png")), ("references", ("r.png", ref, "image/png"))]
    r = httpx.post(lm_url + "/v1/ask", files=files, data={"question": text}, headers=KEY, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json() | {"model": None} == {"answer": f"{letter}. {options[letter]}", "choice": letter,
                                          "options": options, "question": text, "model": None}
    plain = httpx.post(lm_url + "/v1/ask", files=files, data={"question": "Is there any defect?"}, headers=KEY,
                       timeout=60).json()
    assert "choice" not in plain and plain["answer"].startswith("Yes.")


def test_a_blank_frame_is_answered_as_refused_and_a_score_question_with_the_score(lm_copilot, images):
    ref = images["ref"]
    blank = np.zeros((64, 64, 3), np.uint8)  # a failed camera: the global check refuses it
    r = lm_copilot.inspect(blank, [ref])
    assert r.image_check == "blank image" and r.is_anomalous
    answer = lm_copilot.ask(blank, [ref], "What is wrong with it?")
    assert answer.startswith("Not inspected as the product: blank image"), answer  # no type, no place
    assert lm_copilot.ask(blank, [ref], "Is it a crack?").startswith("No. Not inspected as the product")
    sure = lm_copilot.ask(images["bad"], [ref], "How confident are you?")
    bad = lm_copilot.inspect(images["bad"], [ref])
    assert sure.startswith(f"The anomaly score is {bad.score:.2f}, ")


def test_streamed_answer_is_the_whole_answer(lm_url, lm_copilot, images):
    ref, bad = images["ref"], images["bad"]
    body = ask_body(ref, bad, "Write one sentence about the photo.", max_tokens=12, stream=True,
                    stream_options={"include_usage": True})
    r, events = sse_events(lm_url, body)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    pieces = [c["choices"][0]["delta"].get("content", "") for c in chunks[1:-2]]
    whole = lm_copilot.ask(bad, [ref], "Write one sentence about the photo.", max_new_tokens=12)
    assert "".join(pieces) == whole and len(pieces) > 1  # token by token, joined: the same answer (a question the language model answers)
    assert chunks[-2]["choices"][0]["delta"] == {} and chunks[-2]["choices"][0]["finish_reason"] in ("stop", "length")
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    assert all(c["usage"] is None for c in chunks[:-1])
    plain = post(lm_url, {**body, "stream": False}).json()
    assert plain["choices"][0]["message"]["content"] == whole and plain["usage"] == chunks[-1]["usage"]
    with httpx.stream("POST", lm_url + "/v1/chat/completions", json={**body, "max_tokens": 64}, headers=KEY) as r:
        next(r.iter_lines())  # the client goes away after the first event
    assert post(lm_url, {**body, "stream": False}).json()["choices"][0]["message"]["content"] == whole  # model free


def test_history_and_reference_sets(lm_url, lm_copilot, images):
    ref, bad = images["ref"], images["bad"]
    messages = [
        {"role": "system", "content": "You are terse."},  # ignored: the copilot has its own
        {"role": "user", "content": [image_part(ref), image_part(bad), {"type": "text", "text": "What is different?"}]},
        {"role": "assistant", "content": "A stain."},
        {"role": "user", "content": "Where is it?"},
    ]
    d = post(lm_url, {"model": "x", "messages": messages, "max_tokens": 6}).json()
    history = [{"role": "user", "content": "What is different?"}, {"role": "assistant", "content": "A stain."}]
    assert d["choices"][0]["message"]["content"] == lm_copilot.ask(bad, [ref], "Where is it?", history=history,
                                                                   max_new_tokens=6)
    rid = httpx.post(lm_url + "/v1/references", files=[("references", ("good.png", ref, "image/png"))],
                     headers=KEY).json()["id"]
    body = {"model": "x", "reference_set": rid, "messages": [{"role": "user", "content": mmad_content(ref, bad, OTHER_Q)[-4:]}]}
    assert post(lm_url, body).json()["choices"][0]["message"]["content"] == lm_copilot.answer_choice(
        bad, [ref], OTHER_Q.text, OTHER_Q.options)
    both = post(lm_url, {**body, "messages": [{"role": "user", "content": mmad_content(ref, bad, OTHER_Q)}]})
    assert both.status_code == 400 and "not both" in both.json()["error"]["message"]
    unknown = post(lm_url, {**body, "reference_set": "0123456789abcdef"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"


def test_api_key(lm_url, images):
    body = ask_body(images["ref"], images["bad"], "Is there a defect?", max_tokens=2)
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        r = post(lm_url, body, headers=headers)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "invalid_api_key" and "API key" in r.json()["error"]["message"]
    assert post(lm_url, body, headers={"X-API-Key": "k3y"}).status_code == 200
    models = httpx.get(lm_url + "/v1/models", headers=KEY).json()  # OpenAI's model list, beside the service's
    assert models["object"] == "list" and models["data"][0]["id"] == models["models"][0]["name"] == "tiny-lm"


def test_detector_only_model(baseline_url, tiny_copilot, images):
    ref, bad, good = images["ref"], images["bad"], images["good"]

    def content(query: bytes, q: Question) -> list:
        return post(baseline_url, {"model": "x", "messages": [{"role": "user", "content": mmad_content(ref, query, q)}]},
                    headers={})

    assert content(bad, DEFECT_Q).json()["choices"][0]["message"]["content"] == "A"
    assert content(good, DEFECT_Q).json()["choices"][0]["message"]["content"] == "B"
    d = post(baseline_url, ask_body(ref, bad, "Is there a defect?"), headers={}).json()
    r = tiny_copilot.inspect(bad, [ref])
    assert d["choices"][0]["message"]["content"] == f"Yes. {r.description}" and "found" in r.description
    assert d["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    for r in (content(bad, OTHER_Q), post(baseline_url, ask_body(ref, bad, "Why is it bad?"), headers={})):
        assert r.status_code == 501
        err = r.json()["error"]
        assert err["type"] == "not_implemented_error" and "no language model" in err["message"]


def bad_requests(ref: bytes, query: bytes) -> list[tuple[dict, int, str]]:
    good = ask_body(ref, query, "Is there a defect?")
    text_only = {"model": "x", "messages": [{"role": "user", "content": "Is there a defect?"}]}

    def with_url(url: str) -> dict:
        body = json.loads(json.dumps(good))
        body["messages"][0]["content"][1]["image_url"]["url"] = url
        return body

    return [
        (text_only, 400, "no image"),
        (with_url("https://example.com/part.png"), 400, "not fetched"),
        (with_url("data:image/png;base64,@@@notbase64"), 400, "malformed base64"),
        (with_url("data:image/png,rawbytes"), 400, "not base64"),
        (with_url("file:///etc/passwd"), 400, "not a data URL"),
        (with_url(data_url(b"hello", "text/plain")), 415, "not an image type"),
        (with_url(data_url(b"GIF89a not really")), 400, "not an image file"),
        ({**good, "messages": "hi"}, 400, "messages"),
        ({**good, "messages": [{"role": "user", "content": 5}]}, 400, "content"),
        ({**good, "messages": [{"role": "robot", "content": "hi"}]}, 400, "role"),
        ({**good, "messages": [*good["messages"], {"role": "assistant", "content": "ok"}]}, 400, "last message"),
        ({**good, "max_tokens": "ten"}, 400, "max_tokens"),
        ({**good, "max_tokens": 0}, 400, "max_tokens"),
        ({**good, "temperature": 5}, 400, "temperature"),
        ({**good, "stream": "yes"}, 400, "stream"),
        ({**good, "n": 2}, 400, "n:"),
        ({**good, "tools": [{"type": "function"}]}, 400, "tools"),
        ({**good, "stop": ["\n"]}, 400, "stop"),
        ({k: v for k, v in good.items() if k != "model"}, 400, "model"),
        ({"model": "x", "messages": [{"role": "user", "content": [image_part(ref)] * 18 + [
            {"type": "text", "text": "Why?"}]}]}, 400, "too many images"),
        ({"model": "x", "messages": [{"role": "user", "content": [image_part(ref), image_part(query)]}]}, 400, "no text"),
        ({**good, "messages": [{"role": "user", "content": [{"type": "audio"}]}]}, 400, "content part"),
        ({**good, "messages": [{"role": "assistant", "content": [image_part(ref)]},
                               *good["messages"]]}, 400, "only user messages"),
        ({**good, "messages": [m for _ in range(17) for m in ({"role": "user", "content": "a"},
                                                              {"role": "assistant", "content": "b"})]
          + good["messages"]}, 400, "too many earlier turns"),
    ]


def test_bad_requests_are_openai_errors(baseline_url, images):
    for body, status, words in bad_requests(images["ref"], images["bad"]):
        r = post(baseline_url, body, headers={})
        assert r.status_code == status, (words, r.text)
        err = r.json()["error"]
        assert words in err["message"] and err["type"] == "invalid_request_error", (words, err)
        assert "\n" not in err["message"]
    for raw in (b"{not json", b"[" * 100_000, "\udcff".encode("utf-8", "surrogatepass")):
        r = httpx.post(baseline_url + "/v1/chat/completions", content=raw, timeout=60)
        assert r.status_code == 400 and "malformed JSON" in r.json()["error"]["message"], r.text
    huge = ask_body(images["ref"], b"\0" * 500_000, "Why?")
    r = post(baseline_url, huge, headers={})
    assert r.status_code == 413 and "too large" in r.json()["error"]["message"]


def test_the_openai_client(lm_url, lm_copilot, images):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=lm_url + "/v1", api_key="k3y", max_retries=0)
    ref, bad = images["ref"], images["bad"]
    body = ask_body(ref, bad, "What is different?")
    assert [m.id for m in client.models.list()] == ["tiny-lm"]
    whole = client.chat.completions.create(model="x", messages=body["messages"], max_tokens=8)
    assert whole.choices[0].message.content == lm_copilot.ask(bad, [ref], "What is different?", max_new_tokens=8)
    stream = client.chat.completions.create(model="x", messages=body["messages"], max_tokens=8, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == whole.choices[0].message.content
    with pytest.raises(openai.BadRequestError, match="not fetched"):
        client.chat.completions.create(model="x", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "http://example.com/a.png"}}, {"type": "text", "text": "?"}]}])


def test_the_openai_eval_backend_answers_as_the_nano_backend(lm_url, lm_copilot, images, tmp_path):
    from adcopilot.eval.backends import CopilotBackend, make_backend
    from adcopilot.eval.openai_protocols import file_image

    paths = []
    for name in ("ref", "bad", "good"):
        (tmp_path / f"{name}.png").write_bytes(images[name])
        paths.append(tmp_path / f"{name}.png")
    url, size = file_image(paths[1], None)
    assert base64.b64decode(url.split(",", 1)[1]) == images["bad"] and size == (96, 96)  # the file as it is
    remote = make_backend("openai", "tiny", base_url=lm_url + "/v1", api_key="k3y", protocol="files", concurrency=1)
    local = CopilotBackend("nano", copilot=lm_copilot)
    where = Question(2, "Where is the defect?", {"A": "Top left.", "B": "Center.", "C": "Bottom right."}, "C",
                     "Defect Localization")
    for query in paths[1:]:
        for q in (DEFECT_Q, OTHER_Q, where):
            assert remote.answer([paths[0], query], q) == local.answer([paths[0], query], q)
    remote.close()


OBJECT_Q = "What is this object used for?"


def register(url: str, ref: bytes, **form) -> httpx.Response:
    return httpx.post(url + "/v1/references", files=[("references", ("good.png", ref, "image/png"))], data=form,
                      headers=KEY, timeout=60)


def ask_form(url: str, query: bytes, question: str, **form) -> httpx.Response:
    return httpx.post(url + "/v1/ask", files=[("query", ("q.png", query, "image/png"))],
                      data={"question": question, **form}, headers=KEY, timeout=60)


def test_a_reference_set_carries_its_products_context(lm_url, lm_copilot, images):
    ref, bad = images["ref"], images["bad"]
    labelled = register(lm_url, ref, name="line 3", product="  bottle ", material="brown\nglass")
    assert labelled.status_code == 200, labelled.text
    s = labelled.json()
    assert (s["product"], s["material"]) == ("bottle", "brown glass")  # whitespace collapsed
    plain = register(lm_url, ref).json()  # the same images without a label: another set
    assert plain["id"] != s["id"] and plain["product"] is None and plain["material"] is None
    listed = {e["id"]: e for e in httpx.get(lm_url + "/v1/references", headers=KEY).json()["reference_sets"]}
    assert listed[s["id"]]["product"] == "bottle" and listed[s["id"]]["material"] == "brown glass"

    labelled_answer = lm_copilot.ask(bad, [ref], OBJECT_Q, product="bottle", material="brown glass")
    assert labelled_answer.startswith("The references are labelled bottle (brown glass)")
    # /v1/ask on the set: its context, said in the answer; the request's own context wins.
    r = ask_form(lm_url, bad, OBJECT_Q, reference_set=s["id"])
    assert r.status_code == 200 and r.json()["answer"] == labelled_answer, r.text
    own = ask_form(lm_url, bad, OBJECT_Q, reference_set=s["id"], product="tile").json()["answer"]
    assert own == lm_copilot.ask(bad, [ref], OBJECT_Q, product="tile") and own.startswith("The references are labelled tile")
    other = ask_form(lm_url, bad, OBJECT_Q, reference_set=s["id"], material="green glass").json()["answer"]
    assert other.startswith("The references are labelled bottle (green glass)")  # the set's product, the request's material
    # Without a label: what the model itself says without one (a guess, said to be one), through the service too.
    unlabelled = ask_form(lm_url, bad, OBJECT_Q, reference_set=plain["id"]).json()["answer"]
    assert unlabelled == lm_copilot.ask(bad, [ref], OBJECT_Q) and "labelled" not in unlabelled
    # The chat endpoint, whole and streamed, and its own product field.
    body = {"model": "x", "reference_set": s["id"], "messages": [{"role": "user", "content": [
        image_part(bad), {"type": "text", "text": OBJECT_Q}]}]}
    assert post(lm_url, body).json()["choices"][0]["message"]["content"] == labelled_answer
    _, events = sse_events(lm_url, {**body, "stream": True})
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1] if e["choices"]) == labelled_answer
    chat_own = post(lm_url, {**body, "product": "tile"}).json()["choices"][0]["message"]["content"]
    assert chat_own == own
    # A multiple-choice object question on the set uses the label too.
    names = {"A": "Tile.", "B": "Bottle.", "C": "Screw."}
    mcq = f"Question: Which object is being inspected?\nA. {names['A']}\nB. {names['B']}\nC. {names['C']}\n"
    mcq_body = {**body, "messages": [{"role": "user", "content": [image_part(bad), {"type": "text", "text": mcq}]}]}
    assert post(lm_url, mcq_body).json()["choices"][0]["message"]["content"] == "B"
    assert post(lm_url, {**mcq_body, "product": "screw"}).json()["choices"][0]["message"]["content"] == "C"


@pytest.mark.parametrize(("form", "message"), [
    ({"material": "steel"}, "give the product too"),
    ({"product": "x" * 201}, "product: too long"),
])
def test_a_bad_product_context_is_a_422(lm_url, images, form, message):
    r = register(lm_url, images["ref"], **form)
    assert r.status_code == 422 and message in r.json()["detail"], r.text


def test_a_chat_product_must_be_a_string(lm_url, images):
    r = post(lm_url, ask_body(images["ref"], images["bad"], OBJECT_Q, product=["bottle"]))
    assert r.status_code == 400 and r.json()["error"]["param"] == "product"


def test_a_stored_sets_context_survives_a_restart(lm_copilot, images, tmp_path):
    cfg = ServeConfig(api_key="k3y", sets_dir=str(tmp_path / "sets"))
    with serve_in_thread(create_app(lm_copilot, cfg)) as url:
        rid = register(url, images["ref"], product="bottle", material="brown glass").json()["id"]
    with serve_in_thread(create_app(lm_copilot, cfg)) as url:  # a new service on the same folder
        listed = httpx.get(url + "/v1/references", headers=KEY).json()["reference_sets"]
        assert [(e["id"], e["product"], e["material"]) for e in listed] == [(rid, "bottle", "brown glass")]
        answer = ask_form(url, images["bad"], OBJECT_Q, reference_set=rid).json()["answer"]
    assert answer.startswith("The references are labelled bottle (brown glass)")
