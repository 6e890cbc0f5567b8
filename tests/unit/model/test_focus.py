"""A query out of focus: the references softened to its sharpness (``model/focus.py``), on every inspection path,
cached apart, said in the notes, and never where the query is as sharp, sharper, or so blurred the image check
names it."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from adcopilot.api import Copilot
from adcopilot.model.baseline import NearestPatchDetector
from adcopilot.model.focus import (
    BLURRED_RATIO,
    MAX_SIGMA,
    SIGMA_STEP,
    SOFT_RATIO,
    matching_sigma,
    sharpness,
    soften,
)
from adcopilot.model.vision import load_vision_tower


def _scene(seed: int = 0, size: int = 96) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.random((size, size, 3)).astype(np.float32), (0, 0), 0.8)
    return (255 * (img - img.min()) / (img.max() - img.min())).astype(np.uint8)


def _float(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float32) / 255


@pytest.fixture(scope="module")
def copilot() -> Copilot:
    torch.manual_seed(0)
    return Copilot(NearestPatchDetector(tower=load_vision_tower(pretrained=False), image_size=96), model_name="tiny",
                   refocus=True)


def test_the_sigma_found_brings_the_reference_to_the_query_sharpness():
    ref = _float(_scene(0))
    for sigma in (1.0, 1.2, 1.5):
        query = soften(_float(_scene(1)), sigma)
        got = matching_sigma(sharpness(query), ref)
        assert 0 < got <= MAX_SIGMA and got % SIGMA_STEP == 0
        # No grid step does better than the one chosen.
        grid = np.arange(SIGMA_STEP, MAX_SIGMA + 1e-9, SIGMA_STEP)
        errors = [abs(sharpness(soften(ref, float(s))) - sharpness(query)) for s in grid]
        assert abs(sharpness(soften(ref, got)) - sharpness(query)) == pytest.approx(min(errors))


def test_no_softening_for_a_sharp_a_sharper_or_a_heavily_blurred_query():
    ref = _float(_scene(0))
    s = sharpness(ref)
    assert matching_sigma(sharpness(_float(_scene(1))), ref) == 0.0  # as sharp
    assert matching_sigma(2 * s, ref) == 0.0  # sharper
    assert matching_sigma(SOFT_RATIO * s * 1.01, ref) == 0.0
    assert matching_sigma(SOFT_RATIO * s * 0.99, ref) > 0
    assert matching_sigma(BLURRED_RATIO * s * 0.99, ref) == 0.0  # the image check's "blurred": compared as it is
    assert matching_sigma(0.0, ref) == 0.0  # a blank frame


def test_a_softer_query_is_compared_with_its_reference_softened(copilot):
    ref, query = _scene(0), _scene(0).copy()
    query[30:50, 40:60] = 255
    soft_query = cv2.GaussianBlur(query, (0, 0), 0.8)
    sigma = matching_sigma(sharpness(_float(soft_query)), _float(ref))
    assert sigma > 0
    got = copilot.inspect(soft_query, [ref])
    off = Copilot(copilot.detector, model_name="tiny")  # off by default
    softened = (soften(_float(ref), sigma) * 255).round().astype(np.uint8)  # what the model is given, to rounding
    assert got.score == pytest.approx(off.inspect(soft_query, [softened]).score, abs=2e-3)
    assert got.score < off.inspect(soft_query, [ref]).score  # the lost texture no longer reads as a defect
    assert any("softer than its references" in n for n in got.notes)
    # The staged path (the service's batches) compares the same arrays.
    assert copilot.inspect_batch([(soft_query, [ref])])[0].score == pytest.approx(got.score, abs=1e-5)
    # The softened reference is cached apart: a sharp query of the same reference sees it sharp.
    fresh = Copilot(copilot.detector, model_name="tiny", refocus=True)
    assert copilot.inspect(query, [ref]).score == pytest.approx(fresh.inspect(query, [ref]).score, abs=1e-6)
    assert not any("softer" in n for n in copilot.inspect(query, [ref]).notes)


def test_the_image_check_still_reads_the_references_as_taken(copilot):
    ref = _scene(0)
    blurred = cv2.GaussianBlur(ref, (0, 0), 6)
    got = copilot.inspect(blurred, [ref])
    assert got.image_check is not None and "blur" in got.image_check
    assert not any("softer" in n for n in got.notes)
