"""The service run in a background thread (end-to-end tests, benchmarks): up inside the block, gone after."""

from __future__ import annotations

import httpx
import pytest

from adcopilot.serve.app import create_app
from adcopilot.serve.local import serve_in_thread


def test_serves_inside_the_block_and_stops_after(tiny_copilot):
    with serve_in_thread(create_app(tiny_copilot)) as url:
        assert httpx.get(url + "/v1/health").json()["model"] == "tiny"
        assert "AdcBoxes.judge" in httpx.get(url + "/").text  # the page, its scripts written in
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/v1/health", timeout=2)
