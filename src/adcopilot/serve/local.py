"""Run the service in a background thread on a free local port: for end-to-end tests of the page
and for benchmarks that talk to it over real HTTP.

Usage::

    with serve_in_thread(create_app(Copilot.load())) as url:
        httpx.get(url + "/v1/health")
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI

from adcopilot.errors import AdcopilotError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve_in_thread(app: FastAPI, *, timeout: float = 30.0) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 until the block ends; yields its base URL."""
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    th = threading.Thread(target=srv.run, daemon=True, name="adcopilot-serve")
    th.start()
    deadline = time.monotonic() + timeout
    while not srv.started:
        if not th.is_alive() or time.monotonic() > deadline:
            srv.should_exit = True
            raise AdcopilotError(f"the service did not start on port {port} within {timeout:g} s")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        th.join(10)
