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
        rendezvous: int = 0, rendezvous_s: float = 10.0,
    ) -> None:
        self.requests: list[dict] = []
        self.barrier = threading.Barrier(rendezvous, timeout=rendezvous_s) if rendezvous > 1 else None
        self.waiting_left = rendezvous
        self.fail_left = fail_first
        self.always_fail = always_fail
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
                    return self._send(200, {"choices": [{"message": {"role": "assistant", "content": server.reply(body)}}]})
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


@pytest.fixture
def env(monkeypatch):
    def set_url(url):
        monkeypatch.setenv("ADCOPILOT_OPENAI_BASE_URL", url)
        monkeypatch.setenv("ADCOPILOT_OPENAI_API_KEY", "test-key")
    return set_url


def test_answer_retries_after_500_and_sends_the_official_prompt(env, small_bench):
    bench = load_mmad(small_bench)
    item = bench.items[0]
    images = [*bench.references(item, 1), bench.resolve(item.image_path)]
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
    bench = load_mmad(small_bench)
    item = bench.items[0]
    images = [*bench.references(item, 1), bench.resolve(item.image_path)]
    with ChatServer(fail_first=0) as srv:
        env(srv.url)
        ans = make_backend("openai", "m", box_coords="pixel").boxes(images)
        assert ans.frame == (64, 64)
        assert parse_boxes(ans.text, (64, 64), ans.coords, ans.frame) == [[0.0, 0.0, 32.0, 32.0]]
        q = make_backend("openai", "m").boxes(images)  # default: Qwen2.5-VL's resized frame
        assert q.frame == (56, 56)
        assert parse_boxes(q.text, (64, 64), q.coords, q.frame)[0][2] == pytest.approx(32 * 64 / 56)


def test_gives_up_after_retries_and_refuses_bad_keys(env, small_bench, tmp_path, monkeypatch):
    bench = load_mmad(small_bench)
    item = bench.items[0]
    images = [*bench.references(item, 1), bench.resolve(item.image_path)]
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
