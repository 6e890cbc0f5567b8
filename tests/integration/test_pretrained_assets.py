"""The real shipped weights: every key loads, and a real cat photo is classified as a cat."""

from __future__ import annotations

import torch

from adcopilot import assets
from adcopilot.imaging import load_image, to_float_array
from adcopilot.model.vision import EfficientNetLite0, load_vision_tower


def test_all_keys_match():
    state = torch.load(str(assets.require("efficientnet-lite0")), map_location="cpu", weights_only=True)
    model = EfficientNetLite0()
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_chelsea_is_a_cat():
    from skimage import data

    tower = load_vision_tower()
    x = torch.from_numpy(to_float_array(load_image(data.chelsea()), 224)).permute(2, 0, 1)[None]
    top = int(tower(x).argmax())
    assert 281 <= top <= 285  # ImageNet's domestic cats (tabby, tiger cat, Persian, Siamese, Egyptian)
