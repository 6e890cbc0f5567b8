"""The backbone interface: what the inspection core needs from a frozen vision tower, by name.

A backbone gives, for RGB images in [0, 1] (B, 3, S, S):

- ``dense_features``  (B, channels, S/stride, S/stride) patch features, each scale unit-norm, joint
  norm 1 (what the comparison model and the product memory compare);
- ``global_feature``  (B, global_channels) pooled last-layer features (what the object is);
- ``features``        both in one pass;
- ``matching_feature`` (B, D) unit vectors for picking the most similar normal reference of a lot;
- ``classify``        (B, global_channels) -> (B, 1000) ImageNet logits (what the object looks like to
  ImageNet, for object questions without product context).

A checkpoint names its backbone in ``config.json`` (``"vision_tower"``); without the key it is
EfficientNet-Lite0 (:data:`DEFAULT_BACKBONE`). EfficientNet-Lite1 and -Lite2 (``"efficientnet-lite1"``,
``"efficientnet-lite2"``) are optional: their weights come with the extras ``adcopilot[lite1]`` and
``adcopilot[lite2]``. Code outside ``model/`` reads sizes from
:func:`backbone_spec` and towers from :func:`load_backbone`, never a concrete class.

Usage::

    tower = load_backbone()                              # the default, pretrained, frozen
    spec = backbone_spec("efficientnet-lite0")           # channels, stride, global_channels
    patches, glob = tower.features(x)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from adcopilot.errors import CheckpointError
from adcopilot.model.vision import (
    EfficientNetLite,
    EfficientNetLite0,
    EfficientNetLite1,
    EfficientNetLite2,
    load_lite1_tower,
    load_lite2_tower,
    load_vision_tower,
)

DEFAULT_BACKBONE = "efficientnet-lite0"


@runtime_checkable
class Backbone(Protocol):
    """A frozen vision tower (see the module docstring for the shapes)."""

    name: str
    channels: int
    stride: int
    global_channels: int

    def dense_features(self, x: torch.Tensor) -> torch.Tensor: ...

    def global_feature(self, x: torch.Tensor) -> torch.Tensor: ...

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def matching_feature(self, x: torch.Tensor) -> torch.Tensor: ...

    def classify(self, glob: torch.Tensor) -> torch.Tensor: ...

    def prepare_for_inference(self) -> None:
        """Lay the weights out for fast CPU inference (in place; idempotent)."""
        ...


@dataclass(frozen=True)
class BackboneSpec:
    """A backbone's sizes and how to load it."""

    name: str
    channels: int
    stride: int
    global_channels: int
    load: Callable[..., Any]  # (pretrained: bool = True) -> Backbone


def lite_spec(tower: type[EfficientNetLite], load: Callable[..., Any]) -> BackboneSpec:
    """The spec of an EfficientNet-Lite tower class, loaded by ``load``."""
    return BackboneSpec(tower.name, tower.channels, tower.stride, tower.global_channels, load)


#: Backbones by the name a checkpoint's config stores.
BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        lite_spec(EfficientNetLite0, load_vision_tower),
        lite_spec(EfficientNetLite1, load_lite1_tower),
        lite_spec(EfficientNetLite2, load_lite2_tower),
    )
}


def backbone_spec(name: str | None = None) -> BackboneSpec:
    """The spec of backbone ``name`` (None: the default); an unknown name is a CheckpointError."""
    key = name or DEFAULT_BACKBONE
    if key not in BACKBONES:
        raise CheckpointError(f"unknown vision tower {key!r}; known: {', '.join(BACKBONES)}")
    return BACKBONES[key]


def load_backbone(name: str | None = None, pretrained: bool = True) -> Backbone:
    """The frozen backbone ``name`` (None: the default) in eval mode; ``pretrained=False``: random (tests)."""
    return backbone_spec(name).load(pretrained=pretrained)
