"""The REST API with a tiny model: inspection, reference sets, limits, errors, API key, ask."""

from __future__ import annotations

import base64
import io
import json
from importlib import resources

import numpy as np
import pytest
from PIL import Image

from .conftest import DEFECT, png


def _files(images, query="bad", refs=("ref",)):
    return [("query", (f"{query}.png", images[query], "image/png"))] + [
        ("references", (f"{r}{i}.png", images[r], "image/png")) for i, r in enumerate(refs)
    ]


def test_health_models_and_schema(client, tiny_copilot):
    h = client.get("/v1/health").json()
    assert h["status"] == "ok" and h["model"] == "tiny"
    m = client.get("/v1/models").json()["models"][0]
    assert m["name"] == "tiny" and m["image_size"] == 64 and m["threshold"] == pytest.approx(tiny_copilot.threshold)
    assert m["threshold_source"] == "model" and m["language"] is False and m["runtime"] == "pytorch"
    assert m["threshold_with_2_or_more_references"] == pytest.approx(tiny_copilot.threshold_with(2))
    steps = m["threshold_by_references"]  # from which count each threshold applies
    assert steps["1"] == pytest.approx(tiny_copilot.threshold_with(1))
    assert all(v == pytest.approx(tiny_copilot.threshold_with(int(k))) for k, v in steps.items())
    scores = m["image_score_by_references"]  # the score each count is scored with, from which count
    assert scores["1"] == tiny_copilot.detector.image_score_for(1)
    assert all(v == tiny_copilot.detector.image_score_for(int(k)) for k, v in scores.items())
    schema = client.get("/openapi.json").json()
    assert {"/v1/inspect", "/v1/ask", "/v1/references", "/v1/health", "/v1/models"} <= set(schema["paths"])
    body = schema["paths"]["/v1/inspect"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in body


def test_inspect_defective_and_clean(client, images):
    r = client.post("/v1/inspect", files=_files(images, "bad"), data={"heatmap": "true"})
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["verdict"] == "anomalous" and d["query"] == "bad.png" and d["references"] == ["ref0.png"]
    x1, y1, x2, y2 = d["boxes"][0]["bbox_2d"]
    dx1, dy1, dx2, dy2 = DEFECT
    assert x1 < dx2 and x2 > dx1 and y1 < dy2 and y2 > dy1  # overlaps the painted square, query pixels
    heat = Image.open(io.BytesIO(base64.b64decode(d["heatmap"].split(",", 1)[1])))
    assert heat.mode == "RGBA" and heat.size == (96, 96)
    alpha = np.asarray(heat)[..., 3]
    assert alpha[dy1:dy2, dx1:dx2].mean() > alpha.mean()  # the overlay is strongest on the defect
    ok = client.post("/v1/inspect", files=_files(images, "good")).json()
    assert ok["verdict"] == "normal" and ok["boxes"] == [] and "heatmap" not in ok


def test_explicit_threshold_and_preview(client, images):
    d = client.post("/v1/inspect", files=_files(images, "bad"), data={"threshold": "1000", "preview": "true"}).json()
    assert d["threshold"] == 1000 and d["verdict"] == "normal"
    assert d["preview"].startswith("data:image/jpeg;base64,")


def test_reference_sets(client, images):
    reg = client.post("/v1/references", files=[("references", ("a.png", images["ref"], "image/png"))],
                      data={"name": "line 3"})
    assert reg.status_code == 200, reg.text
    rid = reg.json()["id"]
    assert reg.json()["count"] == 1 and reg.json()["name"] == "line 3"
    # The same images give the same id (idempotent registration).
    assert client.post("/v1/references", files=[("references", ("b.png", images["ref"], "image/png"))]).json()["id"] == rid
    assert [s["id"] for s in client.get("/v1/references").json()["reference_sets"]] == [rid]
    by_set = client.post("/v1/inspect", files=[("query", ("q.png", images["bad"], "image/png"))],
                         data={"reference_set": rid}).json()
    by_files = client.post("/v1/inspect", files=_files(images, "bad")).json()
    assert by_set["score"] == pytest.approx(by_files["score"]) and by_set["reference_set"] == rid
    assert client.delete(f"/v1/references/{rid}").status_code == 200
    gone = client.post("/v1/inspect", files=[("query", ("q.png", images["bad"], "image/png"))], data={"reference_set": rid})
    assert gone.status_code == 404 and "not found" in gone.json()["detail"]
    assert client.delete(f"/v1/references/{rid}").status_code == 404


def test_reference_set_store_is_bounded(make_client, images):
    c = make_client(max_reference_sets=2)
    ids = []
    for v in range(3):
        arr = np.full((32, 32, 3), 40 * v + 10, np.uint8)
        ids.append(c.post("/v1/references", files=[("references", ("r.png", png(arr), "image/png"))]).json()["id"])
    assert [s["id"] for s in c.get("/v1/references").json()["reference_sets"]] == ids[1:]


@pytest.mark.parametrize(
    ("files", "data", "status", "message"),
    [
        ([("query", ("q.png", b"\x89PNG\r\n\x1a\nbroken", "image/png")), ("references", ("r.png", b"REF", "image/png"))],
         {}, 422, "not an image file"),
        ([("query", ("q.png", b"", "image/png")), ("references", ("r.png", b"REF", "image/png"))], {}, 422, "q.png: empty file"),
        ([("query", ("q.png", b"GOOD", "image/png"))], {}, 422, "at least one normal reference"),
        ([("references", ("r.png", b"REF", "image/png"))], {}, 422, "query: Field required"),
        ([("query", ("q.png", b"GOOD", "image/png")), ("references", ("r.png", b"REF", "image/png"))],
         {"reference_set": "abc"}, 422, "either reference images or a reference_set"),
        ([("query", ("q.png", b"GOOD", "image/png"))], {"reference_set": "abc"}, 404, "reference set 'abc' not found"),
        ([("query", ("q.gif", b"GIF", "image/gif")), ("references", ("r.png", b"REF", "image/png"))], {}, 415,
         "unsupported image format GIF"),
        ([("query", ("q.png", b"GOOD", "image/png")), ("references", ("r.png", b"REF", "image/png"))],
         {"threshold": "high"}, 422, "threshold:"),
    ],
)
def test_clear_4xx_errors(client, images, files, data, status, message):
    gif = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(gif, format="GIF")
    subst = {b"GOOD": images["bad"], b"REF": images["ref"], b"GIF": gif.getvalue()}
    files = [(k, (n, subst.get(b, b), t)) for k, (n, b, t) in files]
    r = client.post("/v1/inspect", files=files, data=data)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and message in detail


def test_broken_reference_is_named(client, images):
    files = [("query", ("q.png", images["bad"], "image/png")), ("references", ("good-part.png", images["ref"][:200], "image/png"))]
    r = client.post("/v1/inspect", files=files)
    assert r.status_code == 422 and "good-part.png" in r.json()["detail"]


def test_a_blank_reference_is_named_by_its_upload_in_the_notes(client, images):
    blank = png(np.zeros((96, 96, 3), np.uint8))
    files = [("query", ("q.png", images["good"], "image/png")), ("references", ("ref-a.png", images["ref"], "image/png")),
             ("references", ("ref-b.png", images["ref"], "image/png")), ("references", ("lens-cap.png", blank, "image/png"))]
    d = client.post("/v1/inspect", files=files).json()
    assert d["notes"] == ["reference lens-cap.png is unlike the other references (blank image): remove it, or "
                          "verdicts compared with it may be wrong"]
    assert "notes" not in client.post("/v1/inspect", files=files[:3]).json()  # the two good ones: nothing to say


def test_limits_on_pixels_body_and_references(make_client, images):
    c = make_client(max_pixels=50 * 50)
    r = c.post("/v1/inspect", files=_files(images, "bad"))
    assert r.status_code == 413 and "bad.png: image too large (96x96 pixels, limit 2,500)" in r.json()["detail"]
    c = make_client(max_upload_bytes=len(images["bad"]) + 100)
    r = c.post("/v1/inspect", files=_files(images, "bad"))
    assert r.status_code == 413 and "too large" in r.json()["detail"]
    # Without a Content-Length (chunked upload) the body is counted as it streams in.
    def chunks():
        for _ in range(len(images["bad"]) // 1000 + 10):
            yield b"--x\r\n" + b"0" * 1000

    r = c.post("/v1/inspect", content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 413 and "too large" in r.json()["detail"]
    c = make_client(max_references=2)
    r = c.post("/v1/inspect", files=_files(images, "bad", refs=("ref", "ref", "ref")))
    assert r.status_code == 422 and "too many references (3, limit 2)" in r.json()["detail"]


def test_api_key(make_client, images):
    c = make_client(api_key="s3cret")
    assert c.get("/v1/health").status_code == 200  # liveness stays open
    assert c.get("/").status_code == 200  # the page itself; it asks for the key
    r = c.post("/v1/inspect", files=_files(images, "bad"))
    assert r.status_code == 401 and "API key" in r.json()["detail"]
    assert c.get("/v1/models", headers={"X-API-Key": "wrong"}).status_code == 401
    assert c.get("/v1/models", headers={"X-API-Key": "s3cret"}).status_code == 200
    assert c.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    r = c.post("/v1/inspect", files=_files(images, "bad"), headers={"X-API-Key": "s3cret"})
    assert r.status_code == 200 and r.json()["verdict"] == "anomalous"


def test_ask_without_a_language_model_is_a_clear_501(client, images, tiny_copilot):
    assert getattr(tiny_copilot, "language", None) is None
    r = client.post("/v1/ask", files=_files(images, "bad"), data={"question": "Is there a defect?"})
    assert r.status_code == 501 and "tiny" in r.json()["detail"]
    r = client.post("/v1/ask", files=_files(images, "bad"), data={"question": "   "})
    assert r.status_code == 422 and "question is empty" in r.json()["detail"]
    r = client.post("/v1/ask", files=_files(images, "bad"), data={"question": "Where?", "history": "[{"})
    assert r.status_code == 422 and "history: malformed JSON" in r.json()["detail"]
    r = client.post("/v1/ask", files=_files(images, "bad"), data={"question": "Where?", "history": json.dumps([{"x": 1}])})
    assert r.status_code == 422 and "history: expected a list" in r.json()["detail"]


def test_the_page_is_self_contained(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    assert 'id="query-file"' in page and 'id="ref-files"' in page and "/v1/inspect" in page
    assert "/v1/chat/completions" in page and 'id="stop-btn"' in page  # questions are streamed
    for bad in ("<script src", "<link ", "http://", "https://", "@import"):
        assert bad not in page
    assert client.get("/docs").status_code == 404  # the CDN-based docs are off; /openapi.json stays


def test_the_page_carries_its_styles_and_scripts(client):
    page = client.get("/").text
    for part in ("static/page.css", "static/boxes.js", "static/viewer.js", "static/page.js"):
        text = resources.files("adcopilot.serve").joinpath(part).read_text(encoding="utf-8")
        assert text in page, part  # written in whole, not linked
    assert "/static/" not in page
