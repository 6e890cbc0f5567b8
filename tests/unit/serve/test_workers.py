"""``serve --workers 2``: two real server processes on loopback, each with its own model, both answer."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx

START_LIMIT_S = 180


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_worker_processes_each_load_a_model_and_answer(tmp_path, images):
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "adcopilot", "serve", "--model", "baseline", "--workers", "2", "--port", str(port),
         "--no-register"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        pids: set[int] = set()
        deadline = time.monotonic() + START_LIMIT_S
        while len(pids) < 2:  # new connections reach both workers sooner or later
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, f"workers ready: {pids}"
            try:
                h = httpx.get(f"{url}/v1/health", timeout=5).json()
            except httpx.TransportError:
                time.sleep(0.2)
                continue
            if h["ready"]:
                pids.add(h["pid"])
            else:
                assert h["status"] == "loading", h
                time.sleep(0.1)
        assert proc.pid not in pids  # the workers are processes of their own
        files = [("query", ("bad.png", images["bad"], "image/png")), ("references", ("ref.png", images["ref"], "image/png"))]
        for _ in range(4):
            r = httpx.post(f"{url}/v1/inspect", files=files, timeout=60)
            assert r.status_code == 200 and r.json()["model"] == "baseline", r.text
        # A set registered with one worker is known to every worker (new connections reach both).
        rid = httpx.post(f"{url}/v1/references", files=[files[1]], timeout=60).json()["id"]
        for _ in range(6):
            r = httpx.post(f"{url}/v1/inspect", files=[files[0]], data={"reference_set": rid}, timeout=60)
            assert r.status_code == 200, r.text
    finally:
        proc.send_signal(signal.SIGTERM)  # a clean stop of the supervisor and both workers
        try:
            code = proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert code == 0

