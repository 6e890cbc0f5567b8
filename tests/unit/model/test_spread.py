"""The label-free threshold: the references' leave-one-out spread sets it, per reference set; an explicit
threshold wins; one reference keeps the fixed threshold; a threshold that is not finite is refused."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from adcopilot.api import Copilot
from adcopilot.errors import AdcopilotError
from adcopilot.model.baseline import NearestPatchDetector
from adcopilot.model.spread import MARGIN, spread_threshold
from adcopilot.model.vision import load_vision_tower


def test_threshold_sits_margin_logits_above_the_mean_logit():
    assert spread_threshold([0.5, 0.5]) == pytest.approx(1 / (1 + math.exp(-MARGIN)))
    # logit(0.2) = -logit(0.8): their mean logit is 0, whatever their spread.
    assert spread_threshold([0.2, 0.8], margin=0.0) == pytest.approx(0.5)
    assert spread_threshold([0.1, 0.1]) < spread_threshold([0.4, 0.4])  # a noisier product, a higher bar
    assert 0.0 < spread_threshold([0.0, 0.0]) < 1e-3 and spread_threshold([1.0]) < 1.0  # finite at the ends
    with pytest.raises(ValueError):
        spread_threshold([])


@pytest.fixture(scope="module")
def tower():
    torch.manual_seed(0)
    return load_vision_tower(pretrained=False).eval()


def _shots(texture: np.ndarray, n: int) -> list[np.ndarray]:
    """n shots of one product: the texture shifted by a few pixels and lit a little differently."""
    rng = np.random.default_rng(3)
    out = []
    for _ in range(n):
        m = np.float32([[1, 0, rng.uniform(-3, 3)], [0, 1, rng.uniform(-3, 3)]])
        shot = cv2.warpAffine(texture, m, texture.shape[1::-1], borderMode=cv2.BORDER_REFLECT).astype(np.float32)
        out.append(np.clip(shot * rng.uniform(0.9, 1.1), 0, 255).astype(np.uint8))
    return out


def test_auto_threshold_comes_from_the_references_left_out_in_turn(tower, texture):
    query, *refs = _shots(texture, 4)
    cp = Copilot(NearestPatchDetector(tower=tower, image_size=64), auto_threshold=True)
    loo = [cp.analyze(refs[i], [r for j, r in enumerate(refs) if j != i]).score for i in range(3)]
    r = cp.inspect(query, refs)
    assert r.threshold == pytest.approx(spread_threshold(loo))
    assert r.threshold != pytest.approx(cp.threshold)
    assert cp.inspect(query, refs[::-1]).threshold == pytest.approx(r.threshold)  # the set, not its order
    assert cp.inspect(query, refs[:1]).threshold == cp.threshold  # one reference: the fixed threshold
    assert cp.inspect(query, refs, threshold=0.3).threshold == 0.3
    fixed = Copilot(NearestPatchDetector(tower=tower, image_size=64))
    assert fixed.inspect(query, refs).threshold == fixed.threshold
    assert fixed.inspect(query, refs).score == pytest.approx(r.score)  # the score itself is unchanged


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_threshold_that_is_not_finite_is_refused(tower, texture, bad):
    with pytest.raises(AdcopilotError, match="finite"):
        Copilot(NearestPatchDetector(tower=tower, image_size=64), threshold=bad)
    cp = Copilot(NearestPatchDetector(tower=tower, image_size=64))
    with pytest.raises(AdcopilotError, match="finite"):
        cp.inspect(texture, [texture], threshold=bad)
