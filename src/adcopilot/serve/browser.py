"""A minimal headless-Chromium driver over the DevTools protocol, for checking the web page and
reports the way a user sees them (end-to-end tests, the report-opening benchmark).

Needs Chromium (Debian: ``apt-get install chromium``) and the ``websockets`` package (dev extra).

Usage::

    with HeadlessChromium() as b:
        b.navigate("http://127.0.0.1:8000/")
        b.set_files("#query-file", ["q.png"])
        b.evaluate("document.querySelector('#inspect-btn').click()")
        b.wait_for("document.querySelectorAll('.box').length > 0", timeout=30)
        b.screenshot("page.png")
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adcopilot.errors import AdcopilotError

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--disable-extensions", "--mute-audio", "--hide-scrollbars",
    "--remote-allow-origins=*",
]


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome executable, or None ($CHROMIUM overrides)."""
    env = os.environ.get("CHROMIUM")
    if env and Path(env).exists():
        return env
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


class HeadlessChromium:
    """One headless browser with one page, driven synchronously."""

    def __init__(self, executable: str | None = None, *, width: int = 1280, height: int = 900, timeout: float = 30.0) -> None:
        self.executable = executable or find_chromium()
        if self.executable is None:
            raise AdcopilotError("Chromium not found; install it (Debian: apt-get install chromium)")
        self.width, self.height, self.timeout = width, height, timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._ws: Any = None
        self._id = 0
        self.events: list[dict[str, Any]] = []
        self._tmp = tempfile.mkdtemp(prefix="adcopilot-chromium-")

    # ------------------------------------------------------------------ life cycle
    def __enter__(self) -> HeadlessChromium:
        try:
            from websockets.sync.client import connect
        except ImportError:  # pragma: no cover - the dev extra installs it
            raise AdcopilotError("the 'websockets' package is needed to drive Chromium (pip install websockets)") from None
        args = [self.executable, *FLAGS, f"--user-data-dir={self._tmp}", "--remote-debugging-port=0",
                f"--window-size={self.width},{self.height}", "about:blank"]
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = Path(self._tmp) / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while not (port_file.exists() and port_file.read_text().strip()):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise AdcopilotError(f"{self.executable}: Chromium did not start")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=self.timeout) as r:
            targets = json.loads(r.read())
        page = next(t for t in targets if t.get("type") == "page")
        self._ws = connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=self.timeout)
        self.send("Page.enable")
        self.send("Runtime.enable")
        self.send("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height,
                  deviceScaleFactor=1, mobile=False)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._ws is not None:
            with contextlib.suppress(Exception):  # closing a dead socket
                self._ws.close()
            self._ws = None
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        shutil.rmtree(self._tmp, ignore_errors=True)

    # ------------------------------------------------------------------ protocol
    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Call a DevTools method and return its result (events that arrive meanwhile are kept)."""
        self._id += 1
        mid = self._id
        self._ws.send(json.dumps({"id": mid, "method": method, "params": params}))
        deadline = time.monotonic() + self.timeout
        while True:
            msg = json.loads(self._ws.recv(timeout=max(0.01, deadline - time.monotonic())))
            if msg.get("id") == mid:
                if "error" in msg:
                    raise AdcopilotError(f"DevTools {method}: {msg['error'].get('message')}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def wait_event(self, method: str, timeout: float | None = None) -> dict[str, Any]:
        for i, e in enumerate(self.events):
            if e["method"] == method:
                return self.events.pop(i)["params"]
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {method} event")
            msg = json.loads(self._ws.recv(timeout=left))
            if msg.get("method") == method:
                return msg.get("params", {})
            if "method" in msg:
                self.events.append(msg)

    # ------------------------------------------------------------------ page helpers
    def navigate(self, url: str, timeout: float | None = None) -> float:
        """Open ``url``; seconds until its load event."""
        self.events.clear()
        t0 = time.perf_counter()
        self.send("Page.navigate", url=url)
        self.wait_event("Page.loadEventFired", timeout)
        return time.perf_counter() - t0

    def evaluate(self, expression: str, *, await_promise: bool = True) -> Any:
        r = self.send("Runtime.evaluate", expression=expression, awaitPromise=await_promise, returnByValue=True)
        if "exceptionDetails" in r:
            raise AdcopilotError(f"script error: {r['exceptionDetails'].get('text')} in {expression[:60]}")
        return r.get("result", {}).get("value")

    def wait_for(self, condition: str, timeout: float | None = None, interval: float = 0.1) -> Any:
        """Poll a JavaScript expression until it is truthy; return its value."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            value = self.evaluate(condition)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for: {condition}")
            time.sleep(interval)

    def set_files(self, selector: str, paths: Sequence[str | os.PathLike]) -> None:
        """Choose files in an ``<input type=file>`` as a user would (fires its change event)."""
        root = self.send("DOM.getDocument")["root"]["nodeId"]
        node = self.send("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
        if not node:
            raise AdcopilotError(f"no element matches {selector}")
        self.send("DOM.setFileInputFiles", files=[str(Path(p).resolve()) for p in paths], nodeId=node)

    def screenshot(self, path: str | os.PathLike) -> Path:
        data = self.send("Page.captureScreenshot", format="png")["data"]
        p = Path(path)
        p.write_bytes(base64.b64decode(data))
        return p
