"""Batched inspections: requests that arrive together share one model pass and get exactly what they
would have got alone; the queue bound answers 503 with Retry-After at once; a request past its time
limit never reaches the model."""

from __future__ import annotations

import base64
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from adcopilot.serve import batching
from adcopilot.serve.app import create_app
from adcopilot.serve.batching import Batcher, QueueFull
from adcopilot.serve.service import InspectionService, ServeConfig, ServiceError

from .conftest import png

TOL = 1e-5


@pytest.fixture(scope="module")
def more(images) -> dict[str, bytes]:
    """A query shifted against the reference (registration moves it), another reference, a broken file."""
    ref = np.array(Image.open(io.BytesIO(images["ref"])))
    # A good part moved: with the defect painted on as well, no fit beats the unaligned images' correlation.
    return {"shifted": png(np.roll(ref, (2, 3), axis=(0, 1))), "other": png(np.ascontiguousarray(ref[:, ::-1])),
            "truncated": images["ref"][: len(images["ref"]) // 2]}


def _requests(images, more, rid):
    """Mixed requests: uploads and a registered set, one and two references, thresholds given or not."""
    def up(name, data):
        return (f"{name}.png", data)

    return [
        dict(query=up("bad", images["bad"]), references=[up("ref", images["ref"])]),
        dict(query=up("good", images["good"]), references=[], reference_set=rid),
        dict(query=up("shifted", more["shifted"]), references=[up("ref", images["ref"]), up("other", more["other"])]),
        dict(query=up("good", images["good"]), references=[up("other", more["other"])], threshold=0.01),
        dict(query=up("shifted", more["shifted"]), references=[], reference_set=rid, threshold=0.9),
        dict(query=up("bad", images["bad"]), references=[up("other", more["other"]), up("ref", images["ref"])]),
    ]


def _grid(out: dict) -> np.ndarray:
    g = out["anomaly_grid"]
    assert g["cell"] == 1  # the whole map, pixel by pixel
    return np.frombuffer(base64.b64decode(g["values"]), "<f4").reshape(g["height"], g["width"])


@pytest.mark.parametrize("which", ["nano", "baseline"])
def test_a_batch_of_mixed_requests_equals_the_requests_one_by_one(which, nano_copilot, tiny_copilot, images, more,
                                                                  as_one_batch):
    cp = nano_copilot if which == "nano" else tiny_copilot
    svc = InspectionService(cp, ServeConfig(max_batch=8, batch_window_ms=0))
    rid = svc.register_references([("ref.png", images["ref"])])["id"]
    calls = [{**kw, "heatmap": True} for kw in _requests(images, more, rid)]
    alone = [svc.inspect(**kw) for kw in calls]  # each its own batch: nothing else waits
    batches = svc._batcher.stats()["batches"]
    together = as_one_batch(svc, calls)
    stats = svc._batcher.stats()
    assert (stats["batches"] - batches, stats["batched_requests"]) == (1, 2 * len(calls))  # all in one batch
    for a, b in zip(alone, together, strict=True):
        assert np.abs(_grid(a) - _grid(b)).max() <= TOL
        assert b["score"] == pytest.approx(a["score"], abs=TOL)
        assert (b["verdict"], b["threshold"], b["image_check"], b["registration"]) == (
            a["verdict"], a["threshold"], a["image_check"], a["registration"])
        assert [x["bbox_2d"] for x in b["boxes"]] == [x["bbox_2d"] for x in a["boxes"]]
    # The requests differ, so the comparison is not vacuous: registration moved the shifted query.
    assert len({round(r["score"], 6) for r in alone}) > 3
    assert alone[2]["registration"]["method"] != "identity" or not cp.registration


def test_inspect_batch_is_inspect_pair_by_pair(nano_copilot, images, more):
    pairs = [(images["bad"], [images["ref"]]), (more["shifted"], [images["ref"], more["other"]]),
             (images["good"], images["ref"]), (images["good"], [more["other"]])]
    for one, many in zip([nano_copilot.inspect(q, r) for q, r in pairs], nano_copilot.inspect_batch(pairs), strict=True):
        assert np.abs(one.anomaly_map - many.anomaly_map).max() <= TOL
        assert many.score == pytest.approx(one.score, abs=TOL)
        assert (many.verdict, many.boxes, many.image_check) == (one.verdict, one.boxes, one.image_check)
        assert many.timings_ms["total"] >= many.timings_ms["detect"] > 0


def test_a_reference_that_does_not_decode_fails_its_own_request_only(nano_copilot, images, more, as_one_batch):
    svc = InspectionService(nano_copilot, ServeConfig(max_batch=8))
    calls = _requests(images, more, None)[:1] + [
        dict(query=("bad.png", images["bad"]), references=[("ref.png", images["ref"]), ("broken.png", more["truncated"])]),
    ] + [_requests(images, more, None)[2]]
    out = as_one_batch(svc, calls)
    assert isinstance(out[1], ServiceError) and out[1].status == 422
    assert str(out[1]).startswith("broken.png:"), out[1]
    assert out[0]["verdict"] == svc.inspect(**calls[0])["verdict"] and "score" in out[2]


def test_a_full_queue_is_a_503_with_retry_after_at_once(nano_copilot, images):
    app = create_app(nano_copilot, ServeConfig(max_queue=2))
    svc: InspectionService = app.state.service
    files = [("query", ("bad.png", images["bad"], "image/png")), ("references", ("ref.png", images["ref"], "image/png"))]
    kw = dict(query=("bad.png", images["bad"]), references=[("ref.png", images["ref"])])
    with ThreadPoolExecutor(2) as pool, svc._model_lock:
        waiting = [pool.submit(svc.inspect, **kw) for _ in range(2)]
        deadline = time.monotonic() + 30
        while svc._batcher.stats()["queued"] < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        t0 = time.monotonic()
        r = TestClient(app).post("/v1/inspect", files=files)
        refused_in = time.monotonic() - t0
    assert r.status_code == 503, r.text
    assert int(r.headers["Retry-After"]) >= 1
    assert r.json()["detail"].startswith("service busy: 2 requests waiting for the model (limit 2); retry after")
    assert refused_in < 5  # at once, not after the model came free (it was held)
    assert all(f.result(60)["model"] == "tiny-nano" for f in waiting)  # those admitted are served
    assert svc.health()["inspect_queue"]["refused"] == 1
    assert TestClient(app).post("/v1/inspect", files=files).status_code == 200  # room again


def test_a_request_past_its_time_limit_never_reaches_the_model(nano_copilot, images):
    svc = InspectionService(nano_copilot, ServeConfig(request_timeout_s=0.3))
    kw = dict(query=("bad.png", images["bad"]), references=[("ref.png", images["ref"])])
    with svc._model_lock:  # the model busy for longer than the limit
        with pytest.raises(ServiceError, match="did not come free within 0.3 s") as exc:
            svc.inspect(**kw)
        assert exc.value.status == 503
    assert svc.inspect(**kw)["model"] == "tiny-nano"  # the next one is served
    stats = svc._batcher.stats()
    assert (stats["dropped"], stats["batched_requests"], svc.requests) == (1, 1, 1)


def test_a_lone_request_does_not_wait_for_the_window(nano_copilot, images):
    svc = InspectionService(nano_copilot, ServeConfig(batch_window_ms=5000))
    kw = dict(query=("bad.png", images["bad"]), references=[("ref.png", images["ref"])])
    svc.inspect(**kw)
    t0 = time.monotonic()
    svc.inspect(**kw)
    took = time.monotonic() - t0
    assert took < 2.5
    stats = svc.health()["inspect_queue"]
    assert stats["batches"] == stats["batched_requests"] == 2 and 0 < stats["model_s"] < 2 * took + 5
    assert stats["model_cpu_s"] > 0


def test_the_batcher_passes_each_its_own_exception_and_its_thread_ends_when_idle(monkeypatch):
    monkeypatch.setattr(batching, "IDLE_EXIT_S", 0.05)

    def run(items):
        return [ValueError(f"odd {x}") if x % 2 else x * 10 for x in items]

    b: Batcher[int, int] = Batcher(run, threading.Lock(), max_batch=4, max_queue=8)
    futures = []
    for x in range(3):
        with b.admission() as submit:
            futures.append(submit(x, time.monotonic() + 10))
    assert futures[0].result(10) == 0 and futures[2].result(10) == 20
    with pytest.raises(ValueError, match="odd 1"):
        futures[1].result(10)
    deadline = time.monotonic() + 10
    while b._thread is not None:
        assert time.monotonic() < deadline, "the model thread did not end"
        time.sleep(0.02)
    with b.admission() as submit:  # a new thread for the next request
        assert submit(4, time.monotonic() + 10).result(10) == 40
    with b.admission():  # admitted, then left without submitting: the place is given back
        pass
    assert b.stats()["waiting"] == 0


def test_the_queue_bound_counts_requests_still_being_prepared():
    b: Batcher[int, int] = Batcher(lambda xs: xs, threading.Lock(), max_queue=1)
    with b.admission(), pytest.raises(QueueFull) as full, b.admission():
        pass
    assert full.value.retry_after_s >= 1 and b.stats()["refused"] == 1
    with b.admission() as submit:
        assert submit(7, time.monotonic() + 10).result(10) == 7


def test_a_large_jpeg_upload_scores_as_the_same_file_inspected_from_disk(nano_copilot, tmp_path):
    """The service decodes a JPEG at the reduced scale the model needs, as ``inspect`` does from a file (a
    full decode against a reduced one moved scores a little): the same score, size and boxes."""
    rng = np.random.default_rng(5)
    scene = (rng.random((1200, 1800, 3)) * 255).astype(np.uint8)  # fine grain: decodings differ in detail
    q = scene.copy()
    q[400:600, 700:900] = 255
    paths = {}
    for name, arr in (("q", q), ("r", scene)):
        paths[name] = tmp_path / f"{name}.jpg"
        Image.fromarray(arr).save(paths[name], quality=95)
    svc = InspectionService(nano_copilot, ServeConfig(batch_window_ms=0))
    out = svc.inspect(("q.jpg", paths["q"].read_bytes()), [("r.jpg", paths["r"].read_bytes())])
    want = nano_copilot.inspect(paths["q"], [paths["r"]])
    assert out["image_size"] == [1800, 1200] == list(want.image_size)
    assert out["score"] == pytest.approx(want.score, abs=TOL)
    assert [b["bbox_2d"] for b in out["boxes"]] == [b.bbox_2d for b in want.boxes]
