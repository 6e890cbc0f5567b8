"""Procedural normal images and the licensed sample photos."""

from __future__ import annotations

import numpy as np
import pytest

from adcopilot.data import procedural
from adcopilot.data.normals import LICENCES, licensed_normal_images
from adcopilot.errors import AdcopilotError


@pytest.mark.parametrize("category", procedural.CATEGORIES)
def test_every_category_renders(category):
    for size in (64, 33):
        img, mask = procedural.render(category, np.random.default_rng(0), size)
        assert img.shape == (size, size, 3) and img.dtype == np.uint8
        assert img.std() > 2  # not a flat image
        if category in procedural.OBJECTS:
            assert mask is not None and mask.dtype == bool and mask.shape == (size, size)
            assert 0.02 < mask.mean() < 0.9
        else:
            assert mask is None


@pytest.mark.parametrize("category", procedural.CATEGORIES)
def test_pairs_are_two_views_of_one_instance(category):
    ref, query, mask, cat = procedural.random_normal_pair(np.random.default_rng(1), 64, category)
    assert cat == category and ref.shape == query.shape == (64, 64, 3)
    other, _, _, _ = procedural.random_normal_pair(np.random.default_rng(2), 64, category)
    # Views of the same instance are closer to each other than to another instance.
    d_same = np.abs(ref.astype(float) - query.astype(float)).mean()
    d_other = np.abs(ref.astype(float) - other.astype(float)).mean()
    assert d_same < d_other
    assert (mask is None) == (category in procedural.TEXTURES)


def test_random_normal_deterministic_and_varied():
    a = procedural.random_normal(np.random.default_rng(4), 48)
    b = procedural.random_normal(np.random.default_rng(4), 48)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[2] == b[2]
    cats = {procedural.random_normal(np.random.default_rng(i), 32)[2] for i in range(40)}
    assert len(cats) >= 10


def test_unknown_category_raises():
    with pytest.raises(AdcopilotError, match="unknown procedural category"):
        procedural.render("spaceship", np.random.default_rng(0))


def test_licensed_photos():
    photos = licensed_normal_images()
    assert len(photos) >= 10
    for p in photos:
        assert p.name in LICENCES and p.licence and p.source
        assert p.image.ndim == 3 and p.image.shape[2] == 3 and p.image.dtype == np.uint8
        assert "NC" not in p.licence and "ND" not in p.licence
