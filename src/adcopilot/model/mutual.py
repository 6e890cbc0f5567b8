"""Lot-level zero-shot scoring: every image of a lot against the other images of the same lot.

Most parts of a lot are normal, so a patch that has a close match in most other images is normal and a
defect patch is not (the mutual-scoring idea of zero-shot methods such as MuSc, Li et al. 2024). No
reference and no training are needed. A :class:`MutualRecipe` says how:

- **Grey levels.** With ``stretch`` (the default) every image's grey levels' 1st-99th percentiles are stretched
  to 0-1 before its features (:func:`adcopilot.model.padim.stretch_grey`), so that a lot's differences in
  overall brightness do not count as differences.
- **Views.** Each layer in ``layers`` is scored on its own: ``joint`` (the tower's two scales joined as
  the comparison model sees them, the default) or one scale, ``s8`` or ``s16``; stride-8 features are
  average-pooled 2 x 2 to the stride-16 grid, so every view has P = (S/16)^2 patches. Each layer is scored
  once per degree ``r`` in ``windows``: each patch feature averaged over its r x r neighbourhood and renormalised
  (MuSc's local neighbourhood aggregation: r = 1 sees fine texture, larger r whole small defects).
- **Mutual score.** In each view, a patch's nearest-patch cosine distance to every *other* image of the
  lot, sorted; its value is the mean over the ``interval`` (shares of the N-1 others, from the closest):
  a defect shared by a few images is still far from the rest. The patch value is the mean over views.
- **Copies.** An image whose every patch matches another image's far more closely than the images it
  typically meets (its mean nearest-patch distance to it below ``twin_ratio`` of its median over the
  others) is the same picture again: a file copied into the lot twice, saved again in another format,
  brighter or darker. It is left out of that image's comparisons, as the image itself is, or a defect
  imaged twice would vouch for itself (it did: two of four defective cells of a small lot, each present
  twice, scored as normal). Another exposure of the same part (sensor noise, a shift of a pixel or more)
  is not told apart from a distinct part (their ratios overlap: 0.33-0.83 against 0.117 and up).
- **Second pass.** With ``pool_k`` set, the lot is scored again against a pool: the images the first
  pass judged normal (image score below the lot threshold at ``pool_k``, :func:`lot_threshold`), each
  patch's value the mean over the ``pool_interval`` of its sorted distances to the pool (the image
  itself left out). Where several images share a defect of one kind (dark cells, cracks of one shape)
  each finds its look-alikes among the others in the first pass; the pool leaves them out, as PaDiM
  fitted on a lot is fitted again without the cells it scored highest. A fixed share of the lot would
  leave rare normal variants out of the pool as well in a lot that is mostly normal, and they would
  then score high; the lot's own threshold leaves out only what stands out.
- **Image score.** With ``floor`` set, each image's patch values less their ``floor`` quantile (a
  defect stands out of its own image, not of the lot's average level). The mean of the image's
  ``top_k`` largest patch values, then smoothed over the lot's own similarity graph when
  ``neighbours`` is set (MuSc's RsCIN): for each k, the similarity-weighted mean of the scores of the
  image and its k - 1 most similar images by global feature (the mean of its patch features),
  averaged over the k's. A normal image that scores high by chance sits among normal look-alikes
  that do not; where defective parts look alike, it pulls defects together instead.

The default recipe is one joint view at r = 1, the closest 30 %, then a second pass against the images
below the first pass's lot threshold at k = 2 (their closest 5 %), top 3: the second pass lifts both
ELPV cell types, on lots mostly normal and on lots half defective; no other part does
(``benchmarks/RESULTS.md``); the others stay for measuring.

Cost: a lot of N images takes N^2 * P^2 * (sum of the views' channels) multiply-adds per pass (the
second pass against the pool); the products run in bfloat16 on CPUs with AVX512-BF16 (twice the float32
speed; a distance is then rounded to 1/256, far below the spread of the values averaged over many
images), in float32 elsewhere.

The lot's threshold comes from its own scores (:func:`lot_threshold`): no label and no reference needed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from adcopilot.model.vision import PatchTower, joint_patch_features

#: Layers a view may use and their strides: the tower's scales (keys of ``PatchTower.patch_features``)
#: and "joint", both joined as the comparison model sees them (:func:`joint_patch_features`).
LAYER_STRIDES = {"s8": 8, "s16": 16, "joint": 8}
#: Stride of the grid every view is scored on.
GRID_STRIDE = 16
#: bfloat16 where the CPU multiplies it natively (AVX512-BF16); elsewhere it would be emulated, and
#: slower than float32.
_BF16 = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
MATMUL_DTYPE = torch.bfloat16 if _BF16 else torch.float32


@dataclass(frozen=True)
class MutualRecipe:
    """How a lot is scored (see the module doc)."""

    layers: tuple[str, ...] = ("joint",)
    windows: tuple[int, ...] = (1,)
    interval: tuple[float, float] = (0.0, 0.3)  # shares of the other images, closest first
    top_k: int = 3
    floor: float | None = None  # quantile of the image's own patch values subtracted from them; None: raw
    neighbours: tuple[int, ...] = ()  # RsCIN graph sizes (the image itself included); () leaves scores as they are
    pool_k: float | None = 2.0  # second pass against the images below the lot threshold at this k; None: one pass
    pool_interval: tuple[float, float] = (0.0, 0.05)  # the second pass's shares of the pool, closest first
    # Copies: another image within this share of the image's median pair distance (None: none left out). Exact
    # copies, lossless re-saves and brightness changes score 0-0.005 (JPEG at quality 90 0.02-0.27, a shift of a
    # pixel 0.03-0.28); the closest distinct pair among all ELPV cells and the photo lots 0.117
    # (benchmarks/RESULTS.md).
    twin_ratio: float | None = 0.05
    # Every image's grey levels stretched (1st-99th percentiles to 0-1, model/padim.py ``stretch_grey``) before its
    # patch features: images of one product can differ in overall brightness (solar cells under
    # electroluminescence), which moves every patch at once (benchmarks/RESULTS.md).
    stretch: bool = True

    def problems(self) -> list[str]:
        """What is wrong with the recipe (empty when it can be used)."""
        out = [f"unknown layer '{name}' (use {', '.join(LAYER_STRIDES)})" for name in self.layers if name not in LAYER_STRIDES]
        if not self.layers or not self.windows:
            out.append("at least one layer and one window are needed")
        out += [f"window {r} must be an odd number >= 1" for r in self.windows if r < 1 or r % 2 == 0]
        for name, (lo, hi) in (("interval", self.interval), ("pool_interval", self.pool_interval)):
            if not (math.isfinite(lo) and math.isfinite(hi) and 0 <= lo < hi <= 1):
                out.append(f"{name} {(lo, hi)} must satisfy 0 <= low < high <= 1")
        if self.pool_k is not None and not (math.isfinite(self.pool_k) and self.pool_k > 0):
            out.append(f"pool_k {self.pool_k} must be a positive number")
        if self.floor is not None and not (math.isfinite(self.floor) and 0 <= self.floor <= 1):
            out.append(f"floor {self.floor} must be a quantile in [0, 1]")
        if self.twin_ratio is not None and not (math.isfinite(self.twin_ratio) and 0 < self.twin_ratio < 1):
            out.append(f"twin_ratio {self.twin_ratio} must lie in (0, 1)")
        if self.top_k < 1:
            out.append(f"top_k must be at least 1, got {self.top_k}")
        out += [f"neighbours {k} must be at least 1" for k in self.neighbours if k < 1]
        return out

    def key(self) -> str:
        """A stable text of the settings that change the first pass's patch values (for resuming saved scores)."""
        twins = "" if self.twin_ratio is None else f";twins={self.twin_ratio}"
        stretch = ";stretch" if self.stretch else ""
        return (f"layers={','.join(self.layers)};windows={','.join(map(str, self.windows))};interval={self.interval}"
                f"{twins}{stretch}")

    def pool_key(self) -> str:
        """The same for the second pass (its pool comes on top)."""
        return f"{self.key()};pool_k={self.pool_k};pool_interval={self.pool_interval};top_k={self.top_k}"


@dataclass
class LotViews:
    """What mutual scoring needs of some images: one (B, P, C_v) unit-norm feature tensor per view (in
    the recipe's layer-major, window-minor order, stored in bfloat16) and (B, D) unit global features."""

    views: list[torch.Tensor]
    global_features: torch.Tensor

    @staticmethod
    def cat(parts: Sequence[LotViews]) -> LotViews:
        return LotViews([torch.cat(v) for v in zip(*(p.views for p in parts), strict=True)],
                        torch.cat([p.global_features for p in parts]))

    def __len__(self) -> int:
        return len(self.global_features)


def aggregate(grid: torch.Tensor, window: int) -> torch.Tensor:
    """(B, C, h, w) unit-norm features -> the same, each the renormalised mean of its ``window`` x
    ``window`` neighbourhood (cells outside the image are left out of the mean)."""
    if window == 1:
        return grid
    return F.normalize(F.avg_pool2d(grid, window, 1, window // 2, count_include_pad=False), dim=1)


def _on_grid(feature: torch.Tensor, stride: int) -> torch.Tensor:
    """(B, C, S/stride, S/stride) -> (B, C, S/16, S/16) unit-norm, finer scales average-pooled."""
    f = F.normalize(feature.float(), dim=1)
    if stride < GRID_STRIDE:
        f = F.normalize(F.avg_pool2d(f, GRID_STRIDE // stride), dim=1)
    return f


@torch.inference_mode()
def lot_features(tower: PatchTower, images: torch.Tensor, recipe: MutualRecipe | None = None) -> LotViews:
    """(B, 3, S, S) in [0, 1] -> the images' views and global features (S a multiple of 16)."""
    return lot_views(tower.patch_features(images), recipe)


@torch.inference_mode()
def lot_views(scales: dict[str, torch.Tensor], recipe: MutualRecipe | None = None) -> LotViews:
    """The tower's raw stage outputs of B images ({"s8": (B, C8, S/8, S/8), "s16": ...}) -> their views and
    global features, as :func:`lot_features`."""
    recipe = recipe or MutualRecipe()
    if "joint" in recipe.layers:
        scales = {**scales, "joint": joint_patch_features(scales)}
    grids = {name: _on_grid(scales[name], LAYER_STRIDES[name]) for name in recipe.layers}  # (B, C, S/16, S/16)
    views = [aggregate(grids[name], r).flatten(2).transpose(1, 2).to(MATMUL_DTYPE).contiguous()
             for name in recipe.layers for r in recipe.windows]  # each (B, P, C)
    glob = F.normalize(torch.cat([g.mean(dim=(2, 3)) for g in grids.values()], dim=1), dim=1)  # (B, D)
    return LotViews(views, glob)


def interval_mean(dist: torch.Tensor, interval: tuple[float, float], others: int) -> torch.Tensor:
    """(R, M, P) distances of R images' patches to M images (the ``others`` finite ones first when
    sorted) -> (R, P): the mean of each patch's sorted distances ranked floor(low * others) ..
    ceil(high * others) - 1 (at least one)."""
    lo = min(int(math.floor(interval[0] * others)), others - 1)
    hi = max(lo + 1, min(others, int(math.ceil(interval[1] * others))))
    return dist.topk(hi, dim=1, largest=False).values[:, lo:hi].mean(1)


@torch.inference_mode()
def view_distances(
    view: torch.Tensor, rows: Sequence[int], chunk: int = 64, cols: Sequence[int] | None = None
) -> torch.Tensor:
    """(N, P, C) one view of the lot -> (R, M, P): each patch of the images ``rows``'s cosine distance to
    its nearest patch in each of the images ``cols`` (all N by default; infinite to the image itself)."""
    n, p, c = view.shape
    r = len(rows)
    bank = view if cols is None else view[list(cols)]  # (M, P, C): the whole lot is not copied
    cols = list(range(n)) if cols is None else list(cols)
    queries = view[list(rows)].reshape(r * p, c)
    out = torch.empty(r, len(cols), p)
    for start in range(0, len(cols), chunk):
        block = bank[start : start + chunk]  # (J, P, C)
        sim = queries @ block.reshape(-1, c).T  # (R*P, J*P)
        best = sim.view(r, p, len(block), p).amax(dim=3).float()  # (R, P, J)
        out[:, start : start + len(block)] = (1.0 - best).transpose(1, 2)
    where = {j: k for k, j in enumerate(cols)}
    for k, row in enumerate(rows):
        if row in where:
            out[k, where[row]] = float("inf")
    return out.clamp_min_(0)


def pair_ratios(dist: torch.Tensor) -> torch.Tensor:
    """(R, M, P) nearest-patch distances (infinite to the image itself) -> (R, M): each column image's mean
    distance over the row image's median over the others (infinite to itself)."""
    pair = dist.mean(2)  # (R, M)
    finite = torch.isfinite(pair)
    typical = torch.where(finite, pair, torch.nan).nanmedian(dim=1).values  # (R,)
    return torch.where(finite, pair / typical[:, None], torch.inf)


def copies(dist: torch.Tensor, ratio: float) -> torch.Tensor:
    """(R, M, P) nearest-patch distances -> (R, M) True where the column image is a copy of the row image:
    its :func:`pair_ratios` below ``ratio``."""
    return pair_ratios(dist) < ratio


@torch.inference_mode()
def mutual_patch_scores(
    lot: LotViews | Sequence[torch.Tensor],
    interval: tuple[float, float] = (0.0, 0.3),
    rows: Sequence[int] | None = None,
    progress: Callable[[int], None] | None = None,
    group: int = 8,
    pool: Sequence[int] | None = None,
    twin_ratio: float | None = None,
) -> torch.Tensor:
    """The views of a lot -> (R, P) patch values (see the module doc) of the images ``rows`` (all N by
    default), each against every other image of the lot, or of ``pool`` when given (the image itself
    left out, and with ``twin_ratio`` its copies, found in the first view); ``group`` images at a time."""
    views = lot.views if isinstance(lot, LotViews) else list(lot)
    n, p, _ = views[0].shape
    cols = list(range(n)) if pool is None else sorted(set(pool))
    if len(cols) < 2:
        raise ValueError("mutual scoring needs a lot (and a pool) of two images or more")
    in_pool = set(cols)
    wanted = list(range(n)) if rows is None else list(rows)
    out = torch.zeros(len(wanted), p)
    for start in range(0, len(wanted), group):
        part = wanted[start : start + group]
        # An image of the pool has one other image fewer to be compared with than one outside it, and
        # each of its copies one fewer again (an image whose every other one is a copy keeps them).
        others = torch.tensor([len(cols) - (i in in_pool) for i in part])  # (R,)
        twins = None
        for v, view in enumerate(views):
            dist = view_distances(view, part, cols=cols)  # (R, M, P)
            if v == 0 and twin_ratio is not None:
                twins = copies(dist, twin_ratio)  # (R, M)
                twins &= (others - twins.sum(1) >= 1)[:, None]
                others = others - twins.sum(1)
            if twins is not None:
                dist[twins] = float("inf")
            for count in others.unique().tolist():
                ks = torch.nonzero(others == count).flatten().tolist()
                out[[start + k for k in ks]] += interval_mean(dist[ks], interval, count)
        if progress:
            progress(len(part))
    return out / len(views)


def pool_of(scores: torch.Tensor, k: float) -> list[int]:
    """(N,) first-pass image scores -> the indices of the images below the lot's threshold at ``k``
    (:func:`lot_threshold`): those the first pass judged normal; the two lowest at least."""
    x = scores.numpy()
    keep = np.flatnonzero(x < lot_threshold(x, k))
    if len(keep) < 2:
        keep = np.argsort(x, kind="stable")[:2]
    return sorted(keep.tolist())


def relative_patch_values(patch_scores: torch.Tensor, floor: float | None) -> torch.Tensor:
    """(N, P) patch values -> the same less each image's ``floor`` quantile of them (clamped at 0), or
    as they are for None: an image whose every patch is a little farther from the lot (a rarer
    variant, another exposure) does not outrank one with a local defect."""
    if floor is None:
        return patch_scores
    return (patch_scores - patch_scores.quantile(floor, dim=1, keepdim=True)).clamp_min(0)


def image_scores(patch_scores: torch.Tensor, top_k: int = 3) -> torch.Tensor:
    """(N, P) patch values -> (N,) image scores: the mean of each image's ``top_k`` largest."""
    return patch_scores.topk(min(top_k, patch_scores.shape[1]), dim=1).values.mean(1)


def rescore_by_neighbours(scores: torch.Tensor, global_features: torch.Tensor, neighbours: Sequence[int]) -> torch.Tensor:
    """(N,) image scores, (N, D) unit global features -> (N,) scores smoothed over the lot's similarity
    graph: for each k, sum_j w_ij s_j over image i and its k - 1 most similar images, w_ij their cosine
    similarities divided by the sum; the mean over the k's. Weights sum to 1: the scale is kept."""
    if not neighbours:
        return scores
    n = len(scores)
    sim = global_features @ global_features.T  # (N, N)
    sim.fill_diagonal_(float("inf"))  # the image itself first, whatever the rounding
    out = torch.zeros(n)
    for k in neighbours:
        top, idx = sim.topk(min(k, n), dim=1)  # (N, k)
        top[:, 0] = 1.0
        w = top.clamp_min(0)
        out += (w * scores[idx]).sum(1) / w.sum(1)
    return out / len(neighbours)


def lot_image_scores(patch_scores: torch.Tensor, global_features: torch.Tensor, recipe: MutualRecipe) -> torch.Tensor:
    """(N, P) patch values -> (N,) the lot's image scores under the recipe (floor, top-k mean, graph)."""
    top = image_scores(relative_patch_values(patch_scores, recipe.floor), recipe.top_k)
    return rescore_by_neighbours(top, global_features, recipe.neighbours)


#: Robust standard deviations above the lot's median image score at which a mutual score is anomalous:
#: 2-7 % false alarms on lots of ELPV cells with 5-10 % defective (``benchmarks/lot_trim.py``).
MAD_K = 1.5
#: Floor of the lot's spread (cosine distance): a lot of near-identical images is not split by rounding noise.
MIN_SPREAD = 0.01


def lot_threshold(scores: Sequence[float], k: float = MAD_K) -> float:
    """The lot's own threshold for mutual image scores: median + k * 1.4826 * MAD.

    Most of a lot is normal, so the median and the median absolute deviation (scaled to a standard
    deviation for a normal distribution) describe the normal images' scores however many outliers
    the lot holds (up to half); a defect is an image ``k`` robust deviations above them."""
    med, spread = _centre_spread(scores)
    return med + k * spread


def lot_z(scores: Sequence[float]) -> np.ndarray:
    """(N,) scores -> their robust z-scores on the lot, (score - median) / (1.4826 * MAD): two scores of
    different scales (the mutual score, the model's against lot references) put on one before they are added."""
    med, spread = _centre_spread(scores)
    return (np.asarray(scores, dtype=np.float64) - med) / spread


def _centre_spread(scores: Sequence[float]) -> tuple[float, float]:
    """The median of the lot's scores and their robust standard deviation, floored at ``MIN_SPREAD``."""
    if len(scores) == 0:
        raise ValueError("a lot threshold needs at least one score")
    x = np.asarray(scores, dtype=np.float64)
    med = float(np.median(x))
    mad = float(np.median(np.abs(x - med)))
    return med, max(1.4826 * mad, MIN_SPREAD)
