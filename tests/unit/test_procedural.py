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


def test_sibling_pieces_share_layout_not_grain():
    """Two pieces of a polycrystalline cell: busbars and fingers in place, crystal grain different."""
    rng = np.random.default_rng(3)
    p, grey = procedural._instance("solar", rng)
    p.update(poly=True, corners=False, grain_contrast=0.4)
    crops = procedural._views("solar", p, grey, 96, np.random.default_rng(1), 2)
    pieces = procedural._views("solar", p, grey, 96, np.random.default_rng(1), 2, siblings=True)
    def diff(views) -> float:
        a, b = (v[0] if isinstance(v, tuple) else v for v in views)
        return float(np.abs(a.astype(float) - b.astype(float)).mean())

    assert diff(pieces) > 1.25 * diff(crops)
    # The layout (busbar columns: the darkest/brightest columns on average) is the same piece to piece.
    cols = [v[0].astype(float).mean(axis=(0, 2)) for v in pieces]
    assert np.corrcoef(cols[0], cols[1])[0, 1] > 0.8
    # Pairs: two views of one piece by default, two pieces at sibling_rate 1.
    one = [diff(procedural.random_normal_pair(np.random.default_rng(s), 64, "stone")[:2]) for s in range(4)]
    two = [diff(procedural.random_normal_pair(np.random.default_rng(s), 64, "stone", sibling_rate=1.0)[:2])
           for s in range(4)]
    assert np.mean(two) > np.mean(one)
