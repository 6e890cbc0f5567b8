"""A query softer than its references (a camera drifting out of focus): the references softened to match.

The comparison reads fine texture: a defocused query loses it, and against sharp references every normal
part then differs everywhere (on outside surfaces, 61 % of good shots blurred by sigma 1.5 px were false
alarms). The image check names a heavily blurred frame (sharpness below 0.18 of the references'); in the
band above, a query whose sharpness (mean |Laplacian| over contrast, :func:`sharpness`) is below
``SOFT_RATIO`` times a reference's is compared with that reference blurred by the Gaussian sigma (on a
``SIGMA_STEP`` grid up to ``MAX_SIGMA`` px, at the model's input size) whose sharpness comes closest to the
query's. A defect in the query stays a difference; only the texture the query no longer shows is taken from
the reference too. A sharper query than its references is compared as it is.

Opt-in (``Copilot.refocus``, ``inspect`` / ``batch --refocus``): on outside surfaces defocused by sigma 1 px it
brings false alarms from 45 % to 18 %, but the sharpness ratio also reads content (a poly cell with less grain
than its reference), and on ELPV poly cells compared as they are it cost 3 AUROC points
(``benchmarks/bench_defocus.py``, ``benchmarks/RESULTS.md``).

Usage::

    sigma = matching_sigma(sharpness(query), reference)     # 0.0: compare as it is
"""

from __future__ import annotations

import cv2
import numpy as np

from adcopilot.imaging import grey_level

#: A query below this share of a reference's sharpness gets that reference softened to match
#: (benchmarks/bench_defocus.py; normal pairs of ELPV cells go down to about 0.5 by content alone).
SOFT_RATIO = 0.5
#: Below this share the frame is heavily blurred (or blank): the image check names it (``CheckRules.blur_ratio``),
#: and it is compared as it is.
BLURRED_RATIO = 0.18
#: The grid of the softening's Gaussian sigma, in pixels of the model's input.
SIGMA_STEP = 0.25
MAX_SIGMA = 3.0


def sharpness(image: np.ndarray) -> float:
    """(S, S, 3) float image in [0, 1] -> mean |Laplacian| of its grey level over its contrast (the image
    check's measure, ``sanity.ImageProfile.sharpness``)."""
    grey = np.ascontiguousarray(grey_level(image), dtype=np.float32)
    return float(np.abs(cv2.Laplacian(grey, cv2.CV_32F)).mean()) / (float(grey.std()) + 1e-6)


def soften(image: np.ndarray, sigma: float) -> np.ndarray:
    """The image blurred by a Gaussian of ``sigma`` px (itself at 0)."""
    return cv2.GaussianBlur(image, (0, 0), sigma) if sigma > 0 else image


def matching_sigma(query_sharpness: float, reference: np.ndarray, reference_sharpness: float | None = None) -> float:
    """The sigma to soften ``reference`` by for a query of ``query_sharpness``: 0 unless the query lies between
    ``BLURRED_RATIO`` and ``SOFT_RATIO`` of the reference's sharpness (``reference_sharpness``, when known); else
    the grid sigma whose softened reference's sharpness is closest to the query's (the sharpness falls as sigma
    grows, so the search stops once past it)."""
    previous = (sharpness(reference) if reference_sharpness is None else reference_sharpness, 0.0)
    if not BLURRED_RATIO * previous[0] <= query_sharpness < SOFT_RATIO * previous[0]:
        return 0.0
    for sigma in np.arange(SIGMA_STEP, MAX_SIGMA + 1e-9, SIGMA_STEP):
        current = (sharpness(soften(reference, float(sigma))), float(sigma))
        if current[0] <= query_sharpness:
            return min(previous, current, key=lambda c: abs(c[0] - query_sharpness))[1]
        previous = current
    return MAX_SIGMA
