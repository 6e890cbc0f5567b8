"""Stage-1 pair sampler, spot-the-difference pairs and the torch dataset wrapper."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adcopilot.data import synth
from adcopilot.data.pairs import ComparisonPair, PairDataset, PairSampler, spot_the_difference
from adcopilot.errors import AdcopilotError

S = 48


def _check_pair(p: ComparisonPair, size: int = S) -> None:
    for a in (p.reference, p.query):
        assert a.shape == (size, size, 3) and a.dtype == np.float32
        assert a.min() >= 0.0 and a.max() <= 1.0
    assert p.mask.shape == (size, size) and p.mask.dtype == np.float32
    assert set(np.unique(p.mask)) <= {0.0, 1.0}
    assert p.label == int(p.mask.any())
    assert isinstance(p.kind, str) and isinstance(p.category, str)


@pytest.mark.parametrize("sources", [("procedural",), ("photos",), ("procedural", "photos")])
def test_normal_pairs_have_empty_masks(sources):
    sampler = PairSampler(S, p_normal=1.0, p_general=0.0, sources=sources)
    for i in range(6):
        p = sampler.sample(np.random.default_rng(i))
        _check_pair(p)
        assert p.label == 0 and p.kind == "normal" and p.mask.sum() == 0
        # Two views of one product: different pixels, related content.
        assert not np.array_equal(p.reference, p.query)
        if sources == ("photos",):
            assert p.category.startswith("photo:")


def test_defect_pairs_carry_masks_in_the_query_frame():
    sampler = PairSampler(S, p_normal=0.0, p_general=0.0, p_multi=0.5)
    kinds = set()
    for i in range(25):
        p = sampler.sample(np.random.default_rng(i))
        _check_pair(p)
        if p.label:
            kinds.update(p.kind.split("+"))
            assert p.mask.sum() > 0
    assert kinds <= set(synth.DEFECT_KINDS) and len(kinds) >= 5


def test_mostly_anomalous_when_no_normals_requested():
    sampler = PairSampler(S, p_normal=0.0, p_general=0.0)
    labels = [sampler.sample(np.random.default_rng(i)).label for i in range(20)]
    # A defect can only vanish when the query's small pose change moves it out of the frame.
    assert sum(labels) >= 18


def test_general_pairs():
    sampler = PairSampler(S, p_normal=0.0, p_general=1.0)
    for i in range(8):
        p = sampler.sample(np.random.default_rng(i))
        _check_pair(p)
        assert p.label == 1 and p.kind in {"added", "removed", "moved", "recolored"}


def test_sampler_is_deterministic_per_rng():
    sampler = PairSampler(S)
    a = sampler.sample(np.random.default_rng(7))
    b = PairSampler(S).sample(np.random.default_rng(7))
    np.testing.assert_array_equal(a.query, b.query)
    np.testing.assert_array_equal(a.reference, b.reference)
    np.testing.assert_array_equal(a.mask, b.mask)
    assert (a.kind, a.category) == (b.kind, b.category)
    # Without an rng the sampler's own seeded generator is used.
    c1, c2 = PairSampler(S, seed=3).sample(), PairSampler(S, seed=3).sample()
    np.testing.assert_array_equal(c1.query, c2.query)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"sources": ("web",)}, "unknown pair source"),
        ({"p_normal": 1.5}, "p_normal"),
        ({"p_normal": 0.8, "p_general": 0.5}, "at most 1"),
        ({"size": 4}, "size"),
    ],
)
def test_bad_options_raise_user_error(kwargs, message):
    with pytest.raises(AdcopilotError, match=message):
        PairSampler(**{"size": S, **kwargs})


def test_spot_the_difference_mask_and_caption():
    rng = np.random.default_rng(0)
    image = (np.random.default_rng(1).random((40, 56, 3)) * 80 + 90).astype(np.uint8)
    ops = set()
    for _ in range(20):
        before, after, mask, caption = spot_the_difference(image, rng)
        assert before.shape == after.shape == image.shape and mask.shape == (40, 56)
        np.testing.assert_array_equal((before != after).any(axis=2), mask.astype(bool))
        assert mask.sum() > 0
        assert any(shape in caption for shape in ("square", "circle", "triangle", "star", "cross", "ring", "bar"))
        ops.update(w for w in ("added", "removed", "moved", "changed colour") if w in caption)
    assert ops == {"added", "removed", "moved", "changed colour"}
    grey = np.full((32, 32, 3), 128, np.uint8)
    _, after, _, caption = spot_the_difference(grey, np.random.default_rng(2))
    assert synth.is_grey(after) and any(c in caption for c in ("black", "grey", "white"))


def _collect(ds: PairDataset, **loader_kwargs) -> dict[str, torch.Tensor]:
    loader = torch.utils.data.DataLoader(ds, batch_size=None, **loader_kwargs)
    items = sorted(loader, key=lambda d: float(d["query"].sum()))
    return {"query": torch.stack([d["query"] for d in items]), "mask": torch.stack([d["mask"] for d in items])}


def test_dataset_shapes_and_determinism_across_workers():
    sampler = PairSampler(32, sources=("procedural",))
    ds = PairDataset(sampler, seed=5, length=4)
    item = next(iter(ds))
    assert item["reference"].shape == (3, 32, 32) and item["query"].dtype == torch.float32
    assert item["mask"].shape == (1, 32, 32) and item["label"].dtype == torch.int64
    assert isinstance(item["kind"], str)
    single = _collect(ds)
    again = _collect(PairDataset(sampler, seed=5, length=4))
    two_workers = _collect(ds, num_workers=2)
    assert len(single["query"]) == 4
    torch.testing.assert_close(single["query"], again["query"])
    torch.testing.assert_close(single["query"], two_workers["query"])
    torch.testing.assert_close(single["mask"], two_workers["mask"])
    other_seed = _collect(PairDataset(sampler, seed=6, length=4))
    assert not torch.equal(single["query"], other_seed["query"])
    ds.set_epoch(1)
    assert not torch.equal(single["query"], _collect(ds)["query"])


def test_spot_the_difference_changes_are_visible():
    black = np.zeros((40, 40, 3), np.uint8)
    rng = np.random.default_rng(3)
    for _ in range(10):
        before, after, mask, caption = spot_the_difference(black, rng)
        diff = np.abs(before.astype(int) - after.astype(int)).max(axis=2)
        assert diff[mask.astype(bool)].mean() >= 30, caption
