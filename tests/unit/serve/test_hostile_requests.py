"""Requests an adversary would send: non-finite thresholds, huge or deeply nested histories, slow
work; and readiness while the model loads. Always a JSON answer, never a 500 in plain text, and
the service stays free for others."""

from __future__ import annotations

import io
import json
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from adcopilot.errors import AdcopilotError
from adcopilot.serve.app import create_app
from adcopilot.serve.history import nesting_depth
from adcopilot.serve.service import ServeConfig

from .conftest import png


def _pair(images, query="bad"):
    return [("query", (f"{query}.png", images[query], "image/png")),
            ("references", ("ref.png", images["ref"], "image/png"))]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN", "Infinity"])
def test_a_non_finite_threshold_is_a_422(client, images, value):
    r = client.post("/v1/inspect", files=_pair(images), data={"threshold": value})
    assert r.status_code == 422, r.text
    assert "must be a finite number" in r.json()["detail"] or "finite" in r.json()["detail"]


def _history(turns: int, chars: int = 10) -> str:
    return json.dumps([{"role": "user" if i % 2 == 0 else "assistant", "content": "x" * chars} for i in range(turns)])


@pytest.mark.parametrize(
    ("history", "message"),
    [
        (_history(200), "history: too many turns (200, limit 16)"),
        (_history(4, 3000), "history: too long (12,000 characters, limit 8,000)"),
        (_history(2, 40_000), "history: too long ("),
        ("[" * 5000 + "]" * 5000, "history: nested too deeply"),
        ("[" * 200_000 + "]" * 200_000, "history: too long ("),
        ('[{"role": "user", "content": [[[["deep"]]]]}]', "history: nested too deeply"),
        ('[{"role": "user", "content": "a ]] [[ in a string is text"}]', None),
        ("[{", "history: malformed JSON"),
    ],
)
def test_history_is_capped_with_a_422(client, images, history, message):
    r = client.post("/v1/ask", files=_pair(images), data={"question": "Is there a defect?", "history": history})
    if message is None:  # a valid history reaches the model, which has no language model here
        assert r.status_code == 501, r.text
        return
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.json()["detail"].startswith(message)


def test_nesting_depth_skips_strings():
    assert nesting_depth('[{"a": "[[[[", "b": "\\"[["}]', 10) == 2
    assert nesting_depth("[" * 50, 3) == 4  # stops counting past the limit


def test_a_request_past_its_time_limit_is_a_503_and_the_service_stays_free(tiny_copilot, images):
    # A large plain image: decoding it and mapping the anomalies onto 9 million pixels takes far more than 10 ms.
    big = png(np.full((3000, 3000, 3), 128, np.uint8))
    client = TestClient(create_app(tiny_copilot, ServeConfig(request_timeout_s=0.01)))
    t0 = time.monotonic()
    r = client.post("/v1/inspect", files=[("query", ("big.png", big, "image/png")),
                                          ("references", ("ref.png", images["ref"], "image/png"))])
    assert r.status_code == 503, r.text
    assert "time limit (0.01 s)" in r.json()["detail"]
    assert time.monotonic() - t0 < 5
    assert client.get("/v1/health").json()["live"] is True


def test_an_unexpected_fault_is_a_json_500(tiny_copilot):
    app = create_app(tiny_copilot, ServeConfig())

    @app.get("/fault")
    def fault() -> None:
        raise RuntimeError("a fault of ours")

    r = TestClient(app, raise_server_exceptions=False).get("/fault")
    assert r.status_code == 500
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"detail": "internal error (RuntimeError); the service log has the details"}


def test_health_reports_readiness_while_the_model_loads(tiny_copilot, images):
    release = threading.Event()

    def load():
        release.wait(30)
        return tiny_copilot

    client = TestClient(create_app(load, ServeConfig()))
    h = client.get("/v1/health").json()
    assert (h["live"], h["ready"], h["status"], h["model"]) == (True, False, "loading", None)
    assert client.get("/v1/ready").status_code == 503
    r = client.post("/v1/inspect", files=_pair(images))
    assert r.status_code == 503 and r.json()["detail"].startswith("not ready: the model is loading")
    release.set()
    deadline = time.monotonic() + 10
    while not client.get("/v1/health").json()["ready"]:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert client.get("/v1/ready").json() == {"ready": True, "model": "tiny"}
    assert client.post("/v1/inspect", files=_pair(images)).json()["verdict"] == "anomalous"


def test_a_model_that_cannot_load_leaves_the_service_live_and_says_why():
    def load():
        raise AdcopilotError("nowhere: no such checkpoint folder")

    client = TestClient(create_app(load, ServeConfig()))
    deadline = time.monotonic() + 10
    while (h := client.get("/v1/health").json())["status"] == "loading":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert (h["live"], h["ready"], h["status"]) == (True, False, "failed")
    assert h["error"] == "nowhere: no such checkpoint folder"
    r = client.get("/v1/models")
    assert r.status_code == 503 and "could not be loaded (nowhere: no such checkpoint folder)" in r.json()["detail"]


def _distinct_ref(images, seed: int) -> bytes:
    arr = np.asarray(Image.open(io.BytesIO(images["ref"]))).copy()
    arr[0, 0] = seed  # another image, so another cache entry
    return png(arr)


def test_deleting_a_reference_set_frees_its_cached_features(make_client, tiny_copilot, images):
    client = make_client()
    ref = _distinct_ref(images, 7)
    rid = client.post("/v1/references", files=[("references", ("r.png", ref, "image/png"))]).json()["id"]
    before = client.get("/v1/health").json()["cached_references"]
    r = client.post("/v1/inspect", files=[("query", ("q.png", images["good"], "image/png"))], data={"reference_set": rid})
    assert r.status_code == 200, r.text
    assert client.get("/v1/health").json()["cached_references"] == before + 1
    assert client.delete(f"/v1/references/{rid}").json() == {"deleted": rid, "freed_references": 1}
    assert client.get("/v1/health").json()["cached_references"] == before


def test_a_set_pushed_out_of_the_store_frees_its_features_too(make_client, images):
    client = make_client(max_reference_sets=1)
    first, second = _distinct_ref(images, 11), _distinct_ref(images, 12)
    rid = client.post("/v1/references", files=[("references", ("a.png", first, "image/png"))]).json()["id"]
    client.post("/v1/inspect", files=[("query", ("q.png", images["good"], "image/png"))], data={"reference_set": rid})
    before = client.get("/v1/health").json()["cached_references"]
    client.post("/v1/references", files=[("references", ("b.png", second, "image/png"))])
    h = client.get("/v1/health").json()
    assert h["reference_sets"] == 1 and h["cached_references"] == before - 1


def test_workers_sharing_a_folder_share_their_reference_sets(tiny_copilot, images, tmp_path):
    # Two apps over one folder, as the worker processes of `serve --workers 2` are.
    a, b = (TestClient(create_app(tiny_copilot, ServeConfig(sets_dir=str(tmp_path), max_reference_sets=2)))
            for _ in range(2))
    rid = a.post("/v1/references", files=[("references", ("r.png", images["ref"], "image/png"))],
                 data={"name": "line 3"}).json()["id"]
    assert [s["name"] for s in b.get("/v1/references").json()["reference_sets"]] == ["line 3"]
    r = b.post("/v1/inspect", files=[("query", ("q.png", images["bad"], "image/png"))], data={"reference_set": rid})
    assert r.status_code == 200 and r.json()["verdict"] == "anomalous", r.text
    assert b.delete(f"/v1/references/{rid}").status_code == 200
    r = a.post("/v1/inspect", files=[("query", ("q.png", images["bad"], "image/png"))], data={"reference_set": rid})
    assert r.status_code == 404
    # The limit holds over the folder: the least recently used set goes first.
    ids = [a.post("/v1/references", files=[("references", (f"{k}.png", _distinct_ref(images, k), "image/png"))]).json()["id"]
           for k in (21, 22)]
    b.post("/v1/inspect", files=[("query", ("q.png", images["good"], "image/png"))], data={"reference_set": ids[0]})
    b.post("/v1/references", files=[("references", ("23.png", _distinct_ref(images, 23), "image/png"))])
    left = {s["id"] for s in a.get("/v1/references").json()["reference_sets"]}
    assert len(left) == 2 and ids[0] in left and ids[1] not in left


@pytest.mark.parametrize(
    ("path", "extra", "message"),
    [
        ("/v1/inspect", {"thresold": "0.3"}, "unknown field 'thresold' (this endpoint takes: query, reference_set, "
                                              "threshold, heatmap, preview, references)"),
        ("/v1/inspect", {"reference": "x", "foo": "1"}, "unknown fields 'foo', 'reference'"),
        ("/v1/ask", {"question": "Where?", "histroy": "[]"}, "unknown field 'histroy'"),
        ("/v1/references", {"nmae": "cells"}, "unknown field 'nmae'"),
    ],
)
def test_a_misspelt_field_is_refused_not_ignored(client, images, path, extra, message):
    files = _pair(images) if path != "/v1/references" else [("references", ("ref.png", images["ref"], "image/png"))]
    r = client.post(path, files=files, data=extra)
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith(message)


def test_a_repeated_single_field_is_refused_and_references_may_repeat(client, images):
    twice = [("query", ("a.png", images["bad"], "image/png"))] + _pair(images)
    r = client.post("/v1/inspect", files=twice)
    assert r.status_code == 422, r.text
    assert r.json()["detail"] == "query: given 2 times; send it once"
    r = client.post("/v1/inspect", files=_pair(images), data={"threshold": ["0.2", "0.9"]})
    assert r.status_code == 422 and r.json()["detail"] == "threshold: given 2 times; send it once"
    refs = _pair(images) + [("references", ("ref2.png", images["ref"], "image/png"))]
    r = client.post("/v1/inspect", files=refs, data={"threshold": "0.9", "heatmap": "true"})
    assert r.status_code == 200, r.text
    assert len(r.json()["references"]) == 2
