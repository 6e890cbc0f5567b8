"""The openai backend against a small OpenAI-protocol server started here on 127.0.0.1."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import pytest
from PIL import Image

from adcopilot.errors import AdcopilotError
from adcopilot.eval.backends import make_backend
from adcopilot.eval.bbox import parse_boxes
from adcopilot.eval.mmad import INSTRUCTION, load_mmad
from adcopilot.eval.runner import run_mmad
from adcopilot.eval.scoring import score


class ChatServer:
    """Answers deterministically from the request: the option letter of "Yes."/"Plate." etc. is
    not known to it, so it answers the *last* option letter listed; box prompts get a box of
    the top-left quarter of the last image sent. The first request fails with HTTP 500.

    With ``rendezvous=n`` the first n requests each wait (up to ``rendezvous_s``) until n are in
    flight at once, so a client that sends them concurrently passes at once and a serial one is
    seen as serial (``max_in_flight`` stays 1) instead of overlapping by luck."""

    def __init__(
        self, fail_first: int = 1, always_fail: bool = False, delay: float = 0.02,
        script: list[str] | None = None, reject: str | None = None,
        rendezvous: int = 0, rendezvous_s: float = 10.0,
    ) -> None:
        self.requests: list[dict] = []
        self.barrier = threading.Barrier(rendezvous, timeout=rendezvous_s) if rendezvous > 1 else None
        self.waiting_left = rendezvous
        self.fail_left = fail_first
        self.always_fail = always_fail
        self.script = list(script or [])  # replies given first, in order (then the rule below)
        self.reject = reject  # answer every request with HTTP 400 and this error text
        self.delay = delay
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                    fail = server.always_fail or server.fail_left > 0
                    server.fail_left -= 1
                    wait = server.barrier is not None and server.waiting_left > 0
                    server.waiting_left -= 1
                if wait:  # a broken barrier: fewer arrived together, the client is serial
                    with contextlib.suppress(threading.BrokenBarrierError):
                        server.barrier.wait()
                time.sleep(server.delay)
                try:
                    if self.headers.get("Authorization") != "Bearer test-key":
                        return self._send(401, {"error": "bad key"})
                    if fail:
                        return self._send(500, {"error": "overloaded"})
                    if server.reject:
                        return self._send(400, {"error": {"message": server.reject}})
                    with server.lock:
                        text = server.script.pop(0) if server.script else server.reply(body)
                    return self._send(200, {"choices": [{"message": {"role": "assistant", "content": text}}]})
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def _send(self, code, payload):
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @staticmethod
    def reply(body: dict) -> str:
        parts = body["messages"][0]["content"]
        text = "".join(p["text"] for p in parts if p["type"] == "text")
        images = [p["image_url"]["url"] for p in parts if p["type"] == "image_url"]
        if "bbox_2d" in text:
            raw = base64.b64decode(images[-1].split(",", 1)[1])
            w, h = Image.open(io.BytesIO(raw)).size
            return f'```json\n[{{"bbox_2d": [0, 0, {w // 2}, {h // 2}], "label": "hole"}}]\n```'
        letters = re.findall(r"^([A-E])\. ", text, flags=re.M)
        return f"Answer: {letters[-1]}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def first_item(path):
    """The benchmark, its first item and that item's images (one template, then the query)."""
    bench = load_mmad(path)
    item = bench.items[0]
    return bench, item, [*bench.references(item, 1), bench.query(item)]


@pytest.fixture
def env(monkeypatch):
    def set_url(url):
        monkeypatch.setenv("ADCOPILOT_OPENAI_BASE_URL", url)
        monkeypatch.setenv("ADCOPILOT_OPENAI_API_KEY", "test-key")
    return set_url


def test_answer_retries_after_500_and_sends_the_official_prompt(env, small_bench):
    bench, item, images = first_item(small_bench)
    with ChatServer() as srv:
        env(srv.url)
        be = make_backend("openai", "qwen2.5-vl-7b", backoff_s=0.01)
        assert be.answer(images, item.questions[0]) == "Answer: B"  # the last option of Yes./No.
        assert len(srv.requests) == 2  # one 500, one retry
    req = srv.requests[-1]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer test-key"
    body = req["body"]
    assert body["model"] == "qwen2.5-vl-7b" and body["temperature"] == 0 and body["max_tokens"] == 128
    parts = body["messages"][0]["content"]
    assert parts[0] == {"type": "text", "text": INSTRUCTION}
    urls = [p["image_url"]["url"] for p in parts if p["type"] == "image_url"]
    assert len(urls) == 2 and all(u.startswith("data:image/png;base64,") for u in urls)


def test_run_sends_requests_concurrently_within_the_limit_and_scores(env, small_bench, tmp_path):
    bench = load_mmad(small_bench)
    with ChatServer(fail_first=0, delay=0.05, rendezvous=2) as srv:
        env(srv.url)
        be = make_backend("openai", "m", concurrency=2)
        records = run_mmad(bench, bench.items, be, tmp_path / "run", progress=False)
    assert len(records) == bench.n_questions and not any(r.error for r in records)
    assert srv.max_in_flight == 2  # two overlapped (the rendezvous), never three
    t = score(records, "official")
    # The server always answers the last letter: AD "No." (B) is right on normal images only,
    # object questions "D" are wrong (gold C), localization "D" is wrong (gold A).
    assert t.rows["DSA"]["Anomaly Detection"] == pytest.approx(50.0)
    assert t.rows["DSA"]["Object Classification"] == 0.0


def test_concurrency_one_sends_one_request_at_a_time(env, small_bench, tmp_path):
    bench = load_mmad(small_bench)
    with ChatServer(fail_first=0, rendezvous=2, rendezvous_s=0.3) as srv:
        env(srv.url)
        be = make_backend("openai", "m", concurrency=1)
        records = run_mmad(bench, bench.items[:1], be, tmp_path / "run", progress=False)
    assert records and not any(r.error for r in records)
    assert srv.max_in_flight == 1


def test_boxes_in_the_frame_of_the_image_sent(env, small_bench):
    bench, item, images = first_item(small_bench)
    with ChatServer(fail_first=0) as srv:
        env(srv.url)
        # gpt4o fits the 64 px query into a 512 px box: boxes come back in that frame.
        ans = make_backend("openai", "m", box_coords="pixel", protocol="gpt4o").boxes(images)
        assert ans.frame == (512, 512)
        assert parse_boxes(ans.text, (64, 64), ans.coords, ans.frame) == [[0.0, 0.0, 32.0, 32.0]]
        # qwen sends the query as qwen_vl_utils resizes it (56 x 56), the frame the server saw.
        q = make_backend("openai", "m").boxes(images)
        assert q.frame == (56, 56)
        assert parse_boxes(q.text, (64, 64), q.coords, q.frame) == [[0.0, 0.0, 32.0, 32.0]]


def test_gives_up_after_retries_and_refuses_bad_keys(env, small_bench, tmp_path, monkeypatch):
    bench, item, images = first_item(small_bench)
    with ChatServer(always_fail=True) as srv:
        env(srv.url)
        be = make_backend("openai", "m", max_retries=2, backoff_s=0.01)
        with pytest.raises(AdcopilotError, match="no answer after 3 attempts"):
            be.answer(images, item.questions[0])
        assert len(srv.requests) == 3
    with ChatServer(fail_first=0) as srv:
        env(srv.url)
        monkeypatch.setenv("ADCOPILOT_OPENAI_API_KEY", "wrong")
        be = make_backend("openai", "m", max_retries=3, backoff_s=0.01)
        records = run_mmad(bench, bench.items[:1], be, tmp_path / "r", progress=False)
        assert all("HTTP 401" in r.error for r in records)
        assert len(srv.requests) == len(records)  # a 401 is not retried


def test_configuration_errors(monkeypatch):
    monkeypatch.delenv("ADCOPILOT_OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("ADCOPILOT_OPENAI_MODEL", raising=False)
    with pytest.raises(AdcopilotError, match="needs ADCOPILOT_OPENAI_BASE_URL"):
        make_backend("openai", "m")
    monkeypatch.setenv("ADCOPILOT_OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    with pytest.raises(AdcopilotError, match="needs a model name"):
        make_backend("openai")
    with pytest.raises(AdcopilotError, match="unknown box coordinates"):
        make_backend("openai", "m", box_coords="inches")
    with pytest.raises(AdcopilotError, match="unknown backend 'gpt'"):
        make_backend("gpt")


# --------------------------------------------------------------------------- protocols
def png_url_as_qwen_vl_utils_sends(path, size):
    """The image read as RGB, resized to ``size`` with PIL's default filter, as PNG (qwen_vl_utils)."""
    buf = io.BytesIO()
    Image.open(path).convert("RGB").resize(size).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def jpeg_url_as_the_gpt4o_script_sends(path):
    """The GPT-4o script's encode_image_to_base64 on cv2.imread(path), step by step."""
    image = cv2.imread(str(path))
    height, width = image.shape[:2]
    scale = min(512 / width, 512 / height)
    resized = cv2.resize(image, (int(width * scale), int(height * scale)), interpolation=cv2.INTER_AREA)
    _, encoded = cv2.imencode(".jpg", resized)
    return "data:image/jpeg;base64," + base64.b64encode(encoded).decode("utf-8")


def test_qwen_protocol_exact_request_body(env, real_bench):
    bench = load_mmad(real_bench)
    item = bench.items[0]
    ref, query = bench.references(item, 1)[0], bench.query(item)
    with ChatServer(fail_first=0) as srv:
        env(srv.url)
        make_backend("openai", "qwen2.5-vl-7b").answer([ref, query], item.questions[0])
    instruction = (
        "\nYou are an industrial inspector who checks products by images. You should judge whether there is a defect "
        "in the query image and answer the questions about it.\nAnswer with the option's letter from the given "
        "choices directly.\n"
    )
    assert srv.requests[0]["body"] == {
        "model": "qwen2.5-vl-7b",
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": instruction},
            {"type": "text", "text": "Answer with the option's letter from the given choices directly! "},
            {"type": "text", "text": "Following is/are 1 image of normal sample, which can be used as a template to "
                                     "compare the image being queried."},
            {"type": "image_url", "image_url": {"url": png_url_as_qwen_vl_utils_sends(ref, (56, 56))}},
            {"type": "text", "text": "Following is the query image: "},
            {"type": "image_url", "image_url": {"url": png_url_as_qwen_vl_utils_sends(query, (56, 56))}},
            {"type": "text", "text": "Following is the question list: "},
            {"type": "text", "text": "Question: Is there any defect in the object? \nA. Yes.\nB. No.\n"},
        ]}],
        "max_tokens": 128,
        "temperature": 0,
        "seed": 0,
        "chat_template_kwargs": {"add_vision_id": True},  # "Picture N: " as the script's add_vision_id=True
    }


def test_gpt4o_protocol_exact_request_bodies_turn_by_turn(env, real_bench, tmp_path):
    bench = load_mmad(real_bench)
    item = bench.items[0]  # DS-MVTec/screw/image/scratch_head/000.png: a defect question, an object question
    ref, query = bench.references(item, 1)[0], bench.query(item)
    with ChatServer(fail_first=0, script=["1. Answer: A.", "1. Answer: A.\n2. Answer: D."]) as srv:
        env(srv.url)
        be = make_backend("openai", "gpt-4o", protocol="gpt4o", concurrency=1)
        records = run_mmad(bench, [item], be, tmp_path / "run", progress=False)
    assert [r.reply for r in records] == ["1. Answer: A.", "1. Answer: A.\n2. Answer: D."]
    assert score(records).counts["DS-MVTec"]["Object Classification"] == {"total": 1, "correct": 1}
    instruction = (
        "\nYou are an industrial inspector who checks products by images. You should judge whether there is a defect "
        "in the query image and answer the questions about it.\nAnswer with the option's letter from the given "
        "choices directly!\n\nFinally, you should output a list of answer, such as:\n1. Answer: B.\n2. Answer: B.\n"
        "3. Answer: A.\n...\n"
    )
    q1 = "Question: Is there any defect in the object? \nA. Yes.\nB. No.\n\n"
    q2 = "Question: What kind of product is in the image? \nA. Bottle.\nB. Candle.\nC. Cable.\nD. Screw.\n\n"
    images = [{"type": "image_url", "image_url": {"url": jpeg_url_as_the_gpt4o_script_sends(p), "detail": "low"}}
              for p in (ref, query)]
    for request, listed in zip(srv.requests, (q1, q1 + q2), strict=True):
        text = (instruction + "The first 1 image is the normal sample, which can be used as a template to compare."
                "The last image is the query imageFollowing is the question list: \n" + listed)
        assert request["body"] == {
            "model": "gpt-4o",
            "messages": [{"role": "user", "content": [*images, {"type": "text", "text": text}]}],
            "max_tokens": 200,
        }


def test_gpt4o_protocol_asks_again_after_a_refusal(env, real_bench, tmp_path):
    bench, item, images = first_item(real_bench)
    with ChatServer(fail_first=0, script=["I'm sorry, I can't help with that.", "1. Answer: A."]) as srv:
        env(srv.url)
        be = make_backend("openai", "gpt-4o", protocol="gpt4o", backoff_s=0.01)
        assert be.answer(images, item.questions[0]) == "1. Answer: A."
        assert len(srv.requests) == 2
    with ChatServer(fail_first=0, script=["Please provide a clearer image."] * 3) as srv:
        env(srv.url)
        be = make_backend("openai", "gpt-4o", protocol="gpt4o", backoff_s=0.01, max_retries=2)
        with pytest.raises(AdcopilotError, match="no answer after 3 attempts \\(refused: 'Please"):
            be.answer(images, item.questions[0])
    with ChatServer(fail_first=0, script=["Sorry, no."]) as srv:  # qwen takes any reply
        env(srv.url)
        assert make_backend("openai", "m").answer(images, item.questions[0]) == "Sorry, no."


def test_vision_ids_off_and_a_server_that_refuses_them(env, small_bench):
    bench, item, images = first_item(small_bench)
    with ChatServer(fail_first=0) as srv:
        env(srv.url)
        make_backend("openai", "m", vision_ids=False).answer(images, item.questions[0])
        make_backend("openai", "m", protocol="gpt4o").answer(images, item.questions[0])
    assert all("chat_template_kwargs" not in r["body"] for r in srv.requests)
    reject = "Unrecognized request argument supplied: chat_template_kwargs"
    with ChatServer(fail_first=0, reject=reject) as srv:
        env(srv.url)
        with pytest.raises(AdcopilotError, match="use --no-vision-ids"):
            make_backend("openai", "m").answer(images, item.questions[0])


def test_cli_protocol_and_image_size_options(env, real_bench, tmp_path, capsys):
    from adcopilot.cli import main

    with ChatServer(fail_first=0) as srv:
        env(srv.url)
        main(["eval", "mmad", "--benchmark", str(real_bench), "--backend", "openai", "--model", "gpt-4o",
              "--protocol", "gpt4o", "--max-image-size", "128", "--limit", "1", "--out", str(tmp_path / "r"), "--quiet"])
    meta = json.loads((tmp_path / "r" / "run.json").read_text())
    assert meta["identity"]["protocol"] == "gpt4o" and meta["failed"] == 0
    assert meta["backend"]["max_image_size"] == 128 and meta["backend"]["max_tokens"] == 200
    sizes = {Image.open(io.BytesIO(base64.b64decode(p["image_url"]["url"].split(",", 1)[1]))).size
             for r in srv.requests for p in r["body"]["messages"][0]["content"] if p["type"] == "image_url"}
    assert sizes == {(128, 128)}
    for bad, needle in ((["--protocol", "claude"], "unknown --protocol 'claude'; use qwen or gpt4o"),
                        (["--max-image-size", "-5"], "--max-image-size must be 0")):
        with pytest.raises(SystemExit) as exc:
            main(["eval", "mmad", "--benchmark", str(real_bench), *bad])
        assert exc.value.code == 2
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert len(err) == 1 and needle in err[0]
