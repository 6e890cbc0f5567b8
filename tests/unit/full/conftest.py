"""Fixtures for the full-scale model's tests: a tiny random model, its processor, small images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from adcopilot.full.tiny import build_tiny


@pytest.fixture(scope="module")
def tiny():
    """(model, processor): 2-block ViT of width 32, 2-layer LLM of width 64, 8 comparison tokens."""
    return build_tiny(seed=0)


@pytest.fixture
def images() -> list[Image.Image]:
    """Two 64x64 RGB images (a reference and a query with a bright square): 4 base tokens each."""
    rng = np.random.default_rng(0)
    ref = (rng.random((64, 64, 3)) * 80 + 80).astype(np.uint8)
    query = ref.copy()
    query[20:36, 24:40] = 250
    return [Image.fromarray(ref), Image.fromarray(query)]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
