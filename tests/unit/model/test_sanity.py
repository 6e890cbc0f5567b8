"""The global "is this the product?" check: each reason from real image statistics, relative to the
references, the product test on the detector's patch distances, and the verdict and JSON of an
inspection that fails it."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from adcopilot.api import Copilot
from adcopilot.imaging import load_image, to_float_array
from adcopilot.model.baseline import NearestPatchDetector
from adcopilot.model.inspection import inspect_arrays
from adcopilot.model.sanity import (
    BLANK,
    BLURRED,
    NOT_PRODUCT,
    OVEREXPOSED,
    UNDEREXPOSED,
    CheckRules,
    ImageProfile,
    check_image,
    image_profile,
    patch_distance,
)
from adcopilot.model.upsample import upsample_centered
from adcopilot.model.vision import load_vision_tower


@pytest.fixture(scope="module")
def tower():
    torch.manual_seed(0)
    return load_vision_tower(pretrained=False).eval()


@pytest.fixture
def product(texture) -> np.ndarray:
    """A (64, 64, 3) float image with structure in mid-grey."""
    img = cv2.resize(texture, (64, 64), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    return 0.25 + 0.5 * img


def test_a_product_passes_against_itself_and_a_shifted_copy(tower, product):
    ref = image_profile(tower, product)
    assert check_image(image_profile(tower, product), [ref]) is None
    assert check_image(image_profile(tower, np.roll(product, 3, axis=1)), [ref]) is None


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: np.zeros_like(p), BLANK),
        (lambda p: np.full_like(p, 0.7), BLANK),
        (lambda p: np.clip(p * 1.8 + 0.1, 0, 1), OVEREXPOSED),
        (lambda p: p * 0.1, UNDEREXPOSED),
        (lambda p: cv2.GaussianBlur(p, (0, 0), 4), BLURRED),
    ],
    ids=["black", "grey", "overexposed", "underexposed", "blurred"],
)
def test_each_bad_frame_gets_its_reason(tower, product, make, reason):
    assert check_image(image_profile(tower, make(product)), [image_profile(tower, product)]) == reason


def test_a_plain_product_is_not_blank_against_plain_references(tower):
    plain = np.full((64, 64, 3), 0.5, np.float32)
    plain += np.random.default_rng(1).normal(0, 0.002, plain.shape).astype(np.float32)
    assert check_image(image_profile(tower, plain), [image_profile(tower, plain)]) is None


def _profile(feature: np.ndarray) -> ImageProfile:
    return ImageProfile(mean=0.5, std=0.2, saturated=0.0, sharpness=1.0, feature=feature / np.linalg.norm(feature))


def test_feature_distance_decides_the_product_against_the_nearest_reference():
    rules = CheckRules()
    a, b = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    # cos = 0.6 with a: a distance of 0.4, past "other product" but not "far"; cos 0.8 passes.
    near_b = np.array([0.6, 0.8, 0.0])
    assert check_image(_profile(near_b), [_profile(a)], rules) == NOT_PRODUCT
    assert check_image(_profile(near_b), [_profile(a), _profile(b)], rules) is None
    assert check_image(_profile(np.array([0.0, 0.0, 1.0])), [_profile(a)], rules) == NOT_PRODUCT


def test_inspection_of_a_blank_frame_is_anomalous_with_the_reason(tower, product):
    cp = Copilot(NearestPatchDetector(tower=tower, image_size=64))
    one_pixel = np.full((1, 1, 3), 128, np.uint8)
    r = cp.inspect(one_pixel, [(product * 255).astype(np.uint8)])
    assert r.verdict == "anomalous" and r.image_check == BLANK and not r.boxes
    assert BLANK in r.description
    assert json.loads(r.to_json())["image_check"] == BLANK
    ok = cp.inspect((product * 255).astype(np.uint8), [(product * 255).astype(np.uint8)])
    assert ok.image_check is None and json.loads(ok.to_json())["image_check"] is None
    off = Copilot(NearestPatchDetector(tower=tower, image_size=64), image_check=False)
    assert off.inspect(one_pixel, [(product * 255).astype(np.uint8)]).image_check is None


def test_patch_distance_is_the_quarter_of_the_patch_grid_a_large_defect_leaves_alone():
    rng = np.random.default_rng(0)
    grid = rng.uniform(0.05, 0.15, (32, 32)).astype(np.float32)  # a normal frame's patch distances
    grid[:, 10:] = 0.8  # a defect over 69 % of the patches ...
    up = upsample_centered(torch.from_numpy(grid)[None, None], 8)[0, 0].numpy()  # (256, 256), as detectors give it
    assert patch_distance(up) == float(np.quantile(grid, 0.25)) < 0.15  # exactly the patches' values
    grid[:, :] = 0.8  # ... but not over the whole frame
    assert patch_distance(upsample_centered(torch.from_numpy(grid)[None, None], 8)[0, 0].numpy()) >= 0.8


def test_the_patch_distance_decides_the_product_without_features(product):
    rules = CheckRules()
    refs = [image_profile(None, product)]
    query = image_profile(None, np.roll(product, 3, axis=1))
    assert refs[0].feature is None
    assert check_image(query, refs, rules, patch_dist=rules.other_patches - 0.01) is None
    assert check_image(query, refs, rules, patch_dist=rules.other_patches) == NOT_PRODUCT
    blurred = image_profile(None, cv2.GaussianBlur(product, (0, 0), 4))
    assert check_image(blurred, refs, rules, patch_dist=rules.other_patches) == BLURRED  # a blur before a near product
    assert check_image(blurred, refs, rules, patch_dist=rules.far_patches) == NOT_PRODUCT  # a far one before a blur
    with pytest.raises(ValueError, match="tower"):
        check_image(query, refs, rules)  # no features, no patch distance


def test_inspect_reads_the_detectors_patch_distances_in_the_frame_it_compared(tower, product):
    det = NearestPatchDetector(tower=tower, image_size=64)
    cp = Copilot(det, registration=False)
    ref, query = (product * 255).astype(np.uint8), (np.roll(product, 5, axis=0) * 255).astype(np.uint8)
    r_arr, q_arr = (to_float_array(load_image(a), 64) for a in (ref, query))  # as inspect reads them
    encoded = [(r_arr, det.encode_reference(r_arr))]
    core = inspect_arrays(det, q_arr, encoded, registration=False)
    assert core.patch_dist == patch_distance(det.detection(q_arr, [encoded[0][1]]).distance) > 0
    cp.check_rules = CheckRules(other_patches=core.patch_dist + 1e-4, far_patches=1.0)
    assert cp.inspect(query, [ref]).image_check is None
    cp.check_rules = CheckRules(other_patches=core.patch_dist - 1e-4, far_patches=1.0)
    r = cp.inspect(query, [ref])
    assert (r.verdict, r.image_check, r.boxes) == ("anomalous", NOT_PRODUCT, [])
