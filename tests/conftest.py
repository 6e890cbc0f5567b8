"""Shared fixtures. Tests never contact a model hub."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from adcopilot.api import Copilot
from adcopilot.model.nano import NanoComparisonModel, NanoConfig, NanoDetector
from adcopilot.model.vision import load_vision_tower

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/integration" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.integration)


#: A nano comparison model small enough for unit tests (random weights, 64 px).
TINY_NANO = NanoConfig(image_size=64, width=32, num_heads=4, mlp_hidden=48, num_queries=4, out_width=24, head_hidden=8)


@pytest.fixture(scope="session")
def nano_copilot() -> Copilot:
    """The nano comparison model, random-initialised at 64 px, with registration and the image check."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    detector = NanoDetector(NanoComparisonModel(TINY_NANO).eval(), load_vision_tower(pretrained=False), name="tiny-nano")
    return Copilot(detector, registration=True, model_name="tiny-nano")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def texture(rng) -> np.ndarray:
    """A 128x128 RGB uint8 texture with structure (smoothed noise), deterministic."""
    import cv2

    noise = rng.random((128, 128, 3)).astype(np.float32)
    smooth = cv2.GaussianBlur(noise, (0, 0), 3)
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    return (smooth * 255).astype(np.uint8)


@pytest.fixture
def as_one_batch():
    """``run(service, calls)``: the service's ``inspect(**call)`` for every call, from threads while its
    model is held, so that all queue; then the model comes free and takes them as one batch. Each
    entry of the list: the result, or the ``ServiceError`` raised."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    from adcopilot.serve.service import InspectionService, ServiceError

    def call(svc: InspectionService, kw: dict):
        try:
            return svc.inspect(**kw)
        except ServiceError as exc:
            return exc

    def run(svc: InspectionService, calls: list[dict]) -> list:
        with ThreadPoolExecutor(len(calls)) as pool:
            with svc._model_lock:
                futures = [pool.submit(call, svc, kw) for kw in calls]
                deadline = time.monotonic() + 30
                while svc._batcher.stats()["queued"] < len(calls):
                    assert time.monotonic() < deadline, svc._batcher.stats()
                    time.sleep(0.01)
            return [f.result(120) for f in futures]

    return run
