"""What lot-level scoring keeps of a set of images: decoded in threads, bad files listed, each readable
image's patch features for mutual scoring, its global profile for the image check and, for a lot of aligned
parts, the tower's raw stage outputs the lot's PaDiM is fitted on.

Used by ``batch --mutual`` (:mod:`adcopilot.line.lot`) on the lot's queries and by the reference pool's
check (:mod:`adcopilot.line.pool_check`) on the references.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from adcopilot.api import Copilot
from adcopilot.errors import AdcopilotError
from adcopilot.imaging import load_image, to_float_array
from adcopilot.line.sources import LotItem
from adcopilot.model.detector import to_batch
from adcopilot.model.mutual import LotViews, MutualRecipe, lot_views
from adcopilot.model.padim import stretch_grey
from adcopilot.model.sanity import CheckRules, ImageProfile, check_image, image_profile
from adcopilot.model.vision import PatchTower

log = logging.getLogger(__name__)


@dataclass
class LotFeatures:
    """The readable images of a lot with what mutual scoring and the image check need."""

    items: list[LotItem]
    views: LotViews  # the recipe's patch features at stride 16 and the global features
    profiles: list[ImageProfile]
    skipped: list[tuple[str, str]]  # (key, reason) of the files that cannot be read
    # With ``keep_scales``: the raw stage outputs of every readable image as the recipe reads it, float16
    # ({"s8": (N, C8, S/8, S/8), "s16": (N, C16, S/16, S/16)}; about 140 kB an image at 256 px)
    scales: dict[str, torch.Tensor] | None = None


def lot_tower(copilot: Copilot) -> PatchTower:
    """The frozen vision tower whose patch features the lot is compared with."""
    det = copilot.detector
    tower = getattr(det, "fused_tower", None) or getattr(det, "tower", None)
    if tower is None:
        raise AdcopilotError(f"--mutual needs a model with a vision tower; '{copilot.model_name}' has none")
    return tower


def _decode(item: LotItem, size: int) -> np.ndarray | str:
    try:
        return to_float_array(load_image(item.path, name=str(item.path)), size)  # (S, S, 3)
    except AdcopilotError as exc:
        return str(exc)


def encode_lot(
    items: Sequence[LotItem], tower: PatchTower, size: int, recipe: MutualRecipe | None = None, workers: int = 2,
    chunk: int = 16, progress: bool = False, keep_scales: bool = False,
) -> LotFeatures:
    """Decode the lot (in threads) and keep each readable image's patch features and profile (and, with
    ``keep_scales``, the tower's raw stage outputs)."""
    good: list[LotItem] = []
    feats: list[LotViews] = []
    raw: list[dict[str, torch.Tensor]] = []
    profiles: list[ImageProfile] = []
    skipped: list[tuple[str, str]] = []
    with (
        ThreadPoolExecutor(max(1, workers), thread_name_prefix="lot-io") as pool,
        tqdm(total=len(items), unit="img", desc="features", disable=not progress, dynamic_ncols=True) as bar,
    ):
        for start in range(0, len(items), chunk):
            part = list(items[start : start + chunk])
            arrays = []
            for item, got in zip(part, pool.map(_decode, part, [size] * len(part)), strict=True):
                if isinstance(got, str):
                    skipped.append((item.key, got))
                    log.warning("skipped %s", got)
                    continue
                good.append(item)
                arrays.append(got)
                profiles.append(image_profile(tower, got))
            if arrays:  # the image check above reads the images as taken; the patch features, as the recipe says
                read = [stretch_grey(a) for a in arrays] if (recipe or MutualRecipe()).stretch else arrays
                with torch.inference_mode():
                    scales = tower.patch_features(to_batch(read))
                feats.append(lot_views(scales, recipe))
                if keep_scales:
                    raw.append({k: v.half() for k, v in scales.items()})
            bar.update(len(part))
    if len(good) < 2:
        raise AdcopilotError(f"--mutual needs a lot of two readable images or more, got {len(good)}")
    kept = {k: torch.cat([r[k] for r in raw]) for k in raw[0]} if raw else None
    return LotFeatures(good, LotViews.cat(feats), profiles, skipped, kept)


def lot_checks(profiles: Sequence[ImageProfile], rules: CheckRules | None) -> list[str | None]:
    """Each image's global check against every other image of the lot (None: it passes, or no rules:
    the check is off)."""
    if rules is None:
        return [None] * len(profiles)
    return [check_image(q, [r for j, r in enumerate(profiles) if j != i], rules) for i, q in enumerate(profiles)]
