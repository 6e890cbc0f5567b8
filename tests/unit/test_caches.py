"""Caches bounded by entries and by bytes: what an entry holds is counted as it is when the next one is stored
(a reference's views are made after it is cached), and an inspection gives the same result whatever was dropped."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field, replace

import numpy as np
import pytest
import torch

from adcopilot.api import Copilot
from adcopilot.caches import footprint, put_bounded
from adcopilot.model.nano import NanoComparisonModel, NanoConfig, NanoDetector
from adcopilot.model.vision import load_vision_tower

TINY = NanoConfig(image_size=64, width=32, num_heads=4, mlp_hidden=48, num_queries=4, out_width=24, head_hidden=8)
MB = 2**20


@dataclass
class _Entry:
    image: np.ndarray
    tokens: torch.Tensor
    made: dict[str, torch.Tensor] = field(default_factory=dict)


def test_footprint_counts_arrays_and_tensors_once_however_nested():
    a = np.zeros((256, 256, 3), np.float32)  # 786,432 bytes
    t = torch.zeros(1024, 152)  # 622,592 bytes
    assert footprint(a) == a.nbytes and footprint(t) == 4 * 1024 * 152
    assert footprint(torch.zeros(10, dtype=torch.float16)) == 20
    e = _Entry(a, t, {"views": torch.zeros(7, 10)})
    assert footprint(e) == a.nbytes + 4 * 1024 * 152 + 280
    assert footprint((a, e)) == footprint(e)  # the image shared by the pair and its encoding: once
    assert footprint([a, {"x": [a, t]}]) == a.nbytes + 4 * 1024 * 152
    assert footprint("text") == footprint(3) == footprint(None) == 0


def test_put_bounded_keeps_both_bounds_and_always_the_newest():
    cache: OrderedDict[str, object] = OrderedDict()
    for i in range(5):
        put_bounded(cache, f"k{i}", np.zeros(MB, np.uint8), entries=3, max_bytes=None)
    assert list(cache) == ["k2", "k3", "k4"]  # the entry bound alone
    assert put_bounded(cache, "k5", np.zeros(MB, np.uint8), entries=10, max_bytes=2 * MB) == 2
    assert list(cache) == ["k4", "k5"]  # the byte bound: the oldest dropped first
    assert put_bounded(cache, "big", np.zeros(5 * MB, np.uint8), entries=10, max_bytes=2 * MB) == 2
    assert list(cache) == ["big"]  # over the bound alone, but the newest is kept
    put_bounded(cache, "big", np.zeros(MB, np.uint8), entries=10, max_bytes=2 * MB)  # stored again: replaced
    assert list(cache) == ["big"] and footprint(cache["big"]) == MB


def test_an_entry_that_grows_after_it_is_stored_is_counted_as_it_is_then():
    cache: OrderedDict[str, object] = OrderedDict()
    first = _Entry(np.zeros(MB, np.uint8), torch.zeros(0))
    put_bounded(cache, "first", first, entries=10, max_bytes=3 * MB)
    put_bounded(cache, "second", _Entry(np.zeros(MB, np.uint8), torch.zeros(0)), entries=10, max_bytes=3 * MB)
    assert list(cache) == ["first", "second"]
    first.made["views"] = torch.zeros(MB // 2)  # 2 MB made on first use, after it was cached
    put_bounded(cache, "third", _Entry(np.zeros(MB // 2, np.uint8), torch.zeros(0)), entries=10, max_bytes=3 * MB)
    assert list(cache) == ["second", "third"]  # 3 + 1 + 0.5 MB: the grown first one goes


@pytest.fixture(scope="module")
def detector() -> NanoDetector:
    torch.manual_seed(0)
    tower = load_vision_tower(pretrained=False)
    torch.manual_seed(3)
    return NanoDetector(NanoComparisonModel(replace(TINY, image_score="blend")).eval(), tower)


def test_the_reference_cache_stays_within_its_bytes_and_inspects_alike(detector):
    rng = np.random.default_rng(5)
    query = rng.random((64, 64, 3), dtype=np.float32)
    refs = [rng.random((64, 64, 3), dtype=np.float32) for _ in range(6)]
    roomy = Copilot(detector, image_check=False)
    for r in refs:
        roomy.inspect(query, [r])
    held = [footprint(e) for e in roomy._cache.values()]
    assert roomy.cached_references == 6 and all("views" in e[1].made for e in roomy._cache.values())
    budget = int(2.5 * max(held))  # room for two references with their views
    tight = Copilot(detector, image_check=False, cache_bytes=budget)
    for r in refs + refs[:2]:  # the first two again, after they were dropped
        got = tight.inspect(query, [r])
        assert got.score == pytest.approx(roomy.inspect(query, [r]).score, abs=1e-6)
        # Counted when the next one is stored: only the newest may since have grown (its views made on use).
        *older, newest = tight._cache.values()
        assert sum(footprint(e) for e in older) + footprint(newest) - footprint(newest[1].made) <= budget
    assert 2 <= tight.cached_references < len(refs)  # two with their views, and the newest before its own
