"""One function says what a checkpoint folder is; the copilot registry and the backbone follow it."""

from __future__ import annotations

import json

import pytest
import torch

from adcopilot.api import AnsweringCopilot, Copilot
from adcopilot.errors import CheckpointError
from adcopilot.full.tiny import build_tiny_checkpoint
from adcopilot.model.backbone import Backbone, backbone_spec, load_backbone
from adcopilot.model.checkpoint_kind import DEFAULT_CHECKPOINT, checkpoint_kind
from adcopilot.model.nano import NanoComparisonModel, NanoConfig, load_nano_detector

TINY = NanoConfig(image_size=64, width=16, num_heads=2, mlp_hidden=32, num_queries=4, out_width=24, head_hidden=8)


def _config(tmp_path, name: str, content: object) -> object:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(content) if not isinstance(content, str) else content)
    return folder


@pytest.mark.parametrize("config,kind", [
    ({"architecture": "adcopilot-nano"}, "nano"),
    ({"model_type": "ad_copilot"}, "ad-copilot"),
    ({"model_type": "yangjian"}, "ad-copilot"),
    ({"architectures": ["ADCopilotVLForConditionalGeneration"]}, "ad-copilot"),
    ({"model_type": "qwen2_5_vl"}, "qwen2.5-vl"),
    ({"model_type": "qwen2_vl"}, "qwen2-vl"),
    ({"model_type": "llama"}, None),
])
def test_kinds_by_config(tmp_path, config, kind):
    assert checkpoint_kind(_config(tmp_path, "ck", config)) == kind


def test_real_folders(tmp_path):
    if (DEFAULT_CHECKPOINT / "config.json").exists():
        assert checkpoint_kind(DEFAULT_CHECKPOINT) == "nano"
        assert checkpoint_kind(DEFAULT_CHECKPOINT / "language" / "comparison") == "nano"
    assert checkpoint_kind(build_tiny_checkpoint(tmp_path / "full")) == "ad-copilot"


def test_bad_folders_are_one_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="config.json: missing"):
        checkpoint_kind(tmp_path)
    with pytest.raises(CheckpointError, match="config.json: malformed JSON"):
        checkpoint_kind(_config(tmp_path, "bad", "{not json"))
    with pytest.raises(CheckpointError, match="expected a JSON object"):
        checkpoint_kind(_config(tmp_path, "list", [1, 2]))
    with pytest.raises(CheckpointError, match="a qwen2-vl checkpoint; the copilot loads"):
        Copilot.load(_config(tmp_path, "qwen2", {"model_type": "qwen2_vl"}))


def test_the_checkpoint_names_its_backbone(tmp_path):
    folder = NanoComparisonModel(TINY).save(tmp_path / "ck")
    raw = json.loads((folder / "config.json").read_text())
    assert raw["vision_tower"] == "efficientnet-lite0"
    del raw["vision_tower"]  # an older checkpoint: the default backbone
    (folder / "config.json").write_text(json.dumps(raw))
    detector, _ = load_nano_detector(folder)
    assert isinstance(detector.tower, Backbone) and detector.tower.name == "efficientnet-lite0"
    assert detector.tower.channels == backbone_spec().channels == detector.model.input_proj[0].in_features
    cp = Copilot.load(folder)
    assert type(cp) is Copilot and not isinstance(cp, AnsweringCopilot)  # no language/ folder: inspects only
    raw["vision_tower"] = "resnet-9000"
    (folder / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="unknown vision tower 'resnet-9000'"):
        load_nano_detector(folder)


def test_backbone_features_agree_with_its_parts():
    tower = load_backbone(pretrained=False)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        dense, glob = tower.features(x)
        assert torch.equal(dense, tower.dense_features(x)) and torch.equal(glob, tower.global_feature(x))
        assert dense.shape == (2, tower.channels, 64 // tower.stride, 64 // tower.stride)
        assert glob.shape == (2, tower.global_channels)
        m = tower.matching_feature(x)
        assert torch.allclose(m.norm(dim=1), torch.ones(2))
