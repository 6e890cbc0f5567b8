"""The REST service with the shipped default model and real images (a painted defect on a brick wall)."""

from __future__ import annotations

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
