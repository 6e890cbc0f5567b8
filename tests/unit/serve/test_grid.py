"""The compact anomaly map the page re-draws boxes from: its pooling, its wire form, and its
agreement with the service's own boxes at other thresholds."""

from __future__ import annotations

import base64
import io

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from adcopilot.api import Copilot
from adcopilot.geometry import box_iou
from adcopilot.model.boxes import BoxRules, boxes_from_map
from adcopilot.serve.app import create_app
from adcopilot.serve.grid import anomaly_grid, pool_max

from .conftest import png


@pytest.fixture
def flat_client(tiny_copilot) -> TestClient:
    """The service with boxes that are not grown along the brightness deviation: the rule the page
    re-draws with (growth needs the references' pixels, which the page does not have)."""
    cp = Copilot(tiny_copilot.detector, threshold=tiny_copilot.threshold, registration=False,
                 box_rules=BoxRules(grow=False), model_name="tiny-flat")
    return TestClient(create_app(cp))


def _decode(g: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(g["values"]), "<f4").reshape(g["height"], g["width"])


def _to_pixels(box: list[int], cell: int, w: int, h: int) -> list[int]:
    x1, y1, x2, y2 = box
    return [x1 * cell, y1 * cell, min(x2 * cell, w), min(y2 * cell, h)]


def test_pool_max_keeps_every_cells_peak_including_cut_edge_cells():
    amap = np.random.default_rng(1).random((37, 53)).astype(np.float32)
    grid, cell = pool_max(amap, max_side=10)
    assert cell == 6 and grid.shape == (7, 9)
    for gy in range(7):
        for gx in range(9):
            assert grid[gy, gx] == amap[gy * 6:(gy + 1) * 6, gx * 6:(gx + 1) * 6].max()
    same, one = pool_max(amap, max_side=64)  # small enough: one pixel per cell, the map itself
    assert one == 1 and np.array_equal(same, amap)


def test_wire_form_round_trips_and_carries_the_rules():
    amap = np.random.default_rng(2).random((20, 30)).astype(np.float32)
    g = anomaly_grid(amap, BoxRules(merge_frac=0.05, max_boxes=3), max_side=15)
    assert (g["width"], g["height"], g["cell"], g["dtype"]) == (15, 10, 2, "float32")
    assert np.array_equal(_decode(g), pool_max(amap, 15)[0])
    assert g["rules"] == {"merge_frac": 0.05, "min_area_frac": 0.0005, "min_pixels": 4, "max_boxes": 3,
                          "border_speck_frac": 0.003, "grow": True, "grow_min": 0.6, "grow_frac": 0.8}


def _inspect(client, query: bytes, ref: bytes, threshold: float | None = None) -> dict:
    data = {"heatmap": "true"} | ({} if threshold is None else {"threshold": str(threshold)})
    r = client.post("/v1/inspect", data=data, files=[("query", ("q.png", query, "image/png")),
                                                      ("references", ("r.png", ref, "image/png"))])
    assert r.status_code == 200, r.text
    return r.json()


def test_small_image_grid_is_the_map_and_gives_the_services_boxes_at_any_threshold(flat_client, images):
    client = flat_client
    first = _inspect(client, images["bad"], images["ref"])
    g = first["anomaly_grid"]
    assert g["cell"] == 1 and (g["width"], g["height"]) == tuple(first["image_size"])
    grid = _decode(g)
    assert np.isfinite(grid).all()
    rules = BoxRules(**g["rules"])
    assert rules == BoxRules(grow=False)
    checked = 0
    for thr in np.quantile(grid, [0.9, 0.97, 0.995]):
        served = _inspect(client, images["bad"], images["ref"], float(thr))
        if served["verdict"] != "anomalous":
            continue
        checked += 1
        here = boxes_from_map(grid, float(thr), rules)
        assert [b["bbox_2d"] for b in served["boxes"]] == [b for b, _ in here]
        assert [b["score"] for b in served["boxes"]] == pytest.approx([s for _, s in here], abs=1e-4)  # served: 4 decimals
    assert checked >= 2


def test_large_image_grid_boxes_cover_the_services_boxes(flat_client, images):
    client = flat_client
    def big(name: str) -> bytes:
        arr = np.asarray(Image.open(io.BytesIO(images[name])).convert("RGB"))
        return png(cv2.resize(arr, (400, 300), interpolation=cv2.INTER_LINEAR))

    query, ref = big("bad"), big("ref")
    first = _inspect(client, query, ref)
    g = first["anomaly_grid"]
    cell = g["cell"]
    assert cell == 4 and (g["width"], g["height"]) == (100, 75)
    grid = _decode(g)
    checked = 0
    for thr in np.quantile(grid, [0.95, 0.99]):
        served = _inspect(client, query, ref, float(thr))["boxes"]
        mine = [_to_pixels(b, cell, 400, 300) for b, _ in boxes_from_map(grid, float(thr), BoxRules(**g["rules"]))]
        for b in served:  # each box the service draws lies inside one the page draws, give or take a cell
            x1, y1, x2, y2 = b["bbox_2d"]
            assert any(m[0] <= x1 and m[1] <= y1 and m[2] >= x2 and m[3] >= y2 for m in mine), (b, mine)
        if served:
            assert box_iou(served[0]["bbox_2d"], mine[0]) > 0.6
            checked += 1
    assert checked


def test_preview_also_shows_the_reference(client, images):
    d = client.post("/v1/inspect", data={"preview": "true"}, files=[
        ("query", ("q.png", images["bad"], "image/png")), ("references", ("r.png", images["ref"], "image/png"))]).json()
    ref = Image.open(io.BytesIO(base64.b64decode(d["reference_preview"].split(",", 1)[1])))
    assert ref.format == "JPEG" and ref.size == (96, 96)
    assert "anomaly_grid" not in d  # only with the heat-map
