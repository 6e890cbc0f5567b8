"""The dense head's losses, against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from adcopilot.train.losses import dice_loss, focal_loss, mask_to_cells


def test_focal_loss_weights_defect_pixels_by_alpha():
    # logit 0: p = 0.5, cross-entropy ln 2, (1 - p_t)^2 = 1/4 for either target.
    ln2 = math.log(2.0)
    one = focal_loss(torch.zeros(1), torch.ones(1), gamma=2.0, alpha=0.75)
    zero = focal_loss(torch.zeros(1), torch.zeros(1), gamma=2.0, alpha=0.75)
    assert one.item() == pytest.approx(0.75 * 0.25 * ln2)
    assert zero.item() == pytest.approx(0.25 * 0.25 * ln2)


def test_focal_loss_down_weights_easy_pixels_by_gamma():
    # logit 2 on a defect pixel: p = sigmoid(2), ce = -ln p, factor (1 - p)^gamma.
    p = 1.0 / (1.0 + math.exp(-2.0))
    got = focal_loss(torch.tensor([2.0]), torch.tensor([1.0]), gamma=3.0, alpha=0.5)
    assert got.item() == pytest.approx(0.5 * (1 - p) ** 3 * -math.log(p), rel=1e-5)
    # mean over elements
    both = focal_loss(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 0.0]), gamma=3.0, alpha=0.5)
    assert both.item() == pytest.approx((got.item() + 0.5 * 0.5**3 * math.log(2.0)) / 2, rel=1e-5)


def test_dice_loss_averages_over_samples_with_a_defect():
    logits = torch.full((3, 1, 2, 2), 100.0)  # p = 1 everywhere
    target = torch.zeros(3, 1, 2, 2)
    target[0, 0, 0, 0] = 1  # dice = 1 - (2 * 1 + 1) / (4 + 1 + 1) = 0.5
    target[1] = 1  # perfect: 0; sample 2 has no defect and is left out
    assert dice_loss(logits, target).item() == pytest.approx(0.25)
    assert dice_loss(logits, torch.zeros(3, 1, 2, 2)).item() == 0.0


def test_mask_to_cells_counts_pixels_around_each_cell_centre():
    mask = torch.zeros(1, 8, 8)
    mask[0, 0:2, 0:2] = 1  # cell 0 (centred on pixel 0, covering -2..1) has all 4 in-image pixels of it
    cells = mask_to_cells(mask, 4)
    assert cells.shape == (1, 1, 2, 2)
    assert cells[0, 0].tolist() == [[4 / 16, 0.0], [0.0, 0.0]]
