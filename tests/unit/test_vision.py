"""The EfficientNet-Lite0 module: shapes of the multi-scale features, grayscale handled, frozen."""

from __future__ import annotations

import torch

from adcopilot.model.vision import EfficientNetLite0, dense_features, load_vision_tower


def test_feature_shapes_random_weights():
    m = load_vision_tower(pretrained=False)
    x = torch.rand(2, 3, 128, 96)
    f = m.patch_features(x)
    assert f["s8"].shape == (2, 40, 16, 12)
    assert f["s16"].shape == (2, 112, 8, 6)
    assert dense_features(m, x).shape == (2, 152, 16, 12)
    assert m(x).shape == (2, 1000)
    assert not any(p.requires_grad for p in m.parameters())


def test_parameter_names_follow_lukemelas_layout():
    names = set(EfficientNetLite0().state_dict())
    assert "_blocks.15._project_conv.weight" in names
    assert "_blocks.0._expand_conv.weight" not in names  # expand ratio 1 has no expansion
    assert len(names) == 296
