"""Synthetic defects: exact masks, every kind on grey/colour/odd sizes, regions, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from adcopilot.data import synth
from adcopilot.data.synth import DEFECT_KINDS, SynthDefect, add_defect, jitter, perlin_noise
from adcopilot.errors import AdcopilotError


def _colour(h: int = 64, w: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = perlin_noise((h, w), rng, 8)
    img = np.stack([base * 0.6 + 0.2, 1 - base * 0.5, np.full((h, w), 0.4)], -1)
    return (img * 255).astype(np.uint8)


def _grey(h: int = 64, w: int = 64, seed: int = 1) -> np.ndarray:
    g = (perlin_noise((h, w), np.random.default_rng(seed), 6) * 120 + 60).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=2)


def _check_exact(d: SynthDefect, image: np.ndarray) -> None:
    assert d.image.shape == image.shape and d.image.dtype == np.uint8
    assert d.mask.shape == image.shape[:2] and d.mask.dtype == np.uint8
    assert set(np.unique(d.mask)) <= {0, 1}
    assert d.mask.sum() > 0
    changed = (d.image != image).any(axis=2)
    np.testing.assert_array_equal(changed, d.mask.astype(bool))
    # Every masked pixel moved by at least the threshold in some channel.
    diff = np.abs(d.image.astype(int) - image.astype(int)).max(axis=2)
    assert diff[d.mask.astype(bool)].min() >= synth.MIN_CHANGE


def test_kinds_cover_the_required_set():
    required = {"crack", "scratch", "hole", "pit", "stain", "contamination", "missing", "extra", "color",
                "deformation", "texture", "cutpaste", "dark_region", "line"}
    assert required <= set(DEFECT_KINDS)
    assert all(synth.LABELS[k] for k in DEFECT_KINDS)


@pytest.mark.parametrize("kind", DEFECT_KINDS)
def test_every_kind_colour_and_grey_mask_is_exact(kind):
    rng = np.random.default_rng(3)
    for image in (_colour(), _grey()):
        for _ in range(3):
            d = add_defect(image, rng, kind)
            _check_exact(d, image)
            assert d.kind == kind and d.label == synth.LABELS[kind]
    # A grey image stays grey.
    g = _grey()
    d = add_defect(g, rng, kind)
    assert synth.is_grey(d.image)


@pytest.mark.parametrize("kind", DEFECT_KINDS)
@pytest.mark.parametrize("shape", [(5, 7), (17, 31), (40, 9)])
def test_every_kind_on_tiny_and_odd_sizes(kind, shape):
    image = _colour(*shape, seed=2)
    d = add_defect(image, np.random.default_rng(0), kind)
    _check_exact(d, image)


def test_flat_image_still_gets_a_visible_defect():
    flat = np.full((32, 32, 3), 128, np.uint8)
    rng = np.random.default_rng(0)
    for kind in DEFECT_KINDS:
        _check_exact(add_defect(flat, rng, kind, scale=0.05), flat)


@pytest.mark.parametrize("kind", DEFECT_KINDS)
def test_region_is_respected(kind):
    image = _colour(48, 48)
    region = np.zeros((48, 48), bool)
    region[10:30, 20:40] = True
    rng = np.random.default_rng(5)
    for _ in range(3):
        d = add_defect(image, rng, kind, region=region)
        _check_exact(d, image)
        assert not (d.mask.astype(bool) & ~region).any()
        np.testing.assert_array_equal(d.image[~region], image[~region])


def test_deterministic_for_a_seed():
    image = _colour()
    for kind in (None, "crack", "texture", "cutpaste"):
        a = add_defect(image, np.random.default_rng(11), kind)
        b = add_defect(image, np.random.default_rng(11), kind)
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.mask, b.mask)
        assert a.kind == b.kind
    c = add_defect(image, np.random.default_rng(12), "crack")
    assert not np.array_equal(c.mask, add_defect(image, np.random.default_rng(11), "crack").mask)


def test_random_kind_and_grey_2d_input():
    g = _grey()[..., 0]
    d = add_defect(g, np.random.default_rng(0))
    assert d.kind in DEFECT_KINDS and d.image.shape == (64, 64, 3)


def test_scale_controls_size():
    image = _colour(96, 96)
    small = [add_defect(image, np.random.default_rng(i), "hole", scale=0.05).mask.sum() for i in range(5)]
    big = [add_defect(image, np.random.default_rng(i), "hole", scale=0.3).mask.sum() for i in range(5)]
    assert np.median(big) > 4 * np.median(small)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda im, r: add_defect(im, r, "rust"), "unknown defect kind"),
        (lambda im, r: add_defect(im, r, region=np.ones((5, 5), bool)), "region"),
        (lambda im, r: add_defect(im, r, region=np.zeros((64, 64), bool)), "empty"),
        (lambda im, r: add_defect(im.astype(np.float32), r), "uint8"),
        (lambda im, r: add_defect(im[..., :2], r), "shape"),
        (lambda im, r: add_defect(im, r, scale=-1.0), "scale"),
    ],
)
def test_bad_input_raises_user_error(call, message):
    with pytest.raises(AdcopilotError, match=message):
        call(_colour(), np.random.default_rng(0))


def test_perlin_noise_range_shape_determinism():
    a = perlin_noise((37, 53), np.random.default_rng(0), 9.0)
    b = perlin_noise((37, 53), np.random.default_rng(0), 9.0)
    assert a.shape == (37, 53) and a.dtype == np.float32
    assert a.min() >= 0.0 and a.max() <= 1.0 and a.std() > 0.05
    np.testing.assert_array_equal(a, b)
    # Larger scale -> smoother field (smaller neighbour differences).
    fine = perlin_noise((64, 64), np.random.default_rng(1), 3.0)
    coarse = perlin_noise((64, 64), np.random.default_rng(1), 30.0)
    assert np.abs(np.diff(coarse, axis=1)).mean() < np.abs(np.diff(fine, axis=1)).mean()
    multi = perlin_noise((64, 64), np.random.default_rng(2), 16.0, octaves=4)
    assert multi.min() >= 0 and multi.max() <= 1


def test_jitter_changes_view_but_keeps_content():
    image = _colour(64, 64)
    out = jitter(image, np.random.default_rng(0))
    assert out.shape == image.shape and out.dtype == np.uint8
    assert not np.array_equal(out, image)
    # Same product: strongly correlated with the original.
    r = np.corrcoef(out.astype(float).ravel(), image.astype(float).ravel())[0, 1]
    assert r > 0.5
    np.testing.assert_array_equal(out, jitter(image, np.random.default_rng(0)))
    assert synth.is_grey(jitter(_grey(), np.random.default_rng(1)))
    still = jitter(image, np.random.default_rng(0), max_shift=0, max_rotate_deg=0, max_scale=0, light=0, noise=0)
    # With all nuisance off, only an occasional slight blur remains.
    assert np.abs(still.astype(int) - image.astype(int)).mean() < 3
