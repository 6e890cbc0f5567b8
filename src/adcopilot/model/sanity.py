"""Is this the product at all? A global check of the query against its references.

The comparison model judges *differences within* a product; it was never shown a frame that is not
the product, and may call a black frame, a failed camera or another part "normal" because no local
patch stands out. This check runs beside it on the whole image and, when it fails, the verdict is
anomalous whatever the score, with one of these reasons:

* ``"blank image"``: (almost) no contrast, against references that have some (a missing part, a
  lens cap, a 1 x 1 image resized to the model's size);
* ``"overexposed"`` / ``"underexposed"``: much of the frame saturated (and brighter than the
  brightest reference), or much darker than the references with the contrast gone;
* ``"blurred"``: fine detail (mean absolute Laplacian relative to the contrast) far below the
  references';
* ``"not the reference product"``: most of the frame unlike any patch of the references. In an
  inspection this reads the detector's own nearest-reference-patch distance map (the query as
  compared, registered onto the first reference, the others in its frame): its 25th percentile (:func:`patch_distance`), so
  the check costs no vision-tower pass of its own, and a defect, however large, leaves the quarter
  of the frame it reads alone. Where there is no such map (a lot's images checked against each
  other), the global feature of the frozen vision tower (mean of the unit-norm patch features at
  128 px, normalised) far from every reference's.

Every statistic is relative to the references (their median), so a product that is itself plain,
dark or smooth is not flagged for being so. The thresholds keep every normal image of the bundled
benchmark and of ELPV's test split unflagged, with margin (``benchmarks/bench_sanity.py``; the
figures are in ``benchmarks/RESULTS.md``). A reference's profile is computed once and cached with it.

Usage::

    refs = [image_profile(None, r) for r in references]    # no tower: the product test reads the map
    reason = check_image(image_profile(None, query), refs, patch_dist=patch_distance(distance_map))
    reason = check_image(image_profile(tower, query), [image_profile(tower, r) for r in references])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from adcopilot.imaging import grey_level
from adcopilot.model.baseline import normalized_patch_features
from adcopilot.model.detector import to_batch
from adcopilot.model.focus import BLURRED_RATIO
from adcopilot.model.vision import PatchTower

BLANK = "blank image"
OVEREXPOSED = "overexposed"
UNDEREXPOSED = "underexposed"
BLURRED = "blurred"
NOT_PRODUCT = "not the reference product"

FEATURE_SIZE = 128  # the global feature needs no detail; a quarter of the 256 px tower's cost


@dataclass(frozen=True)
class ImageProfile:
    """Global statistics of one image at the model's size."""

    mean: float  # grey level in [0, 1]
    std: float  # grey-level contrast
    saturated: float  # share of pixels at >= 0.98
    sharpness: float  # mean |Laplacian| / contrast
    feature: np.ndarray | None  # (C,) unit-norm global feature of the vision tower; None without a tower


@dataclass(frozen=True)
class CheckRules:
    """Thresholds of :func:`check_image` (ratios are query / median of the references)."""

    blank_std: float = 0.01  # absolute contrast below which a frame is blank ...
    blank_ratio: float = 0.05  # ... or this share of the references' contrast
    blown_out: float = 0.4  # overexposed: this much more of the frame saturated than the references ...
    saturated_excess: float = 0.12  # ... or this much more and ...
    bright_ratio: float = 1.75  # ... this much brighter than the brightest reference (normal cells of
    # one product vary in brightness by 2x, with up to a third of a bright cell saturated)
    dark_ratio: float = 0.3  # underexposed: at most this brightness and ...
    dark_contrast_ratio: float = 0.3  # ... at most this contrast
    blur_ratio: float = BLURRED_RATIO  # blurred: sharpness below this share of the references'
    far_product: float = 0.5  # feature distance that is another product whatever else is seen
    other_product: float = 0.33  # feature distance beyond every normal image measured
    # The same two for the patch distance (:func:`patch_distance`): "other" halfway between the largest
    # normal image's and the smallest other product's (benchmarks/bench_sanity.py); "far" above most
    # heavily blurred frames, which the blur test names.
    far_patches: float = 0.45
    other_patches: float = 0.35


@torch.inference_mode()
def global_feature(tower: PatchTower, image: np.ndarray) -> np.ndarray:
    """(S, S, 3) float image -> (C,) unit-norm mean of its patch features at ``FEATURE_SIZE``."""
    small = cv2.resize(image, (FEATURE_SIZE, FEATURE_SIZE), interpolation=cv2.INTER_AREA)
    feats = normalized_patch_features(tower, to_batch([small]))  # (1, C, h, w)
    return F.normalize(feats[0].flatten(1).mean(1), dim=0).numpy()


def image_profile(tower: PatchTower | None, image: np.ndarray) -> ImageProfile:
    """The profile of an (S, S, 3) float image in [0, 1]; its global feature only with a ``tower``
    (a check that reads the detector's patch distances needs none)."""
    grey = np.ascontiguousarray(grey_level(image), dtype=np.float32)
    std = float(grey.std())
    lap = float(np.abs(cv2.Laplacian(grey, cv2.CV_32F)).mean())
    return ImageProfile(
        mean=float(grey.mean()),
        std=std,
        saturated=float((grey >= 0.98).mean()),
        sharpness=lap / (std + 1e-6),
        feature=global_feature(tower, image) if tower is not None else None,
    )


def feature_distance(query: ImageProfile, references: Sequence[ImageProfile]) -> float:
    """Cosine distance of the query's global feature to the nearest reference's."""
    if query.feature is None or any(r.feature is None for r in references):
        raise ValueError("the feature distance needs profiles made with a tower")
    return min(1.0 - float(query.feature @ r.feature) for r in references)


PATCH_STRIDE = 8  # the map is the stride-8 patch grid up-sampled: read at its patches' centres
PATCH_QUANTILE = 0.25  # the share of the frame a defect, however large, leaves to the product test


def patch_distance(distance: np.ndarray) -> float:
    """The query's distance from the references' patches as a whole: the 25th percentile of its
    (S, S) nearest-reference-patch cosine distance map (the detector's, in the frame it compared),
    read at the patch grid (every ``PATCH_STRIDE`` pixels: exactly the patches' values, 64x fewer)."""
    return float(np.quantile(distance[::PATCH_STRIDE, ::PATCH_STRIDE], PATCH_QUANTILE))


def check_image(
    query: ImageProfile,
    references: Sequence[ImageProfile],
    rules: CheckRules | None = None,
    patch_dist: float | None = None,
    brightest: float | None = None,
) -> str | None:
    """The reason the query is not an image of the references' product, or None when it passes.
    With ``patch_dist`` (:func:`patch_distance` of the query's map) the product test reads it, else
    the profiles' global features. ``brightest``: the mean brightness the overexposure test compares with
    (the brightest reference's by default; a reference checked against a set it belongs to gives the others')."""
    r = rules or CheckRules()
    ref_std = float(np.median([p.std for p in references]))
    ref_mean = float(np.median([p.mean for p in references]))
    ref_sat = float(np.median([p.saturated for p in references]))
    ref_sharp = float(np.median([p.sharpness for p in references]))
    # The absolute floor holds only where the references have contrast: a plain product stays inspectable.
    if query.std < r.blank_ratio * ref_std or (query.std < r.blank_std and ref_std >= 4 * r.blank_std):
        return BLANK
    excess = query.saturated - ref_sat
    brightest = max(p.mean for p in references) if brightest is None else brightest
    if excess >= r.blown_out or (excess >= r.saturated_excess and query.mean >= r.bright_ratio * brightest):
        return OVEREXPOSED
    if query.mean <= r.dark_ratio * ref_mean and query.std <= r.dark_contrast_ratio * ref_std:
        return UNDEREXPOSED
    if patch_dist is not None:
        distance, far, other = patch_dist, r.far_patches, r.other_patches
    else:
        distance, far, other = feature_distance(query, references), r.far_product, r.other_product
    # A far frame is another product before it is a blur (a smooth other product is not "blurred").
    if distance >= far:
        return NOT_PRODUCT
    if query.sharpness < r.blur_ratio * ref_sharp:
        return BLURRED
    if distance >= other:
        return NOT_PRODUCT
    return None
