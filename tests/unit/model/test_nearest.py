"""Nearest-patch search of the product memory: the blocked exact search, the FAISS index (a lower
bound of the exact similarity that finds stored patches exactly), the automatic choice, and the
memory's map under both searches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from adcopilot.model import nearest
from adcopilot.model.memory import ProductMemory, VariantMemory
from adcopilot.model.nearest import PatchIndex, exact_max_similarity


def _clustered(n: int, dim: int = 24, centres: int = 40, seed: int = 0) -> torch.Tensor:
    """Unit vectors around a few centres, as patch features of one product are."""
    g = torch.Generator().manual_seed(seed)
    c = F.normalize(torch.randn(centres, dim, generator=g), dim=1)
    x = c[torch.randint(0, centres, (n,), generator=g)] + 0.15 * torch.randn(n, dim, generator=g)
    return F.normalize(x, dim=1)


def test_blocked_exact_search_equals_one_product():
    bank, queries = _clustered(nearest.BLOCK * 2 + 123), _clustered(300, seed=1)
    want = (queries @ bank.T).max(dim=1).values
    assert torch.equal(exact_max_similarity(queries, bank), want)
    assert torch.equal(PatchIndex(bank, "exact").max_similarity(queries), want)


def test_automatic_choice_by_bank_size():
    small = PatchIndex(_clustered(100))
    assert not small.approximate
    large = PatchIndex(_clustered(nearest.APPROXIMATE_FROM))
    assert large.approximate == (nearest.faiss is not None)
    with pytest.raises(ValueError, match="unknown search mode 'fast'"):
        PatchIndex(_clustered(10), "fast")


@pytest.mark.skipif(nearest.faiss is None, reason="faiss is not installed")
def test_approximate_search_is_a_close_lower_bound():
    bank, queries = _clustered(8192), _clustered(1024, seed=2)
    exact = exact_max_similarity(queries, bank)
    approx = PatchIndex(bank, "approximate").max_similarity(queries)
    assert (approx <= exact + 1e-5).all()  # a neighbour found is never nearer than the nearest
    assert float((exact - approx < 1e-5).float().mean()) > 0.9  # the exact nearest, most of the time
    assert float((exact - approx).mean()) < 0.01
    stored = bank[::97]
    assert torch.allclose(PatchIndex(bank, "approximate").max_similarity(stored), torch.ones(len(stored)), atol=1e-5)


@pytest.mark.skipif(nearest.faiss is None, reason="faiss is not installed")
def test_memory_map_is_nearly_the_same_under_both_searches():
    bank = _clustered(8192, dim=24)
    memory = ProductMemory({"a": VariantMemory(bank.clone(), low=0.0, high=0.5, images=10)})
    queries, refs = _clustered(1024, seed=3), _clustered(1024, seed=4)
    exact = memory.anomaly_map(queries, refs, (32, 32), 64)
    memory.set_search("approximate")
    assert memory._index["a"].approximate
    approx = memory.anomaly_map(queries, refs, (32, 32), 64)
    assert approx.shape == exact.shape == (64, 64) and 0.0 < exact.max() < 1.0
    assert (approx >= exact - 1e-5).all() and np.abs(approx - exact).max() < 0.05
