"""Heads on the Comparison Encoder's output: a dense anomaly map and an image-level logit.

Beyond the paper: AD-Copilot's weakest skills are discrimination and localization, so the nano
model reads a per-patch anomaly logit off the query-side encoder output. The head also receives the
training-free nearest-reference-patch distance (the baseline's signal) as one extra channel, so
it learns to *refine* a comparison that already transfers to unseen products (suppressing normal
variation such as crystal grain, sharpening true differences) instead of learning it from scratch.

Image score pooling (documented for users): ``image_logit = topk_mean(pixel_logits, 1%)``, as in
multiple-instance learning (a defect anywhere makes the image anomalous); optionally
(``global_score``) plus ``cls(mean(comparison query states))``, a global judgement from the
comparison tokens, off in the shipped model because it did not transfer to unseen real data.
That logit is what training optimises; at inference the reported score is the mean of the top
1% of the smoothed, full-resolution pixel probability map (``score.pooled_score``), which
transferred better to unseen real data; the decision threshold is 0.5 unless calibrated.
"""

from __future__ import annotations

import torch
from torch import nn


class DenseAnomalyHead(nn.Module):
    """(B, C, h, w) comparison features + (B, 1, h, w) patch distance -> (B, 1, h, w) logits."""

    def __init__(self, width: int, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(width + 1, hidden, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(hidden, 1, 1),
        )
        # Start near "normal everywhere" (defects are rare pixels): stable focal-loss training.
        nn.init.constant_(self.net[-1].bias, -3.0)
        # Distances are ~0..1; a learnable gain lets the head weight them from the start.
        self.distance_gain = nn.Parameter(torch.tensor(8.0))

    def forward(self, feats: torch.Tensor, distance: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([feats, distance * self.distance_gain], dim=1))


def topk_mean(x: torch.Tensor, frac: float = 0.01) -> torch.Tensor:
    """Mean of the top ``frac`` of values per sample: (B, 1, h, w) -> (B,)."""
    flat = x.flatten(1)
    k = max(1, int(round(flat.shape[1] * frac)))
    return flat.topk(k, dim=1).values.mean(dim=1)
