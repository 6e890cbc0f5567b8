"""PaDiM (Defard et al. 2021): a Gaussian of the normal patch features at every position, as anomalib computes it.

For products whose good images are aligned (solar cells, parts in a fixture), the normal appearance
at each position is modelled by the mean and covariance of the good images' features there; a query
patch's anomaly value is its Mahalanobis distance to its position's Gaussian. This module follows
anomalib 2.7's ``PadimModel`` step by step, on this project's tower:

* embedding: the stride-8 stage (40 channels, timm's ``blocks.2``) with the stride-16 stage (112,
  ``blocks.4``) up-sampled to its grid by nearest neighbour, concatenated (152 channels, raw, not
  normalised), and a random subset of :data:`CHANNELS` channels (``randperm(152)[:100]``);
* per position p: mean ``mu_p`` and the unbiased covariance ``S_p`` of the n good images' embeddings,
  ``inv_p = (S_p + 0.01 I + 1e-5 I)^-1``;
* distance ``d_p(x) = sqrt(max(0, (x - mu_p)^T inv_p (x - mu_p)))`` (computed as ``|L_p^T (x - mu_p)|``
  with ``inv_p = L_p L_p^T``, the same to float rounding);
* anomalib's map: ``d`` bilinearly up-sampled to the image (``align_corners=False``), blurred by a
  Gaussian of sigma 4 (33 x 33, reflected borders); the image score is the map's maximum.

Beyond anomalib, the product memory's PaDiM part reads every image with its grey levels stretched
(:func:`stretch_grey`), so that a good image's overall brightness does not count as a deviation.

:class:`PadimAccumulator` fits the statistics one image at a time (sums in float64), so the good images'
embeddings never need to be held at once. The product memory (:mod:`adcopilot.model.memory`) uses the
distance grid as a second normality model beside its nearest-patch search.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

CHANNELS = 100  # anomalib's n_features for a backbone of this width (resnet18's default)
REGULARISATION = 0.01  # added to every covariance's diagonal
STABILISER = 1e-5  # added again before the inverse, as anomalib does
SIGMA = 4  # anomalib's blur of the up-sampled map, in pixels
#: Grey-level percentiles stretched to the range's ends before PaDiM reads an image (:func:`stretch_grey`).
STRETCH_PERCENTILES = (1.0, 99.0)


def stretch_grey(image: np.ndarray) -> np.ndarray:
    """An (H, W, 3) image (uint8, or float in [0, 1]) with its grey levels' 1st and 99th percentiles stretched
    to the ends of the range, every channel alike; the same dtype back. Good images of one product can differ
    in overall brightness and contrast (electroluminescence images of solar cells: each cell's own current),
    which moves every position's features at once; a Gaussian per position then spends its variance on that
    instead of on the product's local variation (measured on ELPV cells: benchmarks/RESULTS.md). A uniform
    image is returned as it is."""
    top = 255.0 if image.dtype == np.uint8 else 1.0
    x = image.astype(np.float32) / top
    lo, hi = np.percentile(x.mean(axis=-1), STRETCH_PERCENTILES)
    if hi - lo < 1e-3:
        return image
    out = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return (np.rint(out * 255.0).astype(np.uint8) if image.dtype == np.uint8
            else out.astype(image.dtype if image.dtype.kind == "f" else np.float32))


def check_neighbourhood(width: object) -> int:
    """``width`` if it is an odd whole number of positions (1 or more), else ValueError naming it."""
    if isinstance(width, bool) or not isinstance(width, int) or width < 1 or width % 2 == 0:
        raise ValueError(f"a PaDiM neighbourhood is an odd width of one position or more, got {width!r}")
    return width


def neighbourhood_means(scales: dict[str, torch.Tensor], width: int) -> dict[str, torch.Tensor]:
    """Stage outputs {name: (B, C, H, W)} -> float32, each position the mean over its ``width`` x ``width``
    neighbours (at the border, over those inside the image); as they are for a width of 1. PatchCore's local
    aggregation: a part a few pixels off its place still meets the Gaussian of its position."""
    if check_neighbourhood(width) == 1:
        return {k: v.float() for k, v in scales.items()}
    return {k: F.avg_pool2d(v.float(), width, 1, width // 2, count_include_pad=False) for k, v in scales.items()}


def channel_subset(total: int, keep: int = CHANNELS, seed: int = 0) -> torch.Tensor:
    """anomalib's channel rule, seeded: the first ``keep`` of a random permutation of ``total`` channels."""
    return torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:keep]


def embedding(scales: dict[str, torch.Tensor], idx: torch.Tensor) -> torch.Tensor:
    """{"s8": (B, 40, h, w), "s16": (B, 112, h/2, w/2)} raw stage outputs -> (B, len(idx), h, w)."""
    s8 = scales["s8"]
    s16 = F.interpolate(scales["s16"], size=s8.shape[-2:], mode="nearest")
    return torch.index_select(torch.cat([s8, s16], dim=1), 1, idx)


class PadimStats:
    """Per-position means (d, P) and inverse covariances (P, d, d) of a (h, w) grid, P = h * w."""

    def __init__(self, idx: torch.Tensor, mean: torch.Tensor, inv_covariance: torch.Tensor,
                 grid: tuple[int, int], images: int) -> None:
        d, p = mean.shape
        if idx.shape != (d,) or inv_covariance.shape != (p, d, d) or grid[0] * grid[1] != p:
            raise ValueError(f"inconsistent PaDiM statistics: idx {tuple(idx.shape)}, mean {tuple(mean.shape)}, "
                             f"inverse covariance {tuple(inv_covariance.shape)}, grid {grid}")
        self.idx = idx.long()
        self.mean = mean.float()
        self.inv_covariance = inv_covariance.float()
        self.grid = (int(grid[0]), int(grid[1]))
        self.images = int(images)
        self._factor: torch.Tensor | None = None  # (P, d, d) lower Cholesky factor of inv_covariance, on first use

    def factor(self) -> torch.Tensor:
        """L with ``inv_covariance = L L^T`` per position: ``d^2 = |L^T delta|^2`` reads the same bytes
        with fewer operations than ``delta^T inv delta`` (about 3 ms instead of 4 per image on one core)."""
        if self._factor is None:
            inv = self.inv_covariance.double()
            self._factor = torch.linalg.cholesky((inv + inv.transpose(1, 2)) / 2).float().contiguous()
        return self._factor

    def distance(self, scales: dict[str, torch.Tensor]) -> torch.Tensor:
        """Raw stage outputs of B images -> (B, 1, h, w) Mahalanobis distances to each position's Gaussian."""
        emb = embedding(scales, self.idx)  # (B, d, h, w)
        b, d, h, w = emb.shape
        if (h, w) != self.grid:
            raise ValueError(f"features on a {h}x{w} grid, PaDiM statistics on {self.grid[0]}x{self.grid[1]}")
        # Contiguous (P, B, d): the batched product over a permuted view took twice the time.
        delta = (emb.reshape(b, d, h * w) - self.mean).permute(2, 0, 1).contiguous()
        sq = (torch.bmm(delta, self.factor()) ** 2).sum(2).permute(1, 0)  # (B, P)
        return sq.reshape(b, 1, h, w).clamp(0).sqrt()

    def anomalib_map(self, scales: dict[str, torch.Tensor], size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """anomalib's output for B images: scores (B,) and maps (B, 1, size, size)."""
        d = F.interpolate(self.distance(scales), size=(size, size), mode="bilinear", align_corners=False)
        amap = gaussian_blur(d, SIGMA)
        return amap.amax(dim=(-2, -1)).reshape(-1), amap


class PadimAccumulator:
    """Sums of the good images' embeddings and their outer products per position, then the statistics."""

    def __init__(self, idx: torch.Tensor) -> None:
        self.idx = idx.long()
        self.n = 0
        self.grid: tuple[int, int] = (0, 0)
        self._sum: torch.Tensor | None = None  # (P, d) float64
        self._outer: torch.Tensor | None = None  # (P, d, d) float64

    def add(self, scales: dict[str, torch.Tensor]) -> None:
        """The raw stage outputs of one or more good images."""
        emb = embedding(scales, self.idx).double()  # (B, d, h, w)
        b, d, h, w = emb.shape
        x = emb.reshape(b, d, h * w).permute(2, 0, 1)  # (P, B, d)
        if self._sum is None:
            self.grid = (h, w)
            self._sum = torch.zeros(h * w, d, dtype=torch.float64)
            self._outer = torch.zeros(h * w, d, d, dtype=torch.float64)
        elif (h, w) != self.grid:
            raise ValueError(f"features on a {h}x{w} grid, earlier ones on {self.grid[0]}x{self.grid[1]}")
        self._sum += x.sum(dim=1)
        self._outer += x.transpose(1, 2) @ x
        self.n += b

    def finish(self, regularisation: float = REGULARISATION) -> PadimStats:
        """The statistics of the images added (two at least: one gives no covariance), ``regularisation``
        added to every covariance's diagonal."""
        if self.n < 2 or self._sum is None or self._outer is None:
            raise ValueError(f"PaDiM needs two good images at least, got {self.n}")
        mean = self._sum / self.n  # (P, d)
        # Unbiased covariance: (sum x x^T - n mu mu^T) / (n - 1).
        cov = (self._outer - self.n * mean[:, :, None] * mean[:, None, :]) / (self.n - 1)
        eye = torch.eye(mean.shape[1], dtype=torch.float64)
        inv = torch.linalg.inv(cov + (regularisation + STABILISER) * eye)  # (P, d, d)
        return PadimStats(self.idx, mean.T.float(), inv.float(), self.grid, self.n)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """(B, 1, H, W) blurred by a normalised Gaussian of ``sigma`` (kernel 2 * int(4 sigma + 0.5) + 1, the
    borders reflected), as two 1-D passes: the same as anomalib's 2-D kernel to float rounding."""
    k = 2 * int(4.0 * sigma + 0.5) + 1
    t = torch.arange(k, dtype=torch.float32) - k // 2
    g = torch.exp(-(t**2) / (2.0 * sigma**2))
    g = (g / g.sum()).to(x.dtype)
    r = k // 2
    y = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), g.view(1, 1, 1, k))
    return F.conv2d(F.pad(y, (0, 0, r, r), mode="reflect"), g.view(1, 1, k, 1))
