"""Fixtures of the service tests: a tiny random-weight model behind the real FastAPI app."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from adcopilot.api import Copilot
from adcopilot.model.baseline import NearestPatchDetector
from adcopilot.model.vision import load_vision_tower
from adcopilot.serve.app import create_app
from adcopilot.serve.service import ServeConfig

SIZE = 64
DEFECT = (40, 30, 60, 50)  # x1, y1, x2, y2 painted white in the defective query


def png(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="session")
def images() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur(rng.random((96, 96, 3)).astype(np.float32), (0, 0), 3)
    ref = ((img - img.min()) / (img.max() - img.min()) * 255).astype(np.uint8)
    bad = ref.copy()
    x1, y1, x2, y2 = DEFECT
    bad[y1:y2, x1:x2] = 255
    return {"ref": png(ref), "good": png(ref), "bad": png(bad)}


@pytest.fixture(scope="session")
def tiny_copilot(images) -> Copilot:
    """Baseline detector on a random-initialised tower, 64 px, threshold between clean and defect."""
    torch.set_num_threads(1)  # a tiny model on a shared machine: more threads only wait on each other
    torch.manual_seed(0)
    det = NearestPatchDetector(tower=load_vision_tower(pretrained=False), image_size=SIZE)
    cp = Copilot(det, registration=False, model_name="tiny")
    bad = cp.inspect(images["bad"], [images["ref"]]).score
    good = cp.inspect(images["good"], [images["ref"]]).score
    cp.threshold = det.threshold = (bad + good) / 2
    return cp


@pytest.fixture
def make_client(tiny_copilot):
    def make(**config) -> TestClient:
        return TestClient(create_app(tiny_copilot, ServeConfig(**config)))

    return make


@pytest.fixture
def client(make_client) -> TestClient:
    return make_client()
