"""The nano comparison model: shapes, k references, save/load round trip, clear checkpoint errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from adcopilot.errors import CheckpointError
from adcopilot.model.nano import NanoComparisonModel, NanoConfig, NanoDetector, ReferenceInputs
from adcopilot.model.vision import load_vision_tower

TINY = NanoConfig(image_size=64, width=32, num_heads=4, mlp_hidden=48, num_queries=4, out_width=24, head_hidden=8)


@pytest.fixture(scope="module")
def tower():
    torch.manual_seed(0)
    return load_vision_tower(pretrained=False)


def test_forward_shapes_one_and_three_refs(tower):
    model = NanoComparisonModel(TINY)
    x = torch.rand(2, 3, 64, 64)
    qf = model.features(tower, x)
    assert qf.shape == (2, 152, 8, 8)
    for k in (1, 3):
        rf = model.features(tower, torch.rand(2 * k, 3, 64, 64)).view(2, k, 152, 8, 8)
        out = model(qf, rf)
        assert out["pixel_logits"].shape == (2, 1, 8, 8)
        assert out["image_logit"].shape == (2,)
        assert out["tokens"].shape == (2, 4, 24)
        assert out["distance"].shape == (2, 1, 8, 8)


def test_identical_pair_has_zero_distance(tower):
    model = NanoComparisonModel(TINY)
    x = torch.rand(1, 3, 64, 64)
    qf = model.features(tower, x)
    out = model(qf, qf.unsqueeze(1))
    assert out["distance"].abs().max() < 1e-5


def test_save_load_round_trip_and_detector(tmp_path, tower):
    torch.manual_seed(1)
    model = NanoComparisonModel(TINY).eval()
    model.save(tmp_path / "ck", card="# card")
    again = NanoComparisonModel.load(tmp_path / "ck")
    det_a, det_b = NanoDetector(model, tower), NanoDetector(again, tower)
    rng = np.random.default_rng(0)
    q, r = rng.random((64, 64, 3), dtype=np.float32), rng.random((64, 64, 3), dtype=np.float32)
    m_a, s_a = det_a.detect(q, [det_a.encode_reference(r)])
    m_b, s_b = det_b.detect(q, [det_b.encode_reference(r)])
    assert m_a.shape == (64, 64) and np.allclose(m_a, m_b) and s_a == pytest.approx(s_b)
    assert 0.0 <= s_a <= 1.0
    assert (tmp_path / "ck" / "MODEL_CARD.md").exists()


def test_detector_reference_cache_matches_the_uncached_forward(tower):
    """The detector's path (fused tower, cached reference inputs, no token decoder) computes what
    ``forward`` computes from the plain tower's features, with one and with two references."""
    torch.manual_seed(2)
    model = NanoComparisonModel(TINY).eval()
    det = NanoDetector(model, tower)
    rng = np.random.default_rng(1)
    q, r1, r2 = (rng.random((64, 64, 3), dtype=np.float32) for _ in range(3))
    for refs in ([r1], [r1, r2]):
        cached = [det.encode_reference(r) for r in refs]
        assert all(isinstance(c, ReferenceInputs) for c in cached)
        with torch.no_grad():
            qf = model.features(tower, torch.from_numpy(q).permute(2, 0, 1)[None])
            rf = model.features(tower, torch.from_numpy(np.stack(refs)).permute(0, 3, 1, 2))[None]
            want = model(qf, rf)
        got = det.run(q, cached, with_tokens=False)
        assert "tokens" not in got
        for key in ("pixel_logits", "distance", "image_logit"):
            assert torch.allclose(got[key], want[key], atol=1e-4), key
        assert torch.allclose(det.run(q, cached)["tokens"], want["tokens"], atol=1e-4)
        # raw (152, h, w) features are still accepted as references
        raw = det.run(q, list(rf[0]), with_tokens=False)
        assert torch.allclose(raw["pixel_logits"], want["pixel_logits"], atol=1e-4)


def test_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="config.json: missing"):
        NanoComparisonModel.load(tmp_path)
    NanoComparisonModel(TINY).save(tmp_path / "ck")
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    cfg["width"] = 64
    (tmp_path / "ck" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="does not match"):
        NanoComparisonModel.load(tmp_path / "ck")
    (tmp_path / "ck" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="malformed JSON"):
        NanoComparisonModel.load(tmp_path / "ck")
