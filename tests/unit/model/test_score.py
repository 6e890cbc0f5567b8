"""The fused image score: the reference's dihedral views, the view distance and the fused score on
hand-computed cases, and the nano detector's score with and without it."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from adcopilot.errors import CheckpointError
from adcopilot.model.nano import NanoComparisonModel, NanoConfig, NanoDetector, pooled_score
from adcopilot.model.score import dihedral_views, fused_score, view_distance
from adcopilot.model.vision import load_vision_tower

TINY = NanoConfig(image_size=64, width=32, num_heads=4, mlp_hidden=48, num_queries=4, out_width=24, head_hidden=8)


def test_dihedral_views_are_the_eight_flips_and_turns():
    img = np.arange(9, dtype=np.float32).reshape(3, 3, 1)
    views = dihedral_views(img)
    assert len(views) == 8 and np.array_equal(views[0], img)
    assert len({v.tobytes() for v in views}) == 8  # an asymmetric image has eight different views
    assert any(np.array_equal(v, img[::-1, :]) for v in views)
    assert any(np.array_equal(v, np.rot90(img)) for v in views)
    assert any(np.array_equal(v, img[:, :, 0].T[..., None]) for v in views)  # the transpose


def test_view_distance_on_a_hand_computed_case():
    # Four query patches on a 2 x 2 grid, unit vectors in 2-D; one view patch (1, 0).
    tokens = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.8, 0.6]])
    views = torch.tensor([[1.0, 0.0]])
    d1 = torch.tensor([[0.5, 0.5], [0.8, 0.2]])  # the three largest: patches 2, 0, 1
    d8 = view_distance(d1, tokens, views, candidates=3)
    # patch 0: 1 - 1 = 0; patch 1: min(1 - 0, 0.5) = 0.5; patch 2: min(1 - 0.6, 0.8) = 0.4; patch 3 not searched
    assert torch.allclose(d8, torch.tensor([[0.0, 0.5], [0.4, 0.2]]))


def test_fused_score_on_a_hand_computed_case():
    d8 = torch.full((4, 4), 0.64)  # a constant distance: its smoothed map is 0.64 everywhere
    prob = np.full((16, 16), 0.25, np.float32)
    assert fused_score(prob, d8, 0.5) == pytest.approx(0.4)  # sqrt(0.25 * 0.64)
    prob[5, 7] = 1.0  # one sure pixel: 1 ** 0.5 * 0.64 ** 0.5
    assert fused_score(prob, d8, 0.5) == pytest.approx(0.8)
    assert fused_score(prob, d8, 0.0) == pytest.approx(0.64)  # weight 0: the distance alone
    d8[1, 2] = 0.9  # a distant patch: its smoothed peak, fused with the map there (prob 0.25)
    peak = fused_score(np.full((16, 16), 0.25, np.float32), d8, 0.5)
    assert 0.4 < peak < np.sqrt(0.25 * 0.9)


@pytest.fixture(scope="module")
def tower():
    torch.manual_seed(0)
    return load_vision_tower(pretrained=False)


def test_detector_fuses_the_score_only_when_configured(tower):
    torch.manual_seed(3)
    plain = NanoComparisonModel(TINY).eval()
    fused = NanoComparisonModel(replace(TINY, image_score="fused", fused_weight=0.05)).eval()
    fused.load_state_dict(plain.state_dict())
    det_plain, det_fused = NanoDetector(plain, tower), NanoDetector(fused, tower)
    rng = np.random.default_rng(4)
    q, r = rng.random((64, 64, 3), dtype=np.float32), rng.random((64, 64, 3), dtype=np.float32)
    assert det_plain.encode_reference(r).views is None
    enc = det_fused.with_views(det_fused.encode_reference(r))
    assert enc.views is not None and enc.views.shape == (1, 7 * 64, 152)
    # The views' patches are the tower's features of the flipped and turned reference.
    flipped = det_fused.patch_features(np.ascontiguousarray(r[:, ::-1]))[0].flatten(1).T  # (64, 152)
    assert torch.allclose(enc.views[0, :64], flipped, atol=1e-5)
    a, b = det_plain.detection(q, [det_plain.encode_reference(r)]), det_fused.detection(q, [enc])
    assert np.array_equal(a.amap, b.amap)  # the map is the comparison model's either way
    assert a.score == pytest.approx(pooled_score(a.amap, TINY.topk_frac))
    assert b.score != pytest.approx(a.score)
    # A query that is one of the reference's views: its patches are the views' own (distance 0),
    # so every searched patch (all 64 at this size) is explained and the score is the floor's.
    view = np.ascontiguousarray(r[::-1, ::-1])
    assert det_fused.detection(view, [enc]).score < 1e-3
    assert det_fused.detection(q, [enc]).score > 10 * det_fused.detection(view, [enc]).score


@pytest.mark.parametrize(("key", "value"), [("image_score", "best"), ("fused_weight", 1.5), ("fused_weight", "0.1")])
def test_a_checkpoint_with_an_unknown_image_score_is_refused(tmp_path, key, value):
    folder = NanoComparisonModel(TINY).save(tmp_path / "ck")
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, key: value}))
    with pytest.raises(CheckpointError, match="image_score must be one of map, fused"):
        NanoComparisonModel.load(folder)


def test_batched_detections_keep_the_fused_score(tower):
    """The service's batched pass scores each query against its own references' views."""
    torch.manual_seed(5)
    fused = NanoComparisonModel(replace(TINY, image_score="fused", fused_weight=0.05)).eval()
    det = NanoDetector(fused, tower)
    rng = np.random.default_rng(6)
    qs = [rng.random((64, 64, 3), dtype=np.float32) for _ in range(3)]
    refs = [[det.encode_reference(rng.random((64, 64, 3), dtype=np.float32))] for _ in range(2)]
    pairs = [(qs[0], refs[0]), (qs[1], refs[1]), (qs[2], refs[0])]
    batched = det.detections([q for q, _ in pairs], [r for _, r in pairs])
    for (q, r), got in zip(pairs, batched, strict=True):
        one = det.detection(q, r)
        assert got.score == pytest.approx(one.score, abs=1e-5)
        assert got.score != pytest.approx(pooled_score(one.amap, TINY.topk_frac))
