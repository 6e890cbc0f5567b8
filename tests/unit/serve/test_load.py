"""Bounded load test: concurrent requests to a real server on loopback; no errors, no memory growth."""

from __future__ import annotations

import gc
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil
import pytest
import uvicorn

from adcopilot.serve.app import create_app
from adcopilot.serve.service import ServeConfig

CLIENTS = 6
WARMUP = 30
REQUESTS = 180
TIME_LIMIT_S = 90.0
MAX_GROWTH_MB = 16.0


@pytest.fixture
def server(tiny_copilot):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(tiny_copilot, ServeConfig()), host="127.0.0.1", port=port,
                                        log_level="warning", access_log=False))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    th.join(10)


def test_concurrent_requests_no_errors_no_memory_growth(server, images):
    rid = httpx.post(f"{server}/v1/references", files=[("references", ("ref.png", images["ref"], "image/png"))]).json()["id"]
    local = threading.local()
    t_end = time.monotonic() + TIME_LIMIT_S

    def one(i: int) -> tuple[int, str]:
        if time.monotonic() > t_end:
            return -1, "time limit"
        if not hasattr(local, "client"):
            local.client = httpx.Client(timeout=30)
        which = "bad" if i % 2 else "good"
        # Half by registered set, half with the reference uploaded again.
        files = [("query", (f"{which}.png", images[which], "image/png"))]
        data = {}
        if i % 3:
            data["reference_set"] = rid
        else:
            files.append(("references", ("ref.png", images["ref"], "image/png")))
        r = local.client.post(f"{server}/v1/inspect", files=files, data=data)
        return r.status_code, r.json().get("verdict", r.text) if r.status_code == 200 else r.text

    proc = psutil.Process()
    with ThreadPoolExecutor(CLIENTS) as pool:
        warm = list(pool.map(one, range(WARMUP)))
        gc.collect()
        rss0 = proc.memory_info().rss
        t0 = time.perf_counter()
        results = list(pool.map(one, range(WARMUP, WARMUP + REQUESTS)))
        elapsed = time.perf_counter() - t0
        gc.collect()
        rss1 = proc.memory_info().rss
    errors = [r for r in warm + results if r[0] != 200]
    assert not errors, errors[:3]
    # Answers stay right under concurrency.
    assert all(v == ("anomalous" if i % 2 else "normal") for i, (_, v) in enumerate(results, start=WARMUP))
    growth = (rss1 - rss0) / 2**20
    assert growth < MAX_GROWTH_MB, f"RSS grew by {growth:.1f} MB over {REQUESTS} requests"
    health = httpx.get(f"{server}/v1/health").json()
    assert health["requests"] >= WARMUP + REQUESTS
    print(f"{REQUESTS / elapsed:.1f} requests/s, RSS growth {growth:.1f} MB")
