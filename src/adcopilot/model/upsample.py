"""Centre-correct up-sampling of feature maps and anomaly maps.

With symmetric padding, cell ``i`` of a stride-``s`` feature map is centred on input pixel
``s * i`` (not ``s * i + s/2``). Up-sampling must respect that, or every map and box is shifted
by half a patch (measured: 7 px at 512 px before this fix).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def upsample_centered(x: torch.Tensor, factor: int) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, h*factor, w*factor); output pixel p samples input coordinate p/factor."""
    if factor == 1:
        return x
    h, w = x.shape[-2:]
    y = F.interpolate(x, size=((h - 1) * factor + 1, (w - 1) * factor + 1), mode="bilinear", align_corners=True)
    return F.pad(y, (0, factor - 1, 0, factor - 1), mode="replicate")
