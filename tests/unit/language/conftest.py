"""Fixtures of the language tests: a tiny random LLM, tokenizer, nano detector and NanoCopilot."""

from __future__ import annotations

import numpy as np
import pytest

from .tiny import tiny_detector, tiny_llm, tiny_tokenizer


@pytest.fixture(autouse=True, scope="package")
def one_thread():
    """Tiny models run fastest on one thread (and the shared test machine is oversubscribed)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="session")
def detector():
    return tiny_detector()


@pytest.fixture
def llm(tok):
    return tiny_llm(len(tok))


@pytest.fixture
def model(llm, tok):
    from adcopilot.language.model import NanoCopilot, NanoCopilotConfig

    cfg = NanoCopilotConfig(hidden=32, compare_width=24, num_compare=4, defect_labels=["crack", "stain", "hole"])
    return NanoCopilot.build(cfg, llm, tok)


@pytest.fixture(scope="session")
def pair_images():
    """A normal reference and a query with a bright square at the top left (64 x 64 RGB uint8)."""
    rng = np.random.default_rng(3)
    ref = (rng.random((64, 64, 3)) * 60 + 100).astype(np.uint8)
    query = ref.copy()
    query[4:16, 4:16] = 255
    return query, ref


@pytest.fixture(scope="session")
def visual(detector, pair_images):
    from adcopilot.language.visual import VisualEncoder

    q, r = pair_images
    return VisualEncoder(detector, registration=False).encode(q, [r])
