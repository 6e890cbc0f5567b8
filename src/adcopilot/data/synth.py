"""Synthetic defects with exact masks, Perlin noise and nuisance jitter for stage-1 training.

:func:`add_defect` paints one defect of a given kind (crack, scratch, hole, pitting, stain, ...)
onto a normal image and returns the defective image and a mask that is *exactly* the set of
pixels that changed noticeably: the change is measured, thresholded, and every pixel below the
threshold is restored to its original value, so ``mask == (out != image).any(-1)`` always holds.
Greyscale inputs (three equal channels) stay greyscale. :func:`jitter` makes a second "normal
view" of the same product (pose, lighting, blur, sensor noise).

Usage::

    rng = np.random.default_rng(0)
    d = add_defect(image, rng, "crack", region=object_mask)
    d.image, d.mask, d.label          # (H, W, 3) uint8, (H, W) uint8 0/1, "crack"
    view2 = jitter(image, rng)        # same product, another shot
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from adcopilot.data import procedural
from adcopilot.data.noise import perlin_noise, smooth_noise
from adcopilot.errors import AdcopilotError

log = logging.getLogger(__name__)


#: Human-readable names (used as box labels and in captions).
LABELS: dict[str, str] = {
    "crack": "crack",
    "scratch": "scratch",
    "hole": "hole",
    "pit": "pitting",
    "stain": "stain",
    "contamination": "contamination",
    "missing": "missing material",
    "extra": "extra material",
    "color": "discoloration",
    "deformation": "deformation",
    "texture": "foreign texture",
    "cutpaste": "misplaced patch",
    "dark_region": "dark region",
    "line": "line defect",
}

#: A pixel counts as changed when some channel moved by at least this many grey levels.
MIN_CHANGE = 10
_MAX_TRIES = 6


@dataclass
class SynthDefect:
    """A defective image and the exact mask of what changed."""

    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) uint8 0/1
    kind: str
    label: str  # human-readable defect name
    params: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# shapes


def _blob_mask(shape: tuple[int, int], rng: np.random.Generator, cy: float, cx: float, ry: float,
               rx: float, roughness: float = 0.35, angle: float | None = None) -> np.ndarray:
    """Irregular filled blob (float32 0/1): an ellipse with a noisy radius."""
    h, w = shape
    n = 48
    theta = np.linspace(0, 2 * np.pi, n, endpoint=False)
    # Smooth random radius perturbation from a few low harmonics.
    pert = np.zeros(n)
    for k in range(1, 6):
        pert += rng.normal(0, roughness / k) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    r = np.clip(1.0 + pert, 0.3, 2.0)
    a = rng.uniform(0, np.pi) if angle is None else angle
    px = r * rx * np.cos(theta)
    py = r * ry * np.sin(theta)
    xs = cx + px * np.cos(a) - py * np.sin(a)
    ys = cy + px * np.sin(a) + py * np.cos(a)
    canvas = np.zeros((h, w), np.uint8)
    pts = np.stack([xs, ys], 1)
    cv2.fillPoly(canvas, [np.round(pts * 4).astype(np.int32)], 255, cv2.LINE_AA, shift=2)
    return canvas.astype(np.float32) / 255.0


def _random_walk(rng: np.random.Generator, y: float, x: float, length: float, step: float,
                 wiggle: float, angle: float | None = None) -> np.ndarray:
    """Polyline (N, 2) of (x, y) points: a random walk with persistent direction."""
    a = rng.uniform(0, 2 * np.pi) if angle is None else angle
    n = max(int(length / step), 2)
    turns = rng.normal(0, wiggle, n)
    angles = a + np.cumsum(turns)
    xs = x + np.concatenate([[0], np.cumsum(np.cos(angles[:-1]) * step)])
    ys = y + np.concatenate([[0], np.cumsum(np.sin(angles[:-1]) * step)])
    return np.stack([xs, ys], 1)


def _draw_lines(shape: tuple[int, int], lines: list[np.ndarray], thickness: int) -> np.ndarray:
    """Anti-aliased polylines -> float32 coverage in [0, 1]."""
    canvas = np.zeros(shape, np.uint8)
    for pts in lines:
        cv2.polylines(canvas, [np.round(pts * 4).astype(np.int32)], False, 255, max(int(thickness), 1),
                      cv2.LINE_AA, shift=2)
    return canvas.astype(np.float32) / 255.0


def _blend(img: np.ndarray, alpha: np.ndarray, colour: np.ndarray | float) -> np.ndarray:
    """img * (1 - alpha) + colour * alpha, alpha (H, W) broadcast over channels."""
    a = alpha[..., None]
    return img * (1 - a) + np.asarray(colour, np.float32) * a


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    hsv = np.array([[[rng.uniform(0, 180), rng.uniform(0.3, 1.0) * 255, rng.uniform(0.2, 1.0) * 255]]],
                   np.float32)
    rgb = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)[0, 0]
    return rgb.astype(np.float32) / 255.0


# ----------------------------------------------------------------------------------------------
# the defect painters: (img float32 (H,W,3), rng, ctx) -> new float32 image


@dataclass
class _Ctx:
    cy: float
    cx: float
    size: float  # characteristic size in pixels
    strength: float  # 0..1 contrast of the change
    region: np.ndarray | None
    background: np.ndarray  # (3,) colour of what lies behind the material
    params: dict[str, Any]
    full: np.ndarray | None = None  # the whole image (painters get a window around the defect)


def _local_mean(img: np.ndarray, c: _Ctx) -> np.ndarray:
    h, w = img.shape[:2]
    r = max(int(c.size), 2)
    y0, y1 = max(int(c.cy) - r, 0), min(int(c.cy) + r + 1, h)
    x0, x1 = max(int(c.cx) - r, 0), min(int(c.cx) + r + 1, w)
    return img[y0:y1, x0:x1].reshape(-1, 3).mean(0)


def _dark_or_bright(img: np.ndarray, c: _Ctx, rng: np.random.Generator, p_dark: float) -> np.ndarray:
    """A target colour darker or brighter than the surroundings by ``strength``."""
    m = _local_mean(img, c)
    lum = float(m.mean())
    dark = rng.random() < p_dark
    if lum < 0.2:
        dark = False
    elif lum > 0.85:
        dark = True
    c.params["polarity"] = "dark" if dark else "bright"
    if dark:
        return m * (1 - c.strength)
    return m + (1 - m) * c.strength


def _crack(img: np.ndarray, rng: np.random.Generator, c: _Ctx) -> np.ndarray:
    h, w = img.shape[:2]
    # Two random walks leaving the centre in opposite directions, plus a few branches.
    a = rng.uniform(0, 2 * np.pi)
    step, wiggle = max(c.size / 12, 1.5), rng.uniform(0.04, 0.4)
    lines = [_random_walk(rng, c.cy, c.cx, c.size * rng.uniform(1.0, 2.5), step, wiggle, angle=a + d)
             for d in (0.0, np.pi)]
    n_branch = int(rng.integers(0, 5))
    for _ in range(n_branch):
        trunk = lines[int(rng.integers(0, 2))]
        base = trunk[rng.integers(0, len(trunk))]
        lines.append(_random_walk(rng, base[1], base[0], c.size * rng.uniform(0.3, 1.0), step, 0.5))
    thick = int(rng.choice([1, 1, 2, 3])) if c.size > 12 else 1
    cov = _draw_lines((h, w), lines, thick)
    if rng.random() < 0.4:
        # A soft halo along the crack (as cracks look in electroluminescence images).
        halo = cv2.GaussianBlur(cov, (0, 0), rng.uniform(1.5, 4.0))
        cov = np.maximum(cov, np.clip(halo * rng.uniform(1.0, 3.0), 0, 1) * rng.uniform(0.3, 0.7))
        c.params["halo"] = True
    c.params.update(branches=n_branch, thickness=thick)
    return _blend(img, cov, _dark_or_bright(img, c, rng, 0.85))


def _scratch(img: np.ndarray, rng: np.random.Generator, c: _Ctx) -> np.ndarray:
    h, w = img.shape[:2]
    n = int(rng.choice([1, 1, 1, 2, 3, 5]))
    a = rng.uniform(0, np.pi)
    lines = []
    for i in range(n):
        length = c.size * rng.uniform(1.5, 4.0)
        off = (i - n / 2) * rng.uniform(2, 5)
        y = c.cy + off * np.cos(a)
        x = c.cx - off * np.sin(a)
        pts = _random_walk(rng, y - np.sin(a) * length / 2, x - np.cos(a) * length / 2, length,
                           max(length / 20, 1.0), 0.02, angle=a)
        lines.append(pts)
    thick = int(rng.choice([1, 1, 2]))
    cov = _draw_lines((h, w), lines, thick)
    # Scratches fade in and out along their length.
    fade = cv2.GaussianBlur(cov, (0, 0), max(c.size / 6, 1.0))
    fade = np.clip(fade / max(float(fade.max()), 1e-6) * 1.8, 0, 1)
    c.params.update(count=n, thickness=thick)
    return _blend(img, cov * fade, _dark_or_bright(img, c, rng, 0.35))


def _hole(img: np.ndarray, rng: np.random.Generator, c: _Ctx) -> np.ndarray:
    h, w = img.shape[:2]
    r = max(c.size / 2, 1.5)
    blob = _blob_mask((h, w), rng, c.cy, c.cx, r * rng.uniform(0.6, 1.0), r * rng.uniform(0.6, 1.0), 0.15)
    inner = c.background if rng.random() < 0.4 else np.full(3, rng.uniform(0.0, 0.15), np.float32)
    # A slightly shaded interior (depth), and a rim on one side lit, the other in shadow.
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    shade = 1.0 - 0.4 * np.clip(((yy - c.cy) + (xx - c.cx)) / (2 * r), -1, 1)
    interior = np.clip(inner[None, None, :] * shade[..., None] + 0.02, 0, 1)
    out = img * (1 - blob[..., None]) + interior * blob[..., None]
    ring = np.clip(cv2.dilate(blob, np.ones((3, 3), np.uint8)) - blob, 0, 1)
    out = _blend(out, ring * 0.5 * c.strength, _dark_or_bright(img, c, rng, 0.5))
    c.params.update(radius=float(r))
    return out


def _pit(img: np.ndarray, rng: np.random.Generator, c: _Ctx) -> np.ndarray:
    h, w = img.shape[:2]
    n = int(rng.integers(4, 30))
    canvas = np.zeros((h, w), np.uint8)
    spread = max(c.size / 2, 2.0)
    for _ in range(n):
        dy, dx = rng.normal(0, spread / 2, 2)
        rad = float(rng.uniform(0.6, max(1.2, min(3.5, c.size / 8))))
        cv2.circle(canvas, (int(round((c.cx + dx) * 4)), int(round((c.cy + dy) * 4))), max(int(rad * 4), 2), 255,
                   -1, cv2.LINE_AA, shift=2)
    cov = canvas.astype(np.float32) / 255.0
    c.params.update(count=n)
    return _blend(img, cov, _dark_or_bright(img, c, rng, 0.8))


def _stain(img: np.ndarray, rng: np.random.Generator, c: _Ctx) -> np.ndarray:
    h, w = img.shape[:2]
    r = max(c.size / 2, 2.0)
    blob = _blob_mask((h, w), rng, c.cy, c.cx, r * rng.uniform(0.5, 1.0), r * rng.uniform(0.5, 1.0), 0.45)
    soft = cv2.GaussianBlur(blob, (0, 0), max(r / 5, 0.8))
    # Tide-mark: stains are often darker at the rim.
    rim = np.clip(soft * (1 - soft) * 4, 0, 1) * rng.uniform(0, 0.6)
    alpha = np.clip(soft * c.strength * rng.uniform(0.5, 1.0) + rim * c.strength, 0, 1)
    if rng.random() < 0.5:
        colour = _random_colour(rng) * rng.uniform(0.3, 0.9)
        c.params["tint"] = "colour"
    else:
        colour = _dark_or_bright(img, c, rng, 0.8)
        c.params["tint"] = "shade"
    return _blend(img, alpha, colour)


def _contamination(img: np.ndarray, rng: np.random.Generator, c: _Ctx) -> np.ndarray:
    h, w = img.shape[:2]
    out = img.copy()
    colour = _random_colour(rng) if rng.random() < 0.5 else _dark_or_bright(img, c, rng, 0.6)
    style = rng.choice(["fibre", "specks", "clump"])
    if style == "fibre":
        lines = [_random_walk(rng, c.cy, c.cx, c.size * rng.uniform(1, 3), max(c.size / 15, 1.0), 0.25)
                 for _ in range(int(rng.integers(1, 3)))]
        cov = _draw_lines((h, w), lines, 1)
    elif style == "specks":
        canvas = np.zeros((h, w), np.uint8)
        for _ in range(int(rng.integers(3, 15))):
            dy, dx = rng.normal(0, c.size / 3, 2)
            pts = np.array([[c.cx + dx, c.cy + dy]]) + rng.normal(0, max(c.size / 15, 1.0), (5, 2))
            cv2.fillPoly(canvas, [np.round(pts * 4).astype(np.int32)], 255, cv2.LINE_AA, shift=2)
        cov = canvas.astype(np.float32) / 255.0
    else:
        r = max(c.size / 3, 1.5)
        cov = _blob_mask((h, w), rng, c.cy, c.cx, r, r * rng.uniform(0.4, 1.0), 0.6)
        tex = smooth_noise((h, w), rng, max(w / 3, 2))[..., None] * 0.3 - 0.15
        out = out + cov[..., None] * tex
    c.params.update(style=str(style))
    return _blend(out, cov * rng.uniform(0.7, 1.0), colour)


def _missing(img: np.ndarray, rng: np.random.Generator, c: _Ctx) -> np.ndarray:
    h, w = img.shape[:2]
    r = max(c.size / 2, 1.5)
    blob = _blob_mask((h, w), rng, c.cy, c.cx, r * rng.uniform(0.5, 1.0), r * rng.uniform(0.5, 1.0),
                      rng.uniform(0.2, 0.6))
    back = c.background[None, None, :] * (1 + smooth_noise((h, w), rng, 8)[..., None] * 0.1 - 0.05)
    out = img * (1 - blob[..., None]) + back * blob[..., None]
    # A thin shadow along the broken edge.
    edge = np.clip(cv2.dilate(blob, np.ones((3, 3), np.uint8)) - blob, 0, 1) * 0.4 * c.strength
    return _blend(out, edge, np.zeros(3, np.float32))


def _extra(img: np.ndarray, rng: np.random.Generator, c: _Ctx) -> np.ndarray:
    h, w = img.shape[:2]
    r = max(c.size / 2, 1.5)
    blob = _blob_mask((h, w), rng, c.cy, c.cx, r * rng.uniform(0.4, 1.0), r * rng.uniform(0.4, 1.0), 0.4)
    base = _local_mean(img, c) * rng.uniform(0.6, 1.4)
    if rng.random() < 0.3:
        base = _random_colour(rng)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    # Lit from the top left: a raised blob is brighter on that side.
    light = 1.0 + c.strength * 0.8 * np.clip(-((yy - c.cy) + (xx - c.cx)) / (2 * r), -1, 1)
    blob_col = np.clip(base[None, None, :] * light[..., None], 0, 1)
    soft = cv2.GaussianBlur(blob, (0, 0), 0.7)
    return img * (1 - soft[..., None]) + blob_col * soft[..., None]


def _color(img: np.ndarray, rng: np.random.Generator, c: _Ctx) -> np.ndarray:
    h, w = img.shape[:2]
    r = max(c.size / 2, 2.0)
    blob = _blob_mask((h, w), rng, c.cy, c.cx, r * rng.uniform(0.5, 1.0), r * rng.uniform(0.5, 1.0), 0.4)
    soft = cv2.GaussianBlur(blob, (0, 0), max(r / rng.uniform(3, 10), 0.6))
    gains = 1 + rng.uniform(-1, 1, 3) * c.strength * 1.2
    offset = rng.uniform(-1, 1, 3) * c.strength * 0.3
    changed = np.clip(img * gains + offset, 0, 1)
    return img * (1 - soft[..., None]) + changed * soft[..., None]


def _deformation(img: np.ndarray, rng: np.random.Generator, c: _Ctx) -> np.ndarray:
    h, w = img.shape[:2]
    sigma = max(c.size / 2, 2.0)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dy, dx = yy - c.cy, xx - c.cx
    g = np.exp(-(dx * dx + dy * dy) / (2 * sigma * sigma)).astype(np.float32)
    amp = sigma * (0.3 + 0.9 * c.strength)
    mode = rng.choice(["shift", "bulge", "twist"])
    if mode == "shift":
        a = rng.uniform(0, 2 * np.pi)
        mx, my = xx - g * amp * np.cos(a), yy - g * amp * np.sin(a)
    elif mode == "bulge":
        k = rng.choice([-1.0, 1.0]) * min(0.8, 0.3 + c.strength)
        mx, my = xx - g * k * dx, yy - g * k * dy
    else:
        t = rng.choice([-1.0, 1.0]) * (0.4 + c.strength)
        ca, sa = np.cos(t * g), np.sin(t * g)
        mx, my = c.cx + ca * dx - sa * dy, c.cy + sa * dx + ca * dy
    c.params.update(mode=str(mode))
    return cv2.remap(img, mx.astype(np.float32), my.astype(np.float32), cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REFLECT_101)


def _foreign_texture(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A random texture (H, W, 3) float32 unrelated to the image (DRAEM's anomaly source)."""
    h, w = shape
    style = rng.integers(0, 5)
    if style == 4:  # another procedural material
        category = str(rng.choice(list(procedural.TEXTURES)))
        img, _ = procedural.render(category, rng, max(h, w, 8))
        return img[:h, :w].astype(np.float32) / 255.0
    if style == 0:  # coloured fractal noise
        t = np.stack([perlin_noise((h, w), rng, max(min(h, w) / rng.uniform(2, 16), 1), 3) for _ in range(3)], -1)
    elif style == 1:  # stripes
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        a = rng.uniform(0, np.pi)
        f = rng.uniform(0.2, 1.2)
        s = 0.5 + 0.5 * np.sin((xx * np.cos(a) + yy * np.sin(a)) * f)
        t = s[..., None] * _random_colour(rng) + (1 - s[..., None]) * _random_colour(rng)
    elif style == 2:  # speckle
        t = cv2.GaussianBlur(rng.random((h, w, 3)).astype(np.float32), (0, 0), rng.uniform(0.5, 2.0))
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    else:  # two-colour cells
        n = perlin_noise((h, w), rng, max(min(h, w) / rng.uniform(4, 20), 1))
        s = (n > 0.5).astype(np.float32)[..., None]
        t = s * _random_colour(rng) + (1 - s) * _random_colour(rng)
    return t.astype(np.float32)


def _texture(img: np.ndarray, rng: np.random.Generator, c: _Ctx) -> np.ndarray:
    h, w = img.shape[:2]
    n = perlin_noise((h, w), rng, max(c.size / rng.uniform(1.0, 3.0), 1.0))
    window = _blob_mask((h, w), rng, c.cy, c.cx, c.size, c.size * rng.uniform(0.5, 1.0), 0.3)
    shape = ((n > rng.uniform(0.5, 0.65)).astype(np.float32) * window)
    if shape.sum() < 1:
        shape = window
    beta = float(np.clip(c.strength * 1.3, 0.15, 1.0))
    tex = _foreign_texture((h, w), rng)
    c.params.update(opacity=beta)
    return img * (1 - beta * shape[..., None]) + tex * beta * shape[..., None]


def _cutpaste(img: np.ndarray, rng: np.random.Generator, c: _Ctx) -> np.ndarray:
    h, w = img.shape[:2]
    src = img if c.full is None else c.full  # the patch may come from anywhere in the image
    fh, fw = src.shape[:2]
    scar = rng.random() < 0.35
    if scar:  # CutPaste-scar: a thin long strip
        pw, ph = max(int(c.size * rng.uniform(0.1, 0.25)), 2), max(int(c.size * rng.uniform(1.0, 2.0)), 3)
    else:
        pw, ph = max(int(c.size * rng.uniform(0.6, 1.2)), 2), max(int(c.size * rng.uniform(0.6, 1.2)), 2)
    pw, ph = min(pw, fw), min(ph, fh)
    sy, sx = int(rng.integers(0, fh - ph + 1)), int(rng.integers(0, fw - pw + 1))
    patch = src[sy : sy + ph, sx : sx + pw].copy()
    if rng.random() < 0.5:
        patch = np.clip(patch * rng.uniform(0.8, 1.2) + rng.uniform(-0.08, 0.08), 0, 1)
    angle = float(rng.uniform(-45, 45)) if (scar or rng.random() < 0.5) else 0.0
    # Place the patch centred at (cy, cx), rotated by `angle`.
    m = cv2.getRotationMatrix2D((pw / 2, ph / 2), angle, 1.0)
    m[0, 2] += c.cx - pw / 2
    m[1, 2] += c.cy - ph / 2
    warped = cv2.warpAffine(patch, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    cover = cv2.warpAffine(np.ones((ph, pw), np.float32), m, (w, h), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    c.params.update(scar=bool(scar), angle=angle, source=(sy, sx))
    return img * (1 - cover[..., None]) + warped


def _dark_region(img: np.ndarray, rng: np.random.Generator, c: _Ctx) -> np.ndarray:
    h, w = img.shape[:2]
    style = rng.choice(["blob", "edge"])
    if style == "edge":
        # A region cut off by a (slightly bent) line, as an inactive cell part behind a crack.
        a = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        d = (xx - c.cx) * np.cos(a) + (yy - c.cy) * np.sin(a)
        d += (smooth_noise((h, w), rng, 4) - 0.5) * c.size * 0.5
        window = _blob_mask((h, w), rng, c.cy, c.cx, c.size * 1.5, c.size * 1.5, 0.2)
        area = (d > 0).astype(np.float32) * window
    else:
        r = max(c.size / 2, 2.0)
        area = _blob_mask((h, w), rng, c.cy, c.cx, r, r * rng.uniform(0.5, 1.0), 0.3)
    soft = cv2.GaussianBlur(area, (0, 0), max(c.size / rng.uniform(6, 20), 0.6))
    factor = 1 - np.clip(c.strength * 1.2, 0.2, 0.95)
    c.params.update(style=str(style), factor=float(factor))
    return img * (1 - soft[..., None] * (1 - factor))


def _line(img: np.ndarray, rng: np.random.Generator, c: _Ctx) -> np.ndarray:
    h, w = img.shape[:2]
    length = c.size * rng.uniform(1.0, 4.0)
    a = float(rng.choice([0.0, np.pi / 2])) if rng.random() < 0.8 else float(rng.uniform(0, np.pi))
    p0 = np.array([c.cx - np.cos(a) * length / 2, c.cy - np.sin(a) * length / 2])
    p1 = np.array([c.cx + np.cos(a) * length / 2, c.cy + np.sin(a) * length / 2])
    thick = int(rng.choice([1, 1, 2, 3]))
    cov = _draw_lines((h, w), [np.stack([p0, p1])], thick)
    c.params.update(angle_deg=float(np.degrees(a)), thickness=thick)
    return _blend(img, cov, _dark_or_bright(img, c, rng, 0.6))


#: The defect painters by kind: (image, rng, context) -> the painted image.
PAINTERS: dict[str, Callable[[np.ndarray, np.random.Generator, _Ctx], np.ndarray]] = {
    "crack": _crack,
    "scratch": _scratch,
    "hole": _hole,
    "pit": _pit,
    "stain": _stain,
    "contamination": _contamination,
    "missing": _missing,
    "extra": _extra,
    "color": _color,
    "deformation": _deformation,
    "texture": _texture,
    "cutpaste": _cutpaste,
    "dark_region": _dark_region,
    "line": _line,
}
#: Every kind :func:`add_defect` paints, in a fixed order (a random kind is drawn by index).
DEFECT_KINDS: tuple[str, ...] = tuple(PAINTERS)


# ----------------------------------------------------------------------------------------------
# public entry points


def as_rgb_uint8(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Validate an (H, W), (H, W, 1) or (H, W, 3) uint8 array and return it as (H, W, 3)."""
    if not isinstance(image, np.ndarray):
        raise AdcopilotError(f"{name}: expected a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise AdcopilotError(f"{name}: expected dtype uint8, got {image.dtype}")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 3) or image.shape[0] < 1 or image.shape[1] < 1:
        raise AdcopilotError(f"{name}: expected shape (H, W, 3), got {image.shape}")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image)


def is_grey(image: np.ndarray) -> bool:
    """True when the three channels of an (H, W, 3) image are identical."""
    return bool(np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 0], image[..., 2]))


def _background_colour(img: np.ndarray, region: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    if region is not None and (~region).sum() >= 16:
        outside = img[~region]
        step = max(len(outside) // 4096, 1)  # a subsample is enough for a median
        return np.median(outside[::step], axis=0).astype(np.float32)
    # No background visible (a texture): a void is dark, or occasionally the opposite of the mean.
    if rng.random() < 0.75:
        return np.full(3, rng.uniform(0.0, 0.12), np.float32)
    return (1.0 - img[::4, ::4].reshape(-1, 3).mean(0)).astype(np.float32)


def _pick_centre(region: np.ndarray | None, h: int, w: int, rng: np.random.Generator,
                 prefer_edge: bool) -> tuple[float, float]:
    if region is None:
        return float(rng.uniform(0, h)), float(rng.uniform(0, w))
    pool = region
    if prefer_edge:
        edge = region & ~cv2.erode(region.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        if edge.any():
            pool = edge
    ys, xs = np.nonzero(pool)
    i = int(rng.integers(0, len(ys)))
    return float(ys[i]) + 0.5, float(xs[i]) + 0.5


def _fallback(img: np.ndarray, rng: np.random.Generator, c: _Ctx) -> np.ndarray:
    """A small disc of the opposite brightness: always a visible change."""
    h, w = img.shape[:2]
    colour = np.where(_local_mean(img, c) > 0.5, 0.0, 1.0).astype(np.float32)
    canvas = np.zeros((h, w), np.uint8)
    r = max(int(c.size / 4), 1)
    cv2.circle(canvas, (int(c.cx), int(c.cy)), r, 255, -1)
    return _blend(img, canvas.astype(np.float32) / 255.0, colour)


def add_defect(
    image: np.ndarray,
    rng: np.random.Generator,
    kind: str | None = None,
    *,
    region: np.ndarray | None = None,
    scale: float | None = None,
) -> SynthDefect:
    """Paint one synthetic defect on ``image`` and return it with its exact mask.

    Args:
        image: (H, W, 3) uint8 (grey (H, W) is accepted too).
        rng: the random generator (the result is a pure function of its state and the inputs).
        kind: one of :data:`DEFECT_KINDS`; random when None.
        region: optional (H, W) bool mask; the defect's pixels all lie inside it.
        scale: defect size as a fraction of min(H, W); random (log-uniform 0.03..0.35) when None.

    Raises:
        AdcopilotError: bad image, unknown kind, region of the wrong shape or empty.
    """
    img_u8 = as_rgb_uint8(image)
    h, w = img_u8.shape[:2]
    if kind is None:
        kind = str(rng.choice(DEFECT_KINDS))
    if kind not in PAINTERS:
        raise AdcopilotError(f"unknown defect kind {kind!r}; choose from {', '.join(DEFECT_KINDS)}")
    if region is not None:
        region = np.asarray(region)
        if region.shape != (h, w):
            raise AdcopilotError(f"region: shape {region.shape} does not match the image's {(h, w)}")
        region = region.astype(bool)
        if not region.any():
            raise AdcopilotError("region: empty (no pixel where the defect may lie)")
    grey = is_grey(img_u8)
    img = img_u8.astype(np.float32) / 255.0
    if scale is None:
        scale = float(np.exp(rng.uniform(np.log(0.03), np.log(0.35))))
    scale = float(scale)
    if not (scale > 0):
        raise AdcopilotError(f"scale must be positive, got {scale}")
    strength = float(rng.uniform(0.15, 0.9))
    background = _background_colour(img, region, rng)
    if grey:
        background = np.full(3, background.mean(), np.float32)
    painter = PAINTERS[kind]
    mask = np.zeros((h, w), bool)
    out_u8 = img_u8.copy()
    params: dict[str, Any] = {}
    for attempt in range(_MAX_TRIES + 1):
        boost = 1.4**attempt
        size = max(scale * min(h, w) * min(boost, 2.0), 2.0)
        cy, cx = _pick_centre(region, h, w, rng, prefer_edge=(kind == "missing" and rng.random() < 0.5))
        # Paint in a window around the centre (every painter stays within 4 sizes of it).
        r = int(4 * size) + 4
        y0, y1, x0, x1 = max(int(cy) - r, 0), min(int(cy) + r + 1, h), max(int(cx) - r, 0), min(int(cx) + r + 1, w)
        sub_region = None if region is None else region[y0:y1, x0:x1]
        c = _Ctx(cy - y0, cx - x0, size, min(strength * boost, 1.0), sub_region, background,
                 {"scale": scale, "strength": min(strength * boost, 1.0), "centre": (cy, cx)}, full=img)
        sub = img[y0:y1, x0:x1]
        out = painter(sub, rng, c) if attempt < _MAX_TRIES else _fallback(sub, rng, c)
        if grey:
            out = np.repeat(out.mean(axis=2, keepdims=True), 3, axis=2)
        sub_u8 = cv2.convertScaleAbs(np.maximum(out, 0).astype(np.float32), alpha=255.0)
        d = cv2.absdiff(sub_u8, img_u8[y0:y1, x0:x1])
        sub_mask = np.maximum(np.maximum(d[..., 0], d[..., 1]), d[..., 2]) >= MIN_CHANGE
        if sub_region is not None:
            sub_mask &= sub_region
        if sub_mask.any():
            # Restore every pixel outside the mask, so the mask is exactly the set of changed pixels.
            orig = img_u8[y0:y1, x0:x1]
            sub_u8 = np.where(sub_mask[..., None], sub_u8, orig)
            mask[y0:y1, x0:x1] = (sub_u8 != orig).any(axis=2)
            out_u8 = img_u8.copy()
            out_u8[y0:y1, x0:x1] = sub_u8
            params = c.params
            params["attempt"] = attempt
            if attempt == _MAX_TRIES:
                params["fallback"] = True
            break
        log.debug("defect %s left no visible change (attempt %d); retrying stronger", kind, attempt)
    return SynthDefect(image=out_u8, mask=mask.astype(np.uint8), kind=kind, label=LABELS[kind], params=params)


# ----------------------------------------------------------------------------------------------
# nuisance


def jitter_transform(
    shape: tuple[int, int], rng: np.random.Generator, *, max_shift: float = 0.04,
    max_rotate_deg: float = 4.0, max_scale: float = 0.04,
) -> np.ndarray:
    """A random (2, 3) similarity transform for an image of ``shape`` (about its centre)."""
    h, w = shape
    angle = float(rng.uniform(-max_rotate_deg, max_rotate_deg))
    s = float(1 + rng.uniform(-max_scale, max_scale))
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, s)
    m[0, 2] += float(rng.uniform(-max_shift, max_shift)) * w
    m[1, 2] += float(rng.uniform(-max_shift, max_shift)) * h
    return m


def warp(image: np.ndarray, m: np.ndarray, *, nearest: bool = False) -> np.ndarray:
    """Apply a (2, 3) affine to an image or mask (reflecting borders for images)."""
    h, w = image.shape[:2]
    if nearest:
        return cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                              borderValue=0)
    return cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def photometric(image: np.ndarray, rng: np.random.Generator, *, light: float = 0.15,
                noise: float = 0.02) -> np.ndarray:
    """Brightness, contrast, gamma, a soft illumination gradient, slight blur and sensor noise."""
    img_u8 = as_rgb_uint8(image)
    h, w = img_u8.shape[:2]
    grey = is_grey(img_u8)
    if light > 0:
        gamma = float(np.exp(rng.uniform(-light, light)))
        gain = 1 + rng.uniform(-light, light)
        bias = rng.uniform(-light, light) * 0.3
        # Gamma, gain and bias through a 256-entry table (much faster than per-pixel powers).
        table = (np.power(np.arange(256, dtype=np.float32) / 255.0, gamma) * gain + bias).astype(np.float32)
        x = cv2.LUT(img_u8, table)
        yy = np.linspace(-0.5, 0.5, h, dtype=np.float32)[:, None]
        xx = np.linspace(-0.5, 0.5, w, dtype=np.float32)[None, :]
        grad = 1 + (yy * np.float32(rng.uniform(-1, 1)) + xx * np.float32(rng.uniform(-1, 1))) * np.float32(light * 0.5)
        x *= grad[..., None]
    else:
        x = img_u8.astype(np.float32) / 255.0
    if rng.random() < 0.3 and min(h, w) >= 8:
        x = cv2.GaussianBlur(x, (0, 0), float(rng.uniform(0.3, 0.9)))
    sigma = float(rng.uniform(0, noise)) if noise > 0 else 0.0
    if sigma > 0:
        # OpenCV's generator is 3x faster than numpy's; seeding it from rng keeps the result
        # a pure function of rng (OpenCV's generator state is per thread).
        n = np.empty((h, w) if grey else (h, w, 3), np.float32)
        cv2.setRNGSeed(int(rng.integers(0, 2**31 - 1)))
        cv2.randn(n, 0.0, sigma)
        x += n[..., None] if grey else n
    # float -> uint8 with rounding and saturation (negatives clipped first: the cast takes |x|).
    return cv2.convertScaleAbs(np.maximum(x, 0, out=x), alpha=255.0)


def jitter(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    max_shift: float = 0.04,
    max_rotate_deg: float = 4.0,
    max_scale: float = 0.04,
    light: float = 0.15,
    noise: float = 0.02,
) -> np.ndarray:
    """Another "normal view" of the same product: pose, lighting, blur and sensor noise.

    (H, W, 3) uint8 in, (H, W, 3) uint8 out; greyscale stays greyscale.
    """
    img_u8 = as_rgb_uint8(image)
    m = jitter_transform(img_u8.shape[:2], rng, max_shift=max_shift, max_rotate_deg=max_rotate_deg,
                         max_scale=max_scale)
    return photometric(warp(img_u8, m), rng, light=light, noise=noise)
