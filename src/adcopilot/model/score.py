"""The default model's image score: the comparison model's map fused with a view-augmented distance.

Why (figures in benchmarks/RESULTS.md): the comparison model's map is sharp where a defect is, but on a
texture it never saw in training (the grain of a polycrystalline cell) it lights up on normal variation
too, often saturating, so its pooled score ranks images worse than the training-free nearest-reference
distance. One reference also shows only a little of a product's normal variation: a normal query patch
often has no close match among the reference's patches. The reference's eight dihedral views (flips and
quarter turns: the same surface in every orientation) multiply the patches a normal patch can match,
while a defect still matches none of them.

So each reference is also encoded in its seven other views (cached with the reference); ``d8`` is a query
patch's cosine distance to the nearest patch of any view (``d8 <= d1``, the distance to the plain
references the comparison model already computes). The image score is the maximum of a fused map:

    B     = Gaussian(up-sampled d8, sigma 4 px)        the training-free baseline's map, on the views
    score = max over pixels of  prob ** w * B ** (1 - w)      w = the config's ``fused_weight``

The comparison model's evidence sharpens the distance's peak where both agree. Only the ``candidates``
patches of largest ``d1`` are searched among the views (the others keep ``d1``, an upper bound of their
``d8``): searching all patches in eight views would cost more than the rest of an inspection. The dense
map, and so the boxes, stay the comparison model's.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from adcopilot.model.upsample import upsample_centered

#: Query patches (of the largest plain distance) whose distance to the reference's views is measured.
CANDIDATES = 128
#: Smoothing of the distance map, in pixels at the image size (as the training-free baseline's).
DISTANCE_SIGMA = 4.0
_FLOOR = 1e-4  # keeps the fused map's powers finite


def dihedral_views(image: np.ndarray) -> list[np.ndarray]:
    """The eight flips and quarter turns of a square (S, S, C) image, the image itself first."""
    flips = [image, image[:, ::-1], image[::-1, :], image[::-1, ::-1]]
    return [np.ascontiguousarray(v) for v in flips + [np.rot90(v) for v in flips]]


def nearest_distance(queries: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """queries (N, C), bank (M, C), unit-norm rows -> (N,) cosine distance to the nearest bank row."""
    return (1.0 - (queries @ bank.T).max(dim=1).values).clamp_min(0)


def view_distance(
    distance: torch.Tensor, query_tokens: torch.Tensor, views: torch.Tensor, candidates: int = CANDIDATES
) -> torch.Tensor:
    """``d8`` (h, w): for the ``candidates`` patches of largest ``distance`` (h, w, the plain ``d1``)
    the smaller of ``d1`` and the distance to the nearest of ``views`` (M, C); ``d1`` elsewhere.
    ``query_tokens`` (N, C) are the query's patches, row-major."""
    flat = distance.flatten()
    idx = flat.topk(min(candidates, flat.numel())).indices  # (K,)
    out = flat.clone()
    out[idx] = torch.minimum(nearest_distance(query_tokens[idx], views), flat[idx])
    return out.view(distance.shape)


def fused_score(prob: np.ndarray, d8: torch.Tensor, weight: float) -> float:
    """max of ``prob ** weight * B ** (1 - weight)``: prob (S, S), d8 (h, w) -> B (S, S) as above."""
    factor = prob.shape[0] // d8.shape[0]
    b = upsample_centered(d8[None, None].float(), factor)[0, 0].numpy()
    b = cv2.GaussianBlur(b, (0, 0), DISTANCE_SIGMA)
    fused = np.maximum(prob, _FLOOR) ** weight * np.maximum(b, _FLOOR) ** (1.0 - weight)
    return float(fused.max())
