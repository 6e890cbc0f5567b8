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

**The query's own patches ("fused-self").** One reference shows little of a product's normal variation,
but where a product repeats itself (the fingers and busbars of a monocrystalline cell, a weave, a
uniform coating) a normal query patch also has a close match *elsewhere in the query*, while a crack or
a stain does not. Where the product does not repeat itself (crystal grain, an object's parts) that
evidence misleads: a crack in grain finds grain boundaries like it in the same image. The reference
says which: at positions where the reference's own self-distance (each patch's distance to its nearest
patch of the same image outside its 7 x 7 neighbourhood) is below ``gate``, the distance becomes the
smaller of ``d8`` and the query's self-distance there; elsewhere ``d8`` stays. A twin explains a patch only
as well as the references explain the twin (its distance counts as at least the twin's ``d8``), because a
large uniform defect, a dark band across a cell, repeats itself too. Only the query's ordinary patches
(up to the ``twin_quantile`` of its ``d8``) serve as twins, so the band's milder parts do not explain its worst:

    self_q(i) = min over j outside i's window of max(dist(i, j), d8(j))
    D = where(self_ref < gate, min(d8, self_q), d8)        score = max of prob ** w * B(D) ** (1 - w)

**The blend ("blend", the shipped model's one-reference score).** Alone, the self-gated score ranks cells
and textures better than the pooled map but misses half the defects of loose surfaces at any threshold that
keeps the map's false alarms; the pooled map classifies those surfaces best. Each over its own threshold,
the two are blended geometrically, on the pooled map's scale (verdict at 0.5; benchmarks/RESULTS.md):

    blend = m_scale * (pooled map / m_scale) ** b * (self-gated score / s_scale) ** (1 - b)

**The query's own spread ("fused-spread", the shipped model's score with two references or more).** The fused
score of a normal part is not at the same level on every product: a texture whose patches no reference matches
closely (the grain of a polycrystalline cell) scores every normal part higher than an object whose references
explain it well (a photographed part), so no one threshold flags the same share of both. The query's ordinary
patches show that level without labels: ``L`` is the ``SPREAD_QUANTILE`` of its nearest-reference distance ``d1``
over the grid (a defect covers too little of a part to move it much), and the fused score is read relative to it
(``spread_weight`` w in the config):

    fused-spread = sigmoid(logit(fused) - w * logit(L))

A light weight brings the products' normal parts to about the same share above one threshold and leaves the
ranking as it was; a heavy one lets a large defect, which does lift ``L``, pull its own score down (figures in
benchmarks/RESULTS.md, "The query's own spread").

The references' self-distance is made once and kept with them; the query's costs one (R, N) product
over its R trusted positions among the ``SELF_CANDIDATES`` of largest ``d8`` (the others keep ``d8``, an upper
bound; searching them all cost 3.5x the time and ranked the same).
"""

from __future__ import annotations

import math
from functools import lru_cache

import cv2
import numpy as np
import torch

from adcopilot.model.upsample import upsample_centered

#: The image scores that read the references' dihedral views, and those that also read the query's own patches.
FUSED_SCORES = ("fused", "fused-self", "blend", "fused-spread")
SELF_SCORES = ("fused-self", "blend")
#: Query patches (of the largest plain distance) whose distance to the reference's views is measured.
CANDIDATES = 128
#: Smoothing of the distance map, in pixels at the image size (as the training-free baseline's).
DISTANCE_SIGMA = 4.0
_FLOOR = 1e-4  # keeps the fused map's powers finite
#: A patch's own neighbours (Chebyshev distance on the grid up to this) are not its matches in its image.
SELF_RADIUS = 3
#: The quantile of a query's nearest-reference distances that measures its normal level ("spread_weight").
SPREAD_QUANTILE = 0.75
#: Probabilities are clipped to this distance from 0 and 1 before a logit.
_LOGIT_EPS = 1e-4
#: Query patches (of the largest ``d8``) whose twins in the query itself are searched; the others keep ``d8``,
#: an upper bound that seldom reaches the image's peak (a quarter of the 32 x 32 grid at 256 px).
SELF_CANDIDATES = 256


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


@lru_cache(maxsize=4)
def _neighbourhood(h: int, w: int, radius: int) -> torch.Tensor:
    """(h * w, h * w) True where two grid positions are within ``radius`` steps (Chebyshev)."""
    yy, xx = torch.div(torch.arange(h * w), w, rounding_mode="floor"), torch.arange(h * w) % w
    return torch.maximum((yy[:, None] - yy[None]).abs(), (xx[:, None] - xx[None]).abs()) <= radius


def self_distance(
    tokens: torch.Tensor, grid: tuple[int, int], rows: torch.Tensor | None = None, twin_cost: torch.Tensor | None = None
) -> torch.Tensor:
    """(N, C) unit-norm patches of one image on an (h, w) grid, row-major -> (R,) each row's (``rows``,
    default all N) cosine distance to its nearest patch of the same image more than :data:`SELF_RADIUS`
    grid steps away. With ``twin_cost`` (N,), a patch's distance to each other patch counts as at least that
    patch's cost: a twin explains a patch only as well as the twin itself is explained."""
    near = _neighbourhood(grid[0], grid[1], SELF_RADIUS)
    if rows is not None:
        near, sim = near[rows], tokens[rows] @ tokens.T  # (R, N)
    else:
        sim = tokens @ tokens.T
    if twin_cost is not None:  # similarity 1 - max(d, cost) = min(sim, 1 - cost)
        sim = torch.minimum(sim, 1.0 - twin_cost[None, :])
    return (1.0 - sim.masked_fill_(near, -2.0).amax(dim=1)).clamp_min(0)


def self_gated_distance(
    d8: torch.Tensor, query_tokens: torch.Tensor, reference_self: torch.Tensor, gate: float, twin_quantile: float = 1.0
) -> torch.Tensor:
    """``D`` (h, w) above: ``d8`` (h, w) lowered to the query's self-distance where ``reference_self``
    (h, w) is below ``gate``, each twin counted at no less than its own ``d8``; ``query_tokens`` (N, C) are
    the query's patches, row-major. Only the query's ordinary patches serve as twins: those no farther from
    the references than the ``twin_quantile`` of its own ``d8`` (1: all). A large uniform defect repeats
    itself, and its milder parts would otherwise explain its worst (a dark band across a cell was called
    normal); they are not ordinary patches of the query."""
    flat = d8.flatten()
    out = flat.clone()
    trusted = reference_self.flatten() < gate
    top = torch.zeros_like(trusted)
    top[flat.topk(min(SELF_CANDIDATES, flat.numel())).indices] = True
    rows = (trusted & top).nonzero().squeeze(1)  # (R,) the trusted positions among the candidates
    if len(rows):  # a twin explains a patch only as well as the references explain the twin
        cost = flat
        if twin_quantile < 1.0:  # the others cost 2: similarity at most -1, never a match
            cost = torch.where(flat <= torch.quantile(flat, twin_quantile), flat, torch.full_like(flat, 2.0))
        out[rows] = torch.minimum(out[rows], self_distance(query_tokens, tuple(d8.shape), rows, twin_cost=cost))
    return out.view(d8.shape)


def fused_score(prob: np.ndarray, d8: torch.Tensor, weight: float) -> float:
    """max of ``prob ** weight * B ** (1 - weight)``: prob (S, S), d8 (h, w) -> B (S, S) as above."""
    factor = prob.shape[0] // d8.shape[0]
    b = upsample_centered(d8[None, None].float(), factor)[0, 0].numpy()
    b = cv2.GaussianBlur(b, (0, 0), DISTANCE_SIGMA)
    fused = np.maximum(prob, _FLOOR) ** weight * np.maximum(b, _FLOOR) ** (1.0 - weight)
    return float(fused.max())


def blended_score(map_score: float, self_score: float, weight: float, map_scale: float, self_scale: float) -> float:
    """The blend above: ``weight`` is the pooled map's share ``b``; each score is read over its own scale (its
    threshold), the result on the map's. Scores are floored at 1e-6 so a zero keeps the power finite."""
    m, s = max(float(map_score), 1e-6), max(float(self_score), 1e-6)
    return float(map_scale * (m / map_scale) ** weight * (s / self_scale) ** (1.0 - weight))


def _logit(p: float) -> float:
    p = min(max(p, _LOGIT_EPS), 1.0 - _LOGIT_EPS)
    return math.log(p / (1.0 - p))


def spread_level(d1: torch.Tensor) -> float:
    """The query's normal level: the :data:`SPREAD_QUANTILE` of its nearest-reference distance ``d1`` (h, w)."""
    return float(torch.quantile(d1.flatten().float(), SPREAD_QUANTILE))


def relative_score(score: float, level: float, weight: float) -> float:
    """``sigmoid(logit(score) - weight * logit(level))``: the score read relative to the query's normal level."""
    return 1.0 / (1.0 + math.exp(-(_logit(score) - weight * _logit(level))))


def pooled_score(prob: np.ndarray, frac: float) -> float:
    """Image score at inference: the mean of the top ``frac`` of the smoothed pixel probability map.

    On real data the model never saw (ELPV) this pooling ranked defective cells better than the
    training-time logit pooling on the coarse patch grid (figures in ``benchmarks/RESULTS.md``),
    since smoothing at full resolution averages out isolated noisy patches.
    """
    flat = prob.ravel()
    k = max(1, int(round(flat.size * frac)))
    return float(np.partition(flat, flat.size - k)[-k:].mean())


def image_score(
    name: str, prob: np.ndarray, d1: torch.Tensor, tokens: torch.Tensor, views: torch.Tensor | None,
    own: torch.Tensor | None, *, topk_frac: float, fused_weight: float, self_gate: float, twin_quantile: float,
    blend: tuple[float, float, float], spread_weight: float = 0.0,
) -> float:
    """The image score ``name`` of one comparison, as every runtime computes it: ``prob`` (S, S) the smoothed map,
    ``d1`` (h, w) the query's nearest-reference distance, ``tokens`` (N, C) its patches, ``views`` (M, C) the
    references' other views' patches and ``own`` (h, w) their self-distance (None where not made). The pooled map
    for "map" or without views; else the map fused with the views' distance (self-gated for "fused-self" and
    "blend"), and for "blend" that blended with the pooled map (``blend``: the map's share, its scale, the other's);
    for "fused-spread" the fused score read relative to the query's normal level (:func:`relative_score`, weight
    ``spread_weight``)."""
    if name not in FUSED_SCORES or views is None:
        return pooled_score(prob, topk_frac)
    d8 = view_distance(d1, tokens, views)  # (h, w)
    if name in SELF_SCORES and own is not None:
        d8 = self_gated_distance(d8, tokens, own.view(d8.shape), self_gate, twin_quantile)
    fused = fused_score(prob, d8, fused_weight)
    if name == "blend":
        return blended_score(pooled_score(prob, topk_frac), fused, *blend)
    return relative_score(fused, spread_level(d1), spread_weight) if name == "fused-spread" else fused
