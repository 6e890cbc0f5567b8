"""PaDiM fitted on a lot itself: a second no-label score for a lot of aligned parts (``batch --mutual --aligned``).

Where every image of a lot shows the product in the same place (solar cells, parts in a fixture), the lot's own
images describe each position's normal appearance: PaDiM's Gaussian per position (:mod:`adcopilot.model.padim`,
anomalib's recipe, on grey-level-stretched images as ``adapt`` fits it) can be fitted on the lot with no label. The
lot is mostly normal but not clean, so the Gaussians are fitted twice: on every image, then again on the share of
images the first fit scored lowest (``1 - TRIM``), and every image is scored by the second fit (anomalib's image
score, the maximum of the blurred distance map). Each position's features are first averaged over its
``NEIGHBOURHOOD`` x ``NEIGHBOURHOOD`` neighbours (as PatchCore aggregates patches): the parts of a lot sit a few
pixels apart, and a Gaussian per position then meets a cell shifted by part of a patch without calling it new.
Joined with the mutual score on the lot's scale, it ranked ELPV lots better on both cell types; on lots of loose
parts, where a position holds different things in different images, it can rank worse, so it is asked for, not
assumed (benchmarks/RESULTS.md). Where it ranks the lot unlike the
mutual score (:func:`rank_agreement` below ``AGREEMENT_FLOOR``), the parts are probably not aligned: the run says so.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from adcopilot.model.padim import PadimAccumulator, channel_subset, check_neighbourhood, neighbourhood_means

#: The share of a lot's images, scored highest by the first fit, left out of the second.
TRIM = 0.5
#: Below this rank correlation with the mutual score the lot PaDiM is suspect: on ELPV lots it was 0.73-0.89 and on
#: object lots 0.84-0.90, on the texture lots where it ranked 1.5-13 points worse 0.13-0.46 (benchmarks/RESULTS.md).
AGREEMENT_FLOOR = 0.5
#: Each position's stage outputs are averaged over this square of positions before fitting and scoring: chosen on
#: ELPV's training split taken as lots, over none, 3 and 5 (benchmarks/RESULTS.md).
NEIGHBOURHOOD = 3
_BATCH = 32  # images per step of fitting and scoring


def _fit_and_score(
    scales: dict[str, torch.Tensor], rows: list[int], size: int, neighbourhood: int,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Gaussians fitted on the images ``rows``; every image's PaDiM image score, (N,); ``progress`` told of every
    image scored. The features are averaged over ``neighbourhood`` one batch at a time (a lot's float32 copy would
    be twice its float16 outputs)."""
    acc = PadimAccumulator(channel_subset(scales["s8"].shape[1] + scales["s16"].shape[1]))
    for start in range(0, len(rows), _BATCH):
        part = rows[start : start + _BATCH]
        acc.add(neighbourhood_means({k: v[part] for k, v in scales.items()}, neighbourhood))
    stats = acc.finish()
    n = len(scales["s8"])
    out = []
    for s in range(0, n, _BATCH):
        batch = neighbourhood_means({k: v[s : s + _BATCH] for k, v in scales.items()}, neighbourhood)
        out.append(stats.anomalib_map(batch, size)[0])
        if progress is not None:
            progress(len(out[-1]))
    return torch.cat(out).numpy().astype(np.float64)


@torch.inference_mode()
def lot_padim_scores(
    scales: dict[str, torch.Tensor], size: int, trim: float = TRIM, progress: Callable[[int], None] | None = None,
    neighbourhood: int = NEIGHBOURHOOD,
) -> np.ndarray:
    """The raw stage outputs of a lot's N images ({"s8": (N, C8, S/8, S/8), "s16": (N, C16, S/16, S/16)}, any
    float dtype) -> (N,) PaDiM image scores at image size ``size``: each position averaged over its
    ``neighbourhood`` (an odd width; 1: as they are), fitted on all, then on the ``1 - trim`` share the first fit
    scored lowest (two images at least). ``progress`` is told of every image scored (2N in all)."""
    n = len(scales["s8"])
    if n < 3:
        raise ValueError(f"a lot PaDiM needs three images or more, got {n}")
    check_neighbourhood(neighbourhood)  # before any work
    first = _fit_and_score(scales, list(range(n)), size, neighbourhood, progress)
    keep = np.argsort(first, kind="stable")[: max(2, int(n * (1.0 - trim)))]
    return _fit_and_score(scales, sorted(int(i) for i in keep), size, neighbourhood, progress)


def rank_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two (N,) scores of one lot (ties broken by order; 0 when either is constant)."""
    ra = np.argsort(np.argsort(np.asarray(a), kind="stable"), kind="stable").astype(np.float64)
    rb = np.argsort(np.argsort(np.asarray(b), kind="stable"), kind="stable").astype(np.float64)
    if len(ra) < 2 or np.ptp(np.asarray(a)) == 0 or np.ptp(np.asarray(b)) == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])
