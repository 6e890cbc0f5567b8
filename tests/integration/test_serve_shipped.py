"""The REST service with the shipped default model and real images (a painted defect on a brick wall)."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from adcopilot import Copilot
from adcopilot.geometry import box_iou
from adcopilot.serve.app import create_app

DEFECT = [300, 200, 340, 240]


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def pair() -> dict[str, bytes]:
    from skimage import data

    ref = data.brick()
    bad = ref.copy()
    x1, y1, x2, y2 = DEFECT
    bad[y1:y2, x1:x2] = 250
    return {"ref": _png(ref), "bad": _png(bad), "good": _png(ref)}


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> TestClient:
    import os

    from adcopilot import assets

    # A home without stored calibrations, but with the fetched assets and converted models.
    real = assets.home()
    home = tmp_path_factory.mktemp("home")
    for sub in ("assets", "models", "wheels"):
        if (real / sub).exists():
            (home / sub).symlink_to(real / sub)
    os.environ["ADCOPILOT_HOME"] = str(home)
    return TestClient(create_app(Copilot.load()))


def test_shipped_model_over_http(client, pair):
    models = client.get("/v1/models").json()["models"]
    assert models[0]["name"] == Copilot.load().model_name
    rid = client.post("/v1/references", files=[("references", ("wall.png", pair["ref"], "image/png"))]).json()["id"]
    bad = client.post("/v1/inspect", files=[("query", ("q.png", pair["bad"], "image/png"))],
                      data={"reference_set": rid, "heatmap": "true"})
    assert bad.status_code == 200, bad.text
    d = bad.json()
    assert d["verdict"] == "anomalous" and d["image_size"] == [512, 512]
    assert box_iou(d["boxes"][0]["bbox_2d"], DEFECT) > 0.3
    good = client.post("/v1/inspect", files=[("query", ("g.png", pair["good"], "image/png"))], data={"reference_set": rid})
    assert good.json()["verdict"] == "normal" and good.json()["score"] < d["score"]


def test_ask_is_answered_or_refused_clearly(client, pair):
    r = client.post("/v1/ask", files=[("query", ("q.png", pair["bad"], "image/png")),
                                      ("references", ("wall.png", pair["ref"], "image/png"))],
                    data={"question": "Is there a defect? Where?"})
    cp = client.app.state.service.copilot
    if getattr(cp, "language", None) is None:
        assert r.status_code == 501 and "language model" in r.json()["detail"]
    else:
        assert r.status_code == 200 and r.json()["answer"].strip(), r.text


def test_a_batch_of_mixed_requests_equals_them_one_by_one(client, pair, as_one_batch):
    """Requests that share one model pass get the map and score each gets alone (to 1e-5)."""
    svc = client.app.state.service
    ref = np.array(Image.open(io.BytesIO(pair["ref"])))
    bad = np.array(Image.open(io.BytesIO(pair["bad"])))
    other, shifted = _png(np.ascontiguousarray(ref[::-1])), _png(np.roll(bad, (6, 9), axis=(0, 1)))
    rid = svc.register_references([("wall.png", pair["ref"])])["id"]
    calls = [dict(query=("bad.png", pair["bad"]), references=[], reference_set=rid, heatmap=True),
             dict(query=("good.png", pair["good"]), references=[("wall.png", pair["ref"])], heatmap=True),
             dict(query=("shifted.png", shifted), references=[("wall.png", pair["ref"]), ("other.png", other)],
                  heatmap=True),
             dict(query=("shifted.png", shifted), references=[("other.png", other)], threshold=0.2, heatmap=True)]
    assert len(calls) <= svc.config.max_batch
    alone = [svc.inspect(**kw) for kw in calls]
    before = svc.health()["inspect_queue"]["batches"]
    together = as_one_batch(svc, calls)
    assert svc.health()["inspect_queue"]["batches"] == before + 1
    for a, b in zip(alone, together, strict=True):
        assert b["score"] == pytest.approx(a["score"], abs=1e-5)
        assert (b["verdict"], b["threshold"], b["image_check"]) == (a["verdict"], a["threshold"], a["image_check"])
        assert [x["bbox_2d"] for x in b["boxes"]] == [x["bbox_2d"] for x in a["boxes"]]
        grids = [np.frombuffer(base64.b64decode(x["anomaly_grid"]["values"]), "<f4") for x in (a, b)]
        assert np.abs(grids[0] - grids[1]).max() <= 1e-5
    assert together[2]["registration"]["method"] != "identity"  # the shifted query was registered
    # The whole map too (the grid above is pooled), through the library's batched entry point.
    cp = svc.copilot
    pairs = [(shifted, [pair["ref"], other]), (pair["bad"], [pair["ref"]]), (pair["good"], [other])]
    for one, many in zip([cp.inspect(q, r) for q, r in pairs], cp.inspect_batch(pairs), strict=True):
        assert np.abs(one.anomaly_map - many.anomaly_map).max() <= 1e-5 and one.boxes == many.boxes
