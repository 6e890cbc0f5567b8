"""The shipped model behind ``adcopilot serve``'s chat endpoint: ``eval mmad --backend openai``
through it answers and scores as ``--backend nano`` on 8 of the bundled benchmark's held-out
photos (55 questions, every sub-task), and a free question streams its answer token by token."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

from adcopilot import assets
from adcopilot.eval.mmad import SUBTASKS, subtask_of


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    """A home holding the installed assets, models and bundled benchmark but no stored calibration."""
    real = assets.home()
    home = tmp_path_factory.mktemp("home")
    for sub in ("assets", "models", "wheels", "benchmarks"):
        if (real / sub).exists():
            (home / sub).symlink_to(real / sub)
    return dict(os.environ, ADCOPILOT_HOME=str(home), OMP_NUM_THREADS="1")


@pytest.fixture(scope="module")
def server(env) -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "adcopilot", "serve", "--port", str(port), "--threads", "1"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else "serve exited"
        try:
            if httpx.get(url + "/v1/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "serve did not come up"
        time.sleep(0.5)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def evaluate(env: dict[str, str], out, *args: str) -> list[dict]:
    p = subprocess.run([sys.executable, "-m", "adcopilot", "eval", "mmad", "--benchmark", "bundled", "--dataset",
                        "HeldOut-Photos", "--limit", "8", "--out", str(out), "--quiet", *args],
                       capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    return [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]


def test_eval_through_the_endpoint_scores_as_the_nano_backend(env, server, tmp_path):
    nano = evaluate(env, tmp_path / "nano", "--backend", "nano")
    remote = evaluate(dict(env, ADCOPILOT_OPENAI_BASE_URL=server + "/v1"), tmp_path / "openai",
                      "--backend", "openai", "--protocol", "files", "--model", "default", "--concurrency", "2")
    key = lambda r: (r["image"], r["q"])  # noqa: E731
    assert len(nano) == len(remote) > 40 and not any(r.get("error") for r in remote)
    assert {key(r): r["reply"] for r in remote} == {key(r): r["reply"] for r in nano}
    assert {subtask_of(r["type"]) for r in nano} == set(SUBTASKS)  # normal and anomalous photos: every sub-task
    for name in ("scores_official.json", "scores_strict.json"):
        assert json.loads((tmp_path / "openai" / name).read_text()) == json.loads((tmp_path / "nano" / name).read_text())


def test_a_free_question_streams(server):
    from adcopilot.eval.openai_protocols import file_image

    root = assets.home() / "benchmarks" / "bundled" / "HeldOut-Photos" / "coffee_cup"
    ref, query = sorted((root / "train" / "good").glob("*.png"))[0], sorted((root / "test").glob("*/*.png"))[-1]
    content = [{"type": "image_url", "image_url": {"url": file_image(p, None)[0]}} for p in (ref, query)]

    def streamed(question: str) -> tuple[list[str], str]:
        body = {"model": "default", "messages": [{"role": "user", "content": [
            *content, {"type": "text", "text": question}]}], "stream": True}
        pieces = []
        with httpx.stream("POST", server + "/v1/chat/completions", json=body, timeout=120) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    delta = json.loads(line[6:])["choices"][0]["delta"]
                    pieces.append(delta.get("content") or "")
        whole = httpx.post(server + "/v1/chat/completions", json={**body, "stream": False}, timeout=120).json()
        return pieces, whole["choices"][0]["message"]["content"]

    # A question about the defect: composed from the inspection, sent whole.
    pieces, text = streamed("What is the defect and where is it?")
    assert "".join(pieces) == text and text
    # A question the language model answers: token by token.
    pieces, text = streamed("Write one sentence about the photo.")
    assert len([p for p in pieces if p]) > 3 and "".join(pieces) == text and text
