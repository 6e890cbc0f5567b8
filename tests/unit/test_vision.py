"""The EfficientNet-Lite towers: shapes of the multi-scale features, parameter layout, the fused copy, frozen."""

from __future__ import annotations

import pytest
import torch

from adcopilot.model.vision import (
    EfficientNetLite0,
    EfficientNetLite2,
    FusedPatchTower,
    load_lite2_tower,
    load_vision_tower,
)

# (loader, stride-8 channels, stride-16 channels, their last blocks)
TOWERS = [(load_vision_tower, 40, 112, (4, 10)), (load_lite2_tower, 48, 120, (6, 14))]


@pytest.mark.parametrize("load,c8,c16,ends", TOWERS)
def test_feature_shapes_random_weights(load, c8, c16, ends):
    m = load(pretrained=False)
    x = torch.rand(2, 3, 128, 96)
    f = m.patch_features(x)
    assert f["s8"].shape == (2, c8, 16, 12)
    assert f["s16"].shape == (2, c16, 8, 6)
    assert (m.s8_block, m.s16_block) == ends
    dense, glob = m.features(x)
    assert dense.shape == (2, m.channels, 16, 12) and m.channels == c8 + c16
    assert torch.equal(dense, m.dense_features(x))
    assert glob.shape == (2, 1280) and m(x).shape == (2, 1000)
    assert not any(p.requires_grad for p in m.parameters())


def test_parameter_names_follow_lukemelas_layout():
    names = set(EfficientNetLite0().state_dict())
    assert "_blocks.15._project_conv.weight" in names
    assert "_blocks.0._expand_conv.weight" not in names  # expand ratio 1 has no expansion
    assert len(names) == 296
    lite2 = set(EfficientNetLite2().state_dict())
    assert "_blocks.20._project_conv.weight" in lite2 and "_blocks.21._bn0.weight" not in lite2
    assert len(lite2) == 386


@pytest.mark.parametrize("load", [t[0] for t in TOWERS])
def test_fused_tower_gives_the_towers_features(load):
    torch.manual_seed(0)
    m = load(pretrained=False)
    for mod in m.modules():  # non-trivial batch-norm statistics, so that folding them matters
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.2, 0.2)
    fused = FusedPatchTower.from_tower(m)
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        want, got = m.patch_features(x), fused.patch_features(x)
    for k in ("s8", "s16"):
        assert torch.allclose(got[k], want[k], atol=1e-4, rtol=1e-4)
    assert not any(p.requires_grad for p in fused.parameters())
    assert m._blocks[0]._bn1.running_var.min() >= 0.5  # the tower itself is untouched
