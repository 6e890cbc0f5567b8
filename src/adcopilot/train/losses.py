"""Losses for the dense anomaly head and the image label."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, alpha: float = 0.75) -> torch.Tensor:
    """Binary focal loss (Lin et al. 2017) with soft targets; mean over all elements."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    a_t = alpha * target + (1 - alpha) * (1 - target)
    return (a_t * (1 - p_t) ** gamma * ce).mean()


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice loss per sample, averaged over the samples that have a defect (0 if none do)."""
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    has = t.sum(1) > 0
    if not has.any():
        return logits.sum() * 0.0
    inter = (p * t).sum(1)
    dice = 1 - (2 * inter + eps) / (p.sum(1) + t.sum(1) + eps)
    return dice[has].mean()


def mask_to_cells(mask: torch.Tensor, stride: int) -> torch.Tensor:
    """(B, S, S) 0/1 mask -> (B, 1, S/stride, S/stride) fraction of defect pixels around each cell centre.

    Cell i of a stride-s map is centred on pixel s*i (see model/upsample.py), so it covers
    pixels [s*i - s/2, s*i + s/2)."""
    m = mask.unsqueeze(1).float()
    half = stride // 2
    padded = F.pad(m, (half, half, half, half))
    pooled = F.avg_pool2d(padded, stride, stride)  # (B, 1, S/s + 1, S/s + 1)
    h = mask.shape[-1] // stride
    return pooled[..., :h, :h]
