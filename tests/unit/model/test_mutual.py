"""Lot-level mutual scoring: in a lot of shots of one product the one with a defect scores highest, a
patch shared by every image scores zero, and a lot of one image is refused."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from adcopilot.model.detector import to_batch
from adcopilot.model.mutual import image_scores, lot_features, mutual_patch_scores
from adcopilot.model.vision import load_vision_tower


@pytest.fixture(scope="module")
def tower():
    torch.manual_seed(0)
    return load_vision_tower(pretrained=False).eval()


def test_the_defective_image_of_a_lot_scores_highest(tower, texture):
    rng = np.random.default_rng(0)
    base = cv2.resize(texture, (64, 64)).astype(np.float32) / 255.0
    lot = [np.roll(base, (int(rng.integers(-2, 3)), int(rng.integers(-2, 3))), axis=(0, 1)) for _ in range(8)]
    lot[5] = lot[5].copy()
    cv2.circle(lot[5], (40, 24), 9, (0.0, 0.0, 0.0), -1)
    feats = lot_features(tower, to_batch(lot))
    assert feats.shape == (8, 16, 152)
    assert torch.allclose(feats.norm(dim=2), torch.ones(8, 16), atol=1e-5)
    scores = image_scores(mutual_patch_scores(feats, closest_frac=0.3, chunk=3))
    assert int(scores.argmax()) == 5


def test_identical_images_score_zero_and_one_image_is_refused(tower, texture):
    img = cv2.resize(texture, (64, 64)).astype(np.float32) / 255.0
    feats = lot_features(tower, to_batch([img, img, img]))
    assert float(mutual_patch_scores(feats).abs().max()) < 1e-5
    with pytest.raises(ValueError):
        mutual_patch_scores(feats[:1])
