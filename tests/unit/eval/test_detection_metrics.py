"""Detection metrics: hand-computed cases and agreement with scikit-learn's definitions."""

from __future__ import annotations

import numpy as np
import pytest

from adcopilot.errors import AdcopilotError
from adcopilot.eval.detection import (
    auroc,
    average_precision,
    balanced_accuracy,
    f1_max,
    image_metrics,
    pixel_metrics,
)


def test_auroc_hand_computed():
    assert auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert auroc([0.5, 0.5], [0, 1]) == 0.5  # a tie counts one half
    assert auroc([0.9, 0.1, 0.8, 0.2], [1, 1, 0, 0]) == 0.5
    assert auroc([0.3, 0.4], [1, 1]) is None


def test_ap_f1_balanced_hand_computed():
    s, y = [0.9, 0.8, 0.7, 0.1], [1, 0, 1, 0]
    # Thresholds 0.9: P 1, R .5; 0.8: P .5, R .5; 0.7: P 2/3, R 1 -> AP = .5 * 1 + .5 * 2/3.
    assert average_precision(s, y) == pytest.approx(0.5 + 1 / 3)
    f1, thr = f1_max(s, y)
    assert f1 == pytest.approx(0.8) and thr == 0.7  # P 2/3, R 1
    b = balanced_accuracy(s, y, 0.75)
    assert b["normal_accuracy"] == 0.5 and b["anomalous_accuracy"] == 0.5 and b["balanced_accuracy"] == 0.5
    m = image_metrics(s, y, 0.75)
    assert (m["images"], m["normal"], m["anomalous"]) == (4, 2, 2) and m["auroc"] == 0.75


def test_agrees_with_sklearn_on_random_scores():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    y = rng.random(300) < 0.3
    s = np.round(rng.random(300) + 0.5 * y, 2)  # rounding makes ties
    assert auroc(s, y) == pytest.approx(sk.roc_auc_score(y, s))
    assert average_precision(s, y) == pytest.approx(sk.average_precision_score(y, s))
    p, r, _ = sk.precision_recall_curve(y, s)
    best = np.max(np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0))
    assert f1_max(s, y)[0] == pytest.approx(best)


def test_pixel_auroc_and_pro_hand_computed():
    amap = np.array([[0.9, 0.1, 0.8, 0.2]], np.float32)
    mask = np.array([[1, 1, 0, 0]], bool)
    # One region of 2 pixels: at FPR 0 half of it is found, and stays half until FPR 0.5.
    m = pixel_metrics([amap], [mask])
    assert m["pixel_auroc"] == pytest.approx(0.5)
    assert m["pro"] == pytest.approx(0.5)
    perfect = pixel_metrics([mask.astype(np.float32)], [mask])
    assert perfect == {"pixel_auroc": 1.0, "pro": 1.0}


def test_pro_weighs_regions_equally_and_random_maps_score_low():
    mask = np.zeros((64, 64), bool)
    mask[2:4, 2:4] = True  # a small region found perfectly
    mask[20:60, 20:60] = True  # a big region missed
    amap = np.zeros((64, 64), np.float32)
    amap[2:4, 2:4] = 1.0
    m = pixel_metrics([amap], [mask])
    # PRO is 0.5 from FPR 0 (one of two regions); the tie of all other pixels at 0 runs linearly to
    # (FPR 1, PRO 1), so at FPR 0.3 it is 0.65: area 0.3 * (0.5 + 0.65) / 2, over 0.3 -> 0.575.
    assert m["pro"] == pytest.approx(0.575)  # pixel-weighted it would be far lower
    rng = np.random.default_rng(1)
    big = np.zeros((64, 64), bool)
    big[5:25, 5:60] = True
    big[35:60, 10:50] = True
    noise = pixel_metrics([rng.random((64, 64)).astype(np.float32)], [big])
    assert noise["pixel_auroc"] == pytest.approx(0.5, abs=0.05)
    assert noise["pro"] == pytest.approx(0.15, abs=0.05)  # PRO ~ FPR -> area 0.3^2/2 / 0.3


def test_maps_resized_to_masks_and_bad_input():
    mask = np.zeros((512, 512), bool)
    mask[100:200, 100:200] = True
    amap = np.zeros((128, 128), np.float32)
    amap[25:50, 25:50] = 1.0
    assert pixel_metrics([amap], [mask])["pixel_auroc"] == pytest.approx(1.0, abs=0.01)
    with pytest.raises(AdcopilotError, match="3 scores but 2 labels"):
        auroc([1, 2, 3], [0, 1])
    with pytest.raises(AdcopilotError, match="NaN"):
        auroc([np.nan, 1], [0, 1])
