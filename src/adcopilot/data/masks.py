"""Defect masks -> regions, tight boxes and measured descriptors.

Every fact the curation pipeline states about a defect's place, size, shape, count, brightness
or colour is measured here from the mask (and the image under it), never guessed.

Rules (thresholds are fields of :class:`MaskRules`):

1. Binarise: a pixel is defect when its value is above half the mask's maximum (0/1 and 0/255
   masks both work).
2. Fill holes: enclosed background inside a component becomes defect (a ring-shaped stain is
   one solid region, its box unchanged, its area the filled area).
3. Merge: components closer than ``merge_frac`` of the image diagonal (2%) are joined by a
   square dilation before labelling (8-connectivity), so a crack broken into pieces gives one
   region; touching components are one region anyway.
4. Drop specks: regions with fewer than ``max(min_pixels, min_area_frac * H * W)`` defect pixels
   (9 pixels, 0.005% of the image) are dropped, *unless every region is a speck*: then the
   largest is kept, so a labelled defect always has a box.
5. Each region's box is the tight box of its own defect pixels (not of the dilation), in pixel
   coordinates with ``x2``/``y2`` exclusive; regions are sorted by area, largest first.

Measurements (:func:`describe_regions`): area fraction; elongation (square root of the ratio of
the principal second moments: 1 for a disc or square, 5 for a 5:1 bar) and orientation of the
major axis (degrees in [0, 180), 0 = horizontal, 90 = vertical, 45 = rising to the right);
solidity (area / convex-hull area); the MMAD 3x3 grid cell of the box; mean grey level and
colour inside the region against a surrounding ring (width 2% of the diagonal, at least 3 px).

Usage::

    mask = load_mask("ground_truth/crack/000_mask.png", size=(1024, 1024))
    regions = mask_to_boxes(mask)              # [Region(bbox_2d=[x1, y1, x2, y2], area=..., ...)]
    facts = describe_regions(image, mask)      # {"count": 1, "size": "small", "regions": [...]}
"""

from __future__ import annotations

import colorsys
import os
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError
from scipy import ndimage

from adcopilot.errors import AdcopilotError
from adcopilot.geometry import region_name


class MaskError(AdcopilotError):
    """A mask file that cannot be used (missing, unreadable, wrong size)."""


@dataclass(frozen=True)
class MaskRules:
    """Thresholds of the mask -> regions rules (see the module docstring)."""

    fill_holes: bool = True
    merge_frac: float = 0.02  # of the image diagonal
    min_area_frac: float = 0.00005  # of the image area
    min_pixels: int = 9


#: Total defect area fraction below which a defect is "small", below which "medium", else "large".
SIZE_WORDS = ((0.005, "small"), (0.05, "medium"), (1.01, "large"))
#: Grey-level difference (0-255) to the surround from which a region is "darker"/"brighter".
BRIGHTNESS_DELTA = 15.0
#: Chroma difference (CIELAB a*b* distance) to the surround from which the colour "differs".
COLOUR_DELTA = 10.0
#: Elongation from which a region is "elongated" (line-like); solidity below which "irregular".
ELONGATED = 3.0
IRREGULAR = 0.6


@dataclass
class Region:
    """One defect region of a mask; ``bbox_2d`` is ``[x1, y1, x2, y2]`` with x2/y2 exclusive."""

    bbox_2d: list[int]
    area: int  # defect pixels (after hole filling)
    area_fraction: float  # area / image area
    centroid: tuple[float, float]  # (x, y) pixels
    grid: str  # MMAD 3x3 cell name of the box centre ("top left" ... "center" ...)
    elongation: float  # >= 1
    orientation_deg: float  # major axis, [0, 180), 0 = horizontal, 90 = vertical
    solidity: float  # area / convex hull area, (0, 1]
    touches_border: bool
    extra: dict = field(default_factory=dict)

    @property
    def shape(self) -> str:
        """"elongated", "irregular" or "compact", from the measured elongation and solidity."""
        if self.elongation >= ELONGATED:
            return "elongated"
        if self.solidity < IRREGULAR:
            return "irregular"
        return "compact"

    @property
    def orientation(self) -> str:
        """"horizontal", "vertical" or "diagonal"; "none" when the region is not elongated."""
        if self.elongation < 1.5:
            return "none"
        a = self.orientation_deg
        if a < 22.5 or a >= 157.5:
            return "horizontal"
        if 67.5 <= a < 112.5:
            return "vertical"
        return "diagonal"

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("extra")
        d.update(shape=self.shape, orientation=self.orientation, **self.extra)
        return d


def binarise(mask: np.ndarray) -> np.ndarray:
    """Any (H, W) mask (bool, 0/1, 0/255, float) -> (H, W) bool."""
    if mask.ndim == 3:
        mask = mask.max(axis=2)
    if mask.ndim != 2:
        raise MaskError(f"mask of shape {mask.shape} is not a (H, W) image")
    if mask.dtype == bool:
        return mask
    top = float(mask.max()) if mask.size else 0.0
    if top <= 0:
        return np.zeros(mask.shape, bool)
    return mask > top / 2.0


def load_mask(path: str | os.PathLike, size: tuple[int, int] | None = None) -> np.ndarray:
    """Read a mask image as (H, W) bool; ``size`` = the image's (w, h) it must match.

    Raises:
        MaskError: missing, unreadable, or of a size other than ``size``.
    """
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise MaskError(f"{p}: no such mask file")
    try:
        with Image.open(p) as img:
            img.load()
            arr = np.asarray(img.convert("L"))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise MaskError(f"{p}: unreadable mask ({exc})") from None
    if size is not None and (arr.shape[1], arr.shape[0]) != tuple(size):
        raise MaskError(
            f"{p}: mask is {arr.shape[1]}x{arr.shape[0]} but its image is {size[0]}x{size[1]}"
        )
    return binarise(arr)


def _moments(comp: np.ndarray) -> tuple[float, float]:
    """(elongation, orientation in degrees [0, 180)) of a bool component crop."""
    m = cv2.moments(comp.astype(np.uint8), binaryImage=True)
    if m["m00"] <= 0:
        return 1.0, 0.0
    # Covariance of pixel coordinates; + 1/12 is the variance of a unit pixel, so one-pixel-wide
    # lines get a finite elongation.
    cxx = m["mu20"] / m["m00"] + 1 / 12
    cyy = m["mu02"] / m["m00"] + 1 / 12
    cxy = m["mu11"] / m["m00"]
    tr, det = cxx + cyy, cxx * cyy - cxy * cxy
    disc = max(0.0, tr * tr / 4 - det)
    l1, l2 = tr / 2 + disc**0.5, max(tr / 2 - disc**0.5, 1e-9)
    elong = float((l1 / l2) ** 0.5)
    # Image y grows downwards; negate so 45 degrees means rising to the right.
    theta = -0.5 * np.degrees(np.arctan2(2 * cxy, cxx - cyy))
    return elong, float(theta % 180.0)


def _solidity(comp: np.ndarray, area: int) -> float:
    contours, _ = cv2.findContours(comp.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return 1.0
    hull = cv2.convexHull(np.concatenate(contours))
    # Contour areas are measured through pixel centres; add half the perimeter so a filled
    # rectangle has solidity 1.
    hull_area = cv2.contourArea(hull) + cv2.arcLength(hull, True) / 2 + 1
    return float(min(1.0, area / max(hull_area, 1.0)))


def _regions(binary: np.ndarray, rules: MaskRules) -> tuple[list[Region], np.ndarray]:
    """(regions largest first, hole-filled (H, W) bool mask) of a bool mask.

    Works on the crop around the defect pixels (padded by the merge distance), which gives the
    same result as the whole image and is much faster for small defects on large images.
    """
    h, w = binary.shape
    pts = cv2.findNonZero(binary.astype(np.uint8))
    if pts is None:
        return [], binary
    k = max(1, int(round(rules.merge_frac * float(np.hypot(h, w)))))
    bx, by, bw, bh = cv2.boundingRect(pts)
    pad = k + 1
    ox, oy = max(0, bx - pad), max(0, by - pad)
    crop = binary[oy : min(h, by + bh + pad), ox : min(w, bx + bw + pad)]
    if rules.fill_holes:
        crop = ndimage.binary_fill_holes(crop)
    filled = np.zeros_like(binary)
    filled[oy : oy + crop.shape[0], ox : ox + crop.shape[1]] = crop
    crop_u8 = crop.astype(np.uint8)
    merged = cv2.dilate(crop_u8, np.ones((k, k), np.uint8)) if k > 1 else crop_u8
    n, labels, stats, _ = cv2.connectedComponentsWithStats(merged, connectivity=8)
    found: list[Region] = []
    for i in range(1, n):
        x, y, cw, ch = (int(v) for v in stats[i, :4])
        comp = (labels[y : y + ch, x : x + cw] == i) & crop[y : y + ch, x : x + cw]
        ys, xs = np.nonzero(comp)
        if len(xs) == 0:
            continue
        comp = comp[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
        x1, y1 = ox + x + int(xs.min()), oy + y + int(ys.min())
        x2, y2 = ox + x + int(xs.max()) + 1, oy + y + int(ys.max()) + 1
        area = int(len(xs))
        elong, theta = _moments(comp)
        box = [x1, y1, x2, y2]
        found.append(
            Region(
                bbox_2d=box,
                area=area,
                area_fraction=area / float(h * w),
                centroid=(float(ox + x + xs.mean()), float(oy + y + ys.mean())),
                grid=region_name(box, w, h),
                elongation=round(elong, 3),
                orientation_deg=round(theta, 1),
                solidity=round(_solidity(comp, area), 3),
                touches_border=x1 == 0 or y1 == 0 or x2 == w or y2 == h,
            )
        )
    found.sort(key=lambda r: (-r.area, r.bbox_2d))
    min_area = max(rules.min_pixels, int(rules.min_area_frac * h * w))
    kept = [r for r in found if r.area >= min_area]
    return kept or found[:1], filled


def mask_to_boxes(mask: np.ndarray, rules: MaskRules | None = None) -> list[Region]:
    """(H, W) mask -> defect regions with tight boxes, largest first (rules in the module doc)."""
    return _regions(binarise(np.asarray(mask)), rules or MaskRules())[0]


def size_word(area_fraction: float) -> str:
    for limit, word in SIZE_WORDS:
        if area_fraction < limit:
            return word
    return SIZE_WORDS[-1][1]


def colour_name(rgb: tuple[float, float, float]) -> str:
    """A basic colour word for a mean RGB colour (0-255)."""
    r, g, b = (min(max(c / 255.0, 0.0), 1.0) for c in rgb)
    hue, sat, val = colorsys.rgb_to_hsv(r, g, b)
    if val < 0.2:
        return "black"
    if sat < 0.2:
        return "white" if val > 0.8 else "grey"
    deg = hue * 360
    if deg < 15 or deg >= 345:
        return "red" if val >= 0.45 else "brown"
    if deg < 45:
        return "orange" if val >= 0.6 else "brown"
    if deg < 70:
        return "yellow"
    if deg < 165:
        return "green"
    if deg < 255:
        return "blue"
    if deg < 300:
        return "purple"
    return "pink"


def _lab(rgb: np.ndarray) -> np.ndarray:
    px = np.clip(rgb, 0, 255).astype(np.float32).reshape(1, 1, 3) / 255.0
    return cv2.cvtColor(px, cv2.COLOR_RGB2LAB).reshape(3)


def _photometry(image: np.ndarray, binary: np.ndarray, region: Region, ring: int) -> dict:
    """Mean grey level and colour inside the region's pixels against a ring around them."""
    h, w = binary.shape
    x1, y1, x2, y2 = region.bbox_2d
    pad = ring + 2
    cx1, cy1, cx2, cy2 = max(0, x1 - pad), max(0, y1 - pad), min(w, x2 + pad), min(h, y2 + pad)
    inside = binary[cy1:cy2, cx1:cx2]
    # Only this region's pixels: the ones inside its own box.
    own = np.zeros_like(inside)
    own[y1 - cy1 : y2 - cy1, x1 - cx1 : x2 - cx1] = inside[y1 - cy1 : y2 - cy1, x1 - cx1 : x2 - cx1]
    grown = cv2.dilate(own.astype(np.uint8), np.ones((2 * ring + 1, 2 * ring + 1), np.uint8)) > 0
    around = grown & ~inside  # exclude every defect pixel from the surround
    crop = image[cy1:cy2, cx1:cx2].astype(np.float32)
    if not own.any() or not around.any():
        return {}
    rgb_in, rgb_out = crop[own].mean(axis=0), crop[around].mean(axis=0)
    grey = np.array([0.299, 0.587, 0.114], np.float32)
    delta = float(rgb_in @ grey - rgb_out @ grey)
    lab_in, lab_out = _lab(rgb_in), _lab(rgb_out)
    chroma_delta = float(np.hypot(*(lab_in[1:] - lab_out[1:])))
    if delta <= -BRIGHTNESS_DELTA:
        bright = "darker"
    elif delta >= BRIGHTNESS_DELTA:
        bright = "brighter"
    else:
        bright = "similar"
    return {
        "brightness_delta": round(delta, 1),
        "brightness": bright,
        "colour": colour_name(tuple(rgb_in)),
        "surround_colour": colour_name(tuple(rgb_out)),
        "colour_delta": round(chroma_delta, 1),
        "colour_differs": chroma_delta >= COLOUR_DELTA,
    }


def describe_regions(
    image: np.ndarray | Image.Image | None, mask: np.ndarray, rules: MaskRules | None = None
) -> dict:
    """Measured descriptors of a defect mask (and of the image under it, when given).

    Returns ``{"count", "area_fraction", "size", "image_size": [w, h], "regions": [...]}``; each
    region is :meth:`Region.to_dict` plus, with an image, ``brightness`` ("darker", "brighter",
    "similar"), ``brightness_delta``, ``colour``, ``surround_colour``, ``colour_delta`` and
    ``colour_differs``.
    """
    binary = binarise(np.asarray(mask))
    h, w = binary.shape
    regions, filled = _regions(binary, rules or MaskRules())
    arr = None
    if image is not None:
        arr = np.asarray(image.convert("RGB")) if isinstance(image, Image.Image) else np.asarray(image)
        if arr.ndim == 2:
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        if arr.shape[:2] != (h, w):
            raise MaskError(f"mask is {w}x{h} but its image is {arr.shape[1]}x{arr.shape[0]}")
    ring = max(3, int(round(0.02 * float(np.hypot(h, w)))))
    out = []
    for r in regions:
        if arr is not None:
            r.extra.update(_photometry(arr[:, :, :3], filled, r, ring))
        out.append(r.to_dict())
    total = float(sum(r.area for r in regions)) / float(h * w)
    return {
        "count": len(regions),
        "area_fraction": round(total, 6),
        "size": size_word(total) if regions else "none",
        "image_size": [w, h],
        "regions": out,
    }
