"""Seeded procedural NORMAL images: industrial textures and objects on a background.

Every image is drawn from numbers alone (no photos, no downloads), so it can train the shipped
model without licence questions. Textures (wood, fabric, brushed metal, carpet, mesh, tiles,
leather, granular, stone, solar cell, PCB) fill the frame and have no object mask; objects
(screw, nut, washer, bottle, pill, capsule, cable, gear, transistor) lie on a background and come
with their (H, W) bool mask. A *pair* is two normal views of the same instance: the same part
re-rendered with a small pose change, or two shifted crops of one texture, or (for materials whose
structure varies from piece to piece, ``VARYING``) sometimes two different pieces of one material.

Usage::

    rng = np.random.default_rng(0)
    image, region, category = random_normal(rng, 256)
    reference, query, query_region, category = random_normal_pair(rng, 256)
    image, region = render("screw", rng, 256)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

from adcopilot.data.noise import perlin_noise, smooth_noise
from adcopilot.errors import AdcopilotError

Params = dict[str, Any]

# ----------------------------------------------------------------------------------------------
# helpers


def _palette(rng: np.random.Generator, sat: tuple[float, float] = (0.1, 0.8),
             val: tuple[float, float] = (0.25, 0.95), hue: tuple[float, float] | None = None) -> np.ndarray:
    """A random RGB colour (3,) float32 in [0, 1] from an HSV range."""
    lo, hi = (0.0, 180.0) if hue is None else (float(hue[0]), float(hue[1]))
    h = rng.uniform(lo, hi)
    hsv = np.array([[[h, rng.uniform(*sat) * 255, rng.uniform(*val) * 255]]], np.float32)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32) / 255.0


def _mix(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Per-pixel blend of two colours: (H, W) t -> (H, W, 3)."""
    t = t[..., None]
    return a * (1 - t) + b * t


def _fill(canvas: np.ndarray, pts: np.ndarray, value: float | tuple = 1.0) -> None:
    cv2.fillPoly(canvas, [np.round(np.asarray(pts) * 16).astype(np.int32)], value, cv2.LINE_AA, shift=4)


def _circle(canvas: np.ndarray, cx: float, cy: float, r: float, value: float | tuple = 1.0,
            thickness: int = -1) -> None:
    cv2.circle(canvas, (int(round(cx * 16)), int(round(cy * 16))), max(int(round(r * 16)), 1), value,
               thickness, cv2.LINE_AA, shift=4)


def _line(canvas: np.ndarray, p0: tuple[float, float], p1: tuple[float, float], value: float | tuple,
          thickness: int) -> None:
    cv2.line(canvas, (int(round(p0[0] * 16)), int(round(p0[1] * 16))),
             (int(round(p1[0] * 16)), int(round(p1[1] * 16))), value, max(int(thickness), 1), cv2.LINE_AA,
             shift=4)


def _rot(pts: np.ndarray, angle: float, cx: float, cy: float) -> np.ndarray:
    """Rotate (N, 2) object-frame (x, y) points by ``angle`` radians and move them to (cx, cy)."""
    c, s = np.cos(angle), np.sin(angle)
    x, y = pts[:, 0], pts[:, 1]
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], 1)


def _grain(shape: tuple[int, int], rng: np.random.Generator, amount: float) -> np.ndarray:
    """Fine multiplicative grain (H, W, 1) around 1."""
    return (1 + (rng.random((*shape, 1), dtype=np.float32) - 0.5) * 2 * amount).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _grid(s: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel row and column coordinates (s, s) float32, cached (read-only)."""
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    yy.setflags(write=False)
    xx.setflags(write=False)
    return yy, xx


def _voronoi(s: int, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Voronoi cells of ``n`` random seeds: labels (s, s) int32 in [0, n) and a soft edge map."""
    seeds = np.ones((s, s), np.uint8)
    ys, xs = rng.integers(0, s, n), rng.integers(0, s, n)
    seeds[ys, xs] = 0
    _, labels = cv2.distanceTransformWithLabels(seeds, cv2.DIST_L2, 3, labelType=cv2.DIST_LABEL_PIXEL)
    labels = (labels - 1).astype(np.int32)  # labels count seeds from 1
    lab = labels.astype(np.float32)
    edge = (cv2.Laplacian(lab, cv2.CV_32F) != 0).astype(np.float32)
    return labels, cv2.GaussianBlur(edge, (0, 0), 0.7)


def _background(s: int, p: Params, rng: np.random.Generator) -> np.ndarray:
    """Plain or slightly textured background with a soft illumination gradient: (s, s, 3)."""
    yy = np.linspace(-0.5, 0.5, s, dtype=np.float32)[:, None]
    xx = np.linspace(-0.5, 0.5, s, dtype=np.float32)[None, :]
    light = 1 + p["bg_grad"][0] * yy + p["bg_grad"][1] * xx
    img = np.broadcast_to(p["bg"], (s, s, 3)) * light[..., None]
    if p["bg_tex"] > 0:
        img = img * (1 + (smooth_noise((s, s), rng, 24)[..., None] - 0.5) * p["bg_tex"])
    return img * _grain((s, s), rng, 0.03)


def _bg_params(rng: np.random.Generator, obj_colour: np.ndarray) -> Params:
    # A background that contrasts with the object's brightness.
    lum = float(obj_colour.mean())
    val = (0.05, 0.35) if lum > 0.5 else (0.55, 0.95)
    if rng.random() < 0.2:
        val = (0.2, 0.8)
    return {
        "bg": _palette(rng, (0.0, 0.5), val),
        "bg_grad": rng.uniform(-0.25, 0.25, 2).astype(np.float32),
        "bg_tex": float(rng.choice([0.0, 0.0, rng.uniform(0.05, 0.3)])),
    }


def _cylinder_shade(t: np.ndarray, spec: float) -> np.ndarray:
    """Shading across a cylinder: t in [-1, 1] across its width -> brightness factor."""
    t = np.clip(t, -1, 1)
    base = 0.35 + 0.65 * np.sqrt(1 - t * t)
    highlight = spec * np.exp(-((t + 0.35) ** 2) / 0.02)
    return base + highlight


# ----------------------------------------------------------------------------------------------
# textures: sample(rng) -> params; render(params, size, rng) -> (size, size, 3) float


def _s_wood(rng: np.random.Generator) -> Params:
    return {"c0": _palette(rng, (0.3, 0.8), (0.3, 0.6), (5, 25)), "c1": _palette(rng, (0.3, 0.7), (0.6, 0.95), (8, 28)),
            "freq": rng.uniform(0.1, 0.5), "angle": rng.uniform(0, np.pi), "warp": rng.uniform(2, 12)}


def _r_wood(p: Params, s: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = _grid(s)
    n = perlin_noise((s, s), rng, s / 3, 2)
    u = xx * np.cos(p["angle"]) + yy * np.sin(p["angle"])
    v = 0.5 + 0.5 * np.sin(u * p["freq"] + n * p["warp"])
    fine = smooth_noise((s, s), rng, s / 2) * 0.3
    return _mix(p["c0"], p["c1"], np.clip(v ** 1.5 * 0.8 + fine, 0, 1)) * _grain((s, s), rng, 0.04)


def _s_fabric(rng: np.random.Generator) -> Params:
    return {"c0": _palette(rng), "c1": _palette(rng), "period": rng.uniform(4, 12), "angle": rng.uniform(-0.3, 0.3),
            "two_tone": bool(rng.random() < 0.5)}


def _r_fabric(p: Params, s: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = _grid(s)
    a = p["angle"]
    u = (xx * np.cos(a) + yy * np.sin(a)) / p["period"]
    v = (-xx * np.sin(a) + yy * np.cos(a)) / p["period"]
    fu, fv = u - np.floor(u), v - np.floor(v)
    over = ((np.floor(u) + np.floor(v)) % 2).astype(np.float32)  # plain weave: which thread is on top
    warp_sh = np.sin(np.pi * fu)
    weft_sh = np.sin(np.pi * fv)
    sh = over * weft_sh + (1 - over) * warp_sh
    col = _mix(p["c0"], p["c1"] if p["two_tone"] else p["c0"] * 0.85, over)
    return col * (0.45 + 0.55 * sh)[..., None] * _grain((s, s), rng, 0.05)


def _s_metal(rng: np.random.Generator) -> Params:
    return {"c": _palette(rng, (0.0, 0.15), (0.45, 0.9)), "angle": rng.choice([0.0, 90.0, rng.uniform(0, 180)]),
            "streak": rng.uniform(0.1, 0.35), "length": rng.uniform(20, 80)}


def _r_metal(p: Params, s: int, rng: np.random.Generator) -> np.ndarray:
    n = rng.random((s, s), dtype=np.float32)
    k = int(p["length"])
    streaks = cv2.blur(n, (k, 1))
    streaks = (streaks - streaks.mean()) / (streaks.std() + 1e-6)
    m = cv2.getRotationMatrix2D((s / 2, s / 2), float(p["angle"]), 1.0)
    streaks = cv2.warpAffine(streaks, m, (s, s), borderMode=cv2.BORDER_REFLECT_101)
    sheen = perlin_noise((s, s), rng, s / 1.5) * 0.3 + 0.85
    return p["c"] * (sheen * (1 + streaks * p["streak"] * 0.3))[..., None]


def _s_carpet(rng: np.random.Generator) -> Params:
    return {"c0": _palette(rng, (0.2, 0.9), (0.2, 0.8)), "c1": _palette(rng, (0.2, 0.9), (0.2, 0.8)),
            "blur": rng.uniform(0.6, 1.6), "mix": rng.uniform(0.0, 0.5)}


def _r_carpet(p: Params, s: int, rng: np.random.Generator) -> np.ndarray:
    n = cv2.GaussianBlur(rng.random((s, s), dtype=np.float32), (0, 0), p["blur"])
    n = (n - n.mean()) / (n.std() + 1e-6)
    tufts = np.clip(0.5 + n * 0.25, 0, 1)
    blend = smooth_noise((s, s), rng, 6) * p["mix"]
    return _mix(p["c0"], p["c1"], blend) * (0.6 + 0.7 * tufts)[..., None]


def _s_mesh(rng: np.random.Generator) -> Params:
    return {"wire": _palette(rng, (0.0, 0.3), (0.5, 0.95)), "back": _palette(rng, (0.0, 0.4), (0.02, 0.35)),
            "period": rng.uniform(7, 22), "width": rng.uniform(0.15, 0.45), "angle": rng.uniform(0, np.pi / 2),
            "diag": bool(rng.random() < 0.3)}


def _r_mesh(p: Params, s: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = _grid(s)
    a = p["angle"]
    u = (xx * np.cos(a) + yy * np.sin(a)) / p["period"]
    v = (-xx * np.sin(a) + yy * np.cos(a)) / p["period"]
    du = np.abs(u - np.round(u))
    dv = np.abs(v - np.round(v))
    w = p["width"] / 2
    wu = np.clip(1 - du / w, 0, 1)
    wv = np.clip(1 - dv / w, 0, 1)
    wire = np.maximum(np.sqrt(wu), np.sqrt(wv))
    return _mix(p["back"], p["wire"], wire) * _grain((s, s), rng, 0.04)


def _s_tiles(rng: np.random.Generator) -> Params:
    return {"c": _palette(rng, (0.0, 0.6), (0.3, 0.95)), "grout": _palette(rng, (0.0, 0.2), (0.1, 0.9)),
            "w": rng.uniform(20, 70), "h": rng.uniform(20, 70), "gap": rng.uniform(1.5, 5),
            "offset": float(rng.choice([0.0, 0.5])), "var": rng.uniform(0.0, 0.12)}


def _r_tiles(p: Params, s: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = _grid(s)
    row = np.floor(yy / p["h"])
    xs = xx / p["w"] + row * p["offset"]
    col = np.floor(xs)
    fx, fy = (xs - col) * p["w"], yy - row * p["h"]
    gap = p["gap"] / 2
    edge = np.minimum(np.minimum(fx, p["w"] - fx), np.minimum(fy, p["h"] - fy))
    in_tile = np.clip((edge - gap) / 1.0, 0, 1)
    ids = ((row * 7919 + col * 104729) % 1000).astype(np.int32)
    tint = rng.normal(0, p["var"], 1000).astype(np.float32)[ids]
    tile = p["c"] * (1 + tint)[..., None] * (1 + (smooth_noise((s, s), rng, s / 8) - 0.5) * 0.1)[..., None]
    return p["grout"] * (1 - in_tile[..., None]) + tile * in_tile[..., None]


def _s_leather(rng: np.random.Generator) -> Params:
    return {"c": _palette(rng, (0.2, 0.8), (0.15, 0.75), (0, 30) if rng.random() < 0.6 else None),
            "cell": rng.uniform(4, 10), "depth": rng.uniform(0.2, 0.5)}


def _r_leather(p: Params, s: int, rng: np.random.Generator) -> np.ndarray:
    n = perlin_noise((s, s), rng, p["cell"], 2)
    ridges = 1 - np.abs(n - 0.5) * 2  # creases where the noise crosses its middle
    creases = np.clip((ridges - 0.75) * 4, 0, 1)
    pores = (rng.random((s, s)) < 0.01).astype(np.float32)
    pores = cv2.GaussianBlur(pores, (0, 0), 0.7) * 3
    shade = 1 - p["depth"] * creases - 0.2 * np.clip(pores, 0, 1)
    large = perlin_noise((s, s), rng, s / 2) * 0.2 + 0.9
    return p["c"] * (shade * large)[..., None]


def _s_granular(rng: np.random.Generator) -> Params:
    return {"c0": _palette(rng, (0.0, 0.6), (0.2, 0.8)), "c1": _palette(rng, (0.0, 0.6), (0.3, 0.95)),
            "density": rng.uniform(0.2, 0.7), "r": rng.uniform(1.0, 3.5)}


def _r_granular(p: Params, s: int, rng: np.random.Generator) -> np.ndarray:
    # Grains: blobs of a fine noise above a threshold, each with its own brightness and a dark rim.
    g = smooth_noise((s, s), rng, s / p["r"])
    thr = 1 - p["density"] * 0.8
    grain = np.clip((g - thr) * 12, 0, 1)
    shade = 0.7 + 0.6 * smooth_noise((s, s), rng, s / p["r"] / 1.5)
    img = _mix(p["c0"], p["c1"], grain) * (1 + (shade - 1) * grain)[..., None]
    return img * _grain((s, s), rng, 0.05)


def _s_stone(rng: np.random.Generator) -> Params:
    return {"c0": _palette(rng, (0.0, 0.35), (0.2, 0.6)), "c1": _palette(rng, (0.0, 0.35), (0.5, 0.95)),
            "scale": rng.uniform(15, 80), "veins": bool(rng.random() < 0.5)}


def _r_stone(p: Params, s: int, rng: np.random.Generator) -> np.ndarray:
    n = perlin_noise((s, s), rng, p["scale"], 4)
    t = np.clip((n - 0.5) * 2.5 + 0.5, 0, 1)
    img = _mix(p["c0"], p["c1"], t)
    if p["veins"]:
        v = perlin_noise((s, s), rng, p["scale"] * 1.5, 3)
        vein = np.clip(1 - np.abs(v - 0.5) * 30, 0, 1)
        img = img * (1 - 0.4 * vein[..., None])
    return img * _grain((s, s), rng, 0.06)


def _s_solar(rng: np.random.Generator) -> Params:
    return {"poly": bool(rng.random() < 0.5), "busbars": int(rng.choice([2, 3, 4, 5])),
            "fingers": rng.uniform(5, 10), "level": rng.uniform(0.35, 0.75),
            "corners": bool(rng.random() < 0.5), "colour": bool(rng.random() < 0.15),
            "bus_dark": bool(rng.random() < 0.8), "grain_scale": rng.uniform(6, 25),
            "grain_edge": rng.uniform(0.0, 0.3), "grain_contrast": rng.uniform(0.1, 0.4)}


def _r_solar(p: Params, s: int, rng: np.random.Generator) -> np.ndarray:
    """Electroluminescence-like cell: busbars, fingers, grain (poly) or smooth (mono), cut corners."""
    yy, xx = _grid(s)
    level = np.full((s, s), p["level"], np.float32)
    if p["poly"]:
        # Crystal grains: Voronoi cells of different brightness with darker boundaries.
        labels, edges = _voronoi(s, rng, int(s * s / p["grain_scale"] ** 2 / 4) + 4)
        bright = rng.uniform(1 - p["grain_contrast"], 1.05, labels.max() + 1).astype(np.float32)
        g = perlin_noise((s, s), rng, p["grain_scale"] * 2)
        level = level * bright[labels] * (1 - p["grain_edge"] * edges) + (g - 0.5) * 0.08
    else:
        r = np.sqrt((xx - s / 2) ** 2 + (yy - s / 2) ** 2) / s
        level = level * (1.05 - 0.4 * r * r) * (1 + (smooth_noise((s, s), rng, 6) - 0.5) * 0.15)
    # Fingers: thin darker horizontal lines.
    fy = yy / p["fingers"]
    finger = np.clip(1 - np.abs(fy - np.round(fy)) * p["fingers"] / 1.2, 0, 1)
    level = level * (1 - 0.25 * finger)
    # Busbars: vertical bands.
    for i in range(p["busbars"]):
        x = s * (i + 0.5) / p["busbars"]
        band = np.clip(1 - np.abs(xx - x) / max(s / 80, 1.5), 0, 1)
        level = level * (1 - 0.7 * band) if p["bus_dark"] else level + 0.4 * band
    if p["corners"]:
        c = s * 0.09
        corner = ((xx + yy < c) | ((s - xx) + yy < c) | (xx + (s - yy) < c) | ((s - xx) + (s - yy) < c))
        level = np.where(corner, 0.03, level)
    img = np.repeat(level[..., None], 3, axis=2) * _grain((s, s), rng, 0.06)
    if p["colour"]:  # a blue tint, as in photographs of modules
        img = img * np.array([0.45, 0.6, 1.0], np.float32)
    return img


def _s_pcb(rng: np.random.Generator) -> Params:
    board = _palette(rng, (0.4, 0.9), (0.15, 0.5), rng.choice([(50, 80), (100, 130), (0, 10), (20, 30)]))
    return {"board": board, "copper": _palette(rng, (0.3, 0.7), (0.6, 0.95), (10, 30)), "n": int(rng.integers(8, 30)),
            "width": rng.uniform(1.5, 5), "layout": int(rng.integers(0, 2**31)), "pads": int(rng.integers(5, 25))}


def _r_pcb(p: Params, s: int, rng: np.random.Generator) -> np.ndarray:
    img = np.broadcast_to(p["board"], (s, s, 3)).copy()
    lay = np.random.default_rng(p["layout"])  # the layout is part of the instance, not the view
    scale = s / 320.0
    copper = tuple(float(v) for v in p["copper"])
    for _ in range(p["n"]):
        x, y = lay.uniform(0, s), lay.uniform(0, s)
        pts = [(x, y)]
        for _ in range(int(lay.integers(2, 5))):
            if lay.random() < 0.5:
                x += lay.uniform(-120, 120) * scale
            else:
                y += lay.uniform(-120, 120) * scale
            if lay.random() < 0.3:  # 45 degree joints
                d = lay.uniform(-40, 40) * scale
                x, y = x + d, y + abs(d)
            pts.append((x, y))
        cv2.polylines(img, [np.round(np.array(pts) * 16).astype(np.int32)], False, copper,
                      max(int(p["width"] * scale), 1), cv2.LINE_AA, shift=4)
        _circle(img, pts[-1][0], pts[-1][1], p["width"] * 1.3 * scale, copper)
        _circle(img, pts[-1][0], pts[-1][1], p["width"] * 0.5 * scale, (0.05, 0.05, 0.05))
    for _ in range(p["pads"]):
        x, y = lay.uniform(0, s), lay.uniform(0, s)
        w, h = lay.uniform(4, 14) * scale, lay.uniform(4, 14) * scale
        _fill(img, np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]]), tuple(float(v) for v in np.clip(p["copper"] * 1.1, 0, 1)))
    return img * _grain((s, s), rng, 0.04)


def _s_label(rng: np.random.Generator) -> Params:
    return {"paper": _palette(rng, (0.0, 0.3), (0.75, 1.0)), "ink": _palette(rng, (0.0, 0.9), (0.0, 0.45)),
            "rows": int(rng.integers(4, 12)), "text": int(rng.integers(0, 2**31)), "barcode": bool(rng.random() < 0.5),
            "font": int(rng.choice([0, 1, 2, 3])), "bold": int(rng.choice([1, 1, 2]))}


def _r_label(p: Params, s: int, rng: np.random.Generator) -> np.ndarray:
    """A printed label: rows of characters and an optional barcode (print defects show here)."""
    # putText draws on 8-bit images only.
    img = np.broadcast_to(np.round(p["paper"] * 255).astype(np.uint8), (s, s, 3)).copy()
    lay = np.random.default_rng(p["text"])
    ink = tuple(float(v) * 255 for v in p["ink"])
    chars = "ABCDEFGHJKLMNPRSTUVWXYZ0123456789-/."
    row_h = s / (p["rows"] + 1)
    font_scale = row_h / 40.0
    for r in range(p["rows"]):
        n = int(lay.integers(4, 22))
        txt = "".join(lay.choice(list(chars), n))
        y = int((r + 1) * row_h)
        cv2.putText(img, txt, (int(s * 0.05), y), p["font"], font_scale, ink, max(int(p["bold"] * s / 256), 1),
                    cv2.LINE_AA)
    if p["barcode"]:
        x = s * 0.55
        widths = lay.integers(1, 4, 40) * max(s / 256, 0.5)
        for k, bw in enumerate(widths):
            if k % 2 == 0:
                _fill(img, np.array([[x, s * 0.6], [x + bw, s * 0.6], [x + bw, s * 0.9], [x, s * 0.9]]), ink)
            x += bw
            if x > s * 0.95:
                break
    return img.astype(np.float32) / 255.0 * _grain((s, s), rng, 0.03)


def _s_perforated(rng: np.random.Generator) -> Params:
    return {"sheet": _palette(rng, (0.0, 0.3), (0.35, 0.9)), "hole": _palette(rng, (0.0, 0.3), (0.0, 0.3)),
            "pitch": rng.uniform(10, 28), "r": rng.uniform(0.2, 0.4), "slot": bool(rng.random() < 0.3),
            "stagger": bool(rng.random() < 0.5)}


def _r_perforated(p: Params, s: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = _grid(s)
    row = np.floor(yy / p["pitch"])
    xs = xx / p["pitch"] + (0.5 * (row % 2) if p["stagger"] else 0)
    u = xs - np.floor(xs) - 0.5
    v = yy / p["pitch"] - row - 0.5
    if p["slot"]:
        u = np.maximum(np.abs(u) - 0.15, 0)
    d = np.sqrt(u * u + v * v)
    hole = np.clip((p["r"] - d) * p["pitch"], 0, 1)
    sheen = 0.85 + 0.3 * perlin_noise((s, s), rng, s / 2)
    return _mix(p["sheet"] * sheen[..., None], p["hole"], hole) * _grain((s, s), rng, 0.04)


def _s_zipper(rng: np.random.Generator) -> Params:
    return {"tape": _palette(rng, (0.1, 0.9), (0.1, 0.8)), "teeth": _palette(rng, (0.0, 0.5), (0.3, 0.95)),
            "pitch": rng.uniform(8, 16), "width": rng.uniform(0.15, 0.3), "vertical": bool(rng.random() < 0.5)}


def _r_zipper(p: Params, s: int, rng: np.random.Generator) -> np.ndarray:
    """A closed zipper: fabric tape on both sides, interlocking teeth down the middle."""
    yy, xx = _grid(s)
    if not p["vertical"]:
        yy, xx = xx, yy
    half = p["width"] * s / 2
    dx = xx - s / 2
    phase = yy / p["pitch"]
    side = np.where(dx < 0, 0.0, 0.5)  # teeth from the two sides alternate
    f = (phase + side) - np.floor(phase + side)
    tooth = (np.abs(dx) < half) & (f < 0.55) & ((dx < 0) | (dx > -half)) & ((dx > -half) & (dx < half))
    tooth = tooth & (np.where(dx < 0, -dx, dx) < half * (0.6 + 0.4 * np.sin(np.pi * f / 0.55)))
    weave = 0.85 + 0.15 * np.sin(xx * 1.7) * np.sin(yy * 1.7)
    tape = p["tape"] * weave[..., None]
    shade = 0.7 + 0.3 * np.sin(np.pi * np.clip(f / 0.55, 0, 1))
    img = np.where(tooth[..., None], p["teeth"] * shade[..., None], tape)
    return img * _grain((s, s), rng, 0.04)


# ----------------------------------------------------------------------------------------------
# objects: sample(rng) -> params; render(params, size, pose, rng) -> (image (s,s,3) float, mask bool)
# pose = (dx, dy, angle) in fractions of the size and radians.


def _metal(rng: np.random.Generator) -> np.ndarray:
    return _palette(rng, (0.0, 0.25), (0.45, 0.95), (10, 30) if rng.random() < 0.3 else None)


def _obj_base(rng: np.random.Generator, colour: np.ndarray) -> Params:
    p = _bg_params(rng, colour)
    p.update(colour=colour, size=rng.uniform(0.55, 0.85), surface=int(rng.integers(0, 2**31)))
    return p


def _s_screw(rng: np.random.Generator) -> Params:
    p = _obj_base(rng, _metal(rng))
    p.update(width=rng.uniform(0.06, 0.12), head=rng.uniform(1.5, 2.2), pitch=rng.uniform(0.012, 0.03),
             angle=rng.uniform(0, 2 * np.pi))
    return p


def _r_screw(p: Params, s: int, pose: tuple[float, float, float], rng: np.random.Generator):
    img = _background(s, p, rng)
    cx, cy = s * (0.5 + pose[0]), s * (0.5 + pose[1])
    a = p["angle"] + pose[2]
    length, half = p["size"] * s, p["width"] * s / 2
    head_len, head_half = length * 0.12, half * p["head"]
    x0 = -length / 2
    shaft = np.array([[x0 + head_len, -half], [length / 2 - half * 2, -half], [length / 2, 0],
                      [length / 2 - half * 2, half], [x0 + head_len, half]])
    head = np.array([[x0, -head_half * 0.85], [x0 + head_len * 0.3, -head_half], [x0 + head_len, -head_half],
                     [x0 + head_len, head_half], [x0 + head_len * 0.3, head_half], [x0, head_half * 0.85]])
    mask = np.zeros((s, s), np.float32)
    _fill(mask, _rot(shaft, a, cx, cy))
    _fill(mask, _rot(head, a, cx, cy))
    yy, xx = _grid(s)
    along = (xx - cx) * np.cos(a) + (yy - cy) * np.sin(a)
    across = -(xx - cx) * np.sin(a) + (yy - cy) * np.cos(a)
    in_head = along < x0 + head_len
    t = np.where(in_head, across / head_half, across / half)
    shade = _cylinder_shade(t, 0.5)
    thread = 0.5 + 0.5 * np.sin((along + across * 0.4) / (p["pitch"] * s) * 2 * np.pi)
    shade = np.where(in_head, shade, shade * (0.65 + 0.35 * thread))
    obj = p["colour"] * shade[..., None] * _grain((s, s), np.random.default_rng(p["surface"]), 0.05)
    return img * (1 - mask[..., None]) + obj * mask[..., None], mask > 0.5


def _s_nut(rng: np.random.Generator) -> Params:
    p = _obj_base(rng, _metal(rng))
    p.update(sides=int(rng.choice([6, 6, 8, 0])), hole=rng.uniform(0.3, 0.6), angle=rng.uniform(0, np.pi),
             chamfer=rng.uniform(0.0, 0.15), lobes=int(rng.choice([0, 0, 4, 5])))
    return p


def _r_nut(p: Params, s: int, pose: tuple[float, float, float], rng: np.random.Generator):
    """Hex nut, octagon, washer (sides=0) or a lobed metal nut, seen from above."""
    img = _background(s, p, rng)
    cx, cy = s * (0.5 + pose[0]), s * (0.5 + pose[1])
    a = p["angle"] + pose[2]
    r = p["size"] * s / 2
    mask = np.zeros((s, s), np.float32)
    if p["sides"] == 0:
        _circle(mask, cx, cy, r)
    else:
        th = np.arange(p["sides"]) * 2 * np.pi / p["sides"]
        _fill(mask, _rot(np.stack([np.cos(th), np.sin(th)], 1) * r, a, cx, cy))
    for k in range(p["lobes"]):
        th = a + k * 2 * np.pi / p["lobes"]
        _circle(mask, cx + np.cos(th) * r * 0.95, cy + np.sin(th) * r * 0.95, r * 0.22)
    hole = np.zeros((s, s), np.float32)
    _circle(hole, cx, cy, r * p["hole"])
    mask = np.clip(mask - hole, 0, 1)
    yy, xx = _grid(s)
    rad = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) / r
    ang = np.arctan2(yy - cy, xx - cx)
    # Brushed radial sheen plus a chamfer ring near the hole.
    shade = 0.75 + 0.25 * np.cos(ang - 0.8) * np.clip(rad, 0, 1)
    shade += 0.25 * np.clip(1 - np.abs(rad - p["hole"] - p["chamfer"]) * 12, 0, 1)
    obj = p["colour"] * shade[..., None] * _grain((s, s), np.random.default_rng(p["surface"]), 0.06)
    out = img * (1 - mask[..., None]) + obj * mask[..., None]
    # Threads inside the hole are in shadow.
    return out * (1 - 0.5 * hole[..., None] * (rad < p["hole"])[..., None]), mask > 0.5


def _s_bottle(rng: np.random.Generator) -> Params:
    glass = _palette(rng, (0.2, 0.8), (0.15, 0.6), rng.choice([(10, 25), (40, 80), (0, 180)]))
    p = _obj_base(rng, glass)
    p.update(lip=rng.uniform(0.08, 0.18), neck=rng.uniform(0.3, 0.55), rings=int(rng.integers(1, 4)))
    return p


def _r_bottle(p: Params, s: int, pose: tuple[float, float, float], rng: np.random.Generator):
    img = _background(s, p, rng)
    cx, cy = s * (0.5 + pose[0]), s * (0.5 + pose[1])
    r = p["size"] * s / 2 * 1.1
    yy, xx = _grid(s)
    rad = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) / r
    mask = np.zeros((s, s), np.float32)
    _circle(mask, cx, cy, r)
    # Concentric structure: outer glass, bright lip ring, dark opening with a gradient.
    shade = 0.6 + 0.4 * np.cos(rad * np.pi * (1 + p["rings"])) ** 2
    lip = np.clip(1 - np.abs(rad - p["neck"] - p["lip"]) / p["lip"] * 2, 0, 1)
    opening = np.clip((p["neck"] - rad) / 0.05, 0, 1)
    obj = p["colour"][None, None, :] * shade[..., None] + lip[..., None] * 0.35
    inside = p["colour"][None, None, :] * (0.15 * (0.5 + rad / p["neck"]))[..., None]
    obj = obj * (1 - opening[..., None]) + inside * opening[..., None]
    obj = obj * _grain((s, s), np.random.default_rng(p["surface"]), 0.03)
    return img * (1 - mask[..., None]) + obj * mask[..., None], mask > 0.5


def _s_pill(rng: np.random.Generator) -> Params:
    p = _obj_base(rng, _palette(rng, (0.0, 0.3), (0.75, 0.98)))
    p.update(aspect=rng.uniform(0.4, 0.75), angle=rng.uniform(0, np.pi), specks=int(rng.choice([0, 20, 60])),
             speck_colour=_palette(rng, (0.5, 1.0), (0.4, 0.9)), groove=bool(rng.random() < 0.5))
    return p


def _r_pill(p: Params, s: int, pose: tuple[float, float, float], rng: np.random.Generator):
    img = _background(s, p, rng)
    cx, cy = s * (0.5 + pose[0]), s * (0.5 + pose[1])
    a = p["angle"] + pose[2]
    rx, ry = p["size"] * s / 2, p["size"] * s / 2 * p["aspect"]
    mask = np.zeros((s, s), np.float32)
    cv2.ellipse(mask, (int(cx * 16), int(cy * 16)), (int(rx * 16), int(ry * 16)), float(np.degrees(a)), 0, 360,
                1.0, -1, cv2.LINE_AA, shift=4)
    yy, xx = _grid(s)
    u = ((xx - cx) * np.cos(a) + (yy - cy) * np.sin(a)) / rx
    v = (-(xx - cx) * np.sin(a) + (yy - cy) * np.cos(a)) / ry
    dome = np.sqrt(np.clip(1 - u * u - v * v, 0, 1))
    shade = 0.7 + 0.3 * dome
    if p["groove"]:
        shade = shade * (1 - 0.25 * np.clip(1 - np.abs(u) * 40, 0, 1))
    obj = p["colour"] * shade[..., None]
    if p["specks"]:
        lay = np.random.default_rng(p["surface"])
        sp = np.zeros((s, s), np.float32)
        for _ in range(p["specks"]):
            uu, vv = lay.uniform(-0.9, 0.9, 2)
            if uu * uu + vv * vv < 0.8:
                x = cx + uu * rx * np.cos(a) - vv * ry * np.sin(a)
                y = cy + uu * rx * np.sin(a) + vv * ry * np.cos(a)
                _circle(sp, x, y, lay.uniform(0.5, 1.6) * s / 256)
        obj = _mix(obj, p["speck_colour"], sp * 0.8)
    return img * (1 - mask[..., None]) + obj * mask[..., None], mask > 0.5


def _s_capsule(rng: np.random.Generator) -> Params:
    p = _obj_base(rng, _palette(rng, (0.3, 0.9), (0.5, 0.95)))
    p.update(other=_palette(rng, (0.0, 0.9), (0.4, 0.95)), aspect=rng.uniform(0.3, 0.45),
             angle=rng.uniform(-0.3, 0.3) + float(rng.choice([0, np.pi / 2])), mark=bool(rng.random() < 0.6))
    return p


def _r_capsule(p: Params, s: int, pose: tuple[float, float, float], rng: np.random.Generator):
    img = _background(s, p, rng)
    cx, cy = s * (0.5 + pose[0]), s * (0.5 + pose[1])
    a = p["angle"] + pose[2]
    half_len, r = p["size"] * s / 2, p["size"] * s / 2 * p["aspect"]
    mask = np.zeros((s, s), np.float32)
    p0 = (cx - np.cos(a) * (half_len - r), cy - np.sin(a) * (half_len - r))
    p1 = (cx + np.cos(a) * (half_len - r), cy + np.sin(a) * (half_len - r))
    _line(mask, p0, p1, 1.0, int(2 * r))
    _circle(mask, *p0, r)
    _circle(mask, *p1, r)
    yy, xx = _grid(s)
    along = (xx - cx) * np.cos(a) + (yy - cy) * np.sin(a)
    across = (-(xx - cx) * np.sin(a) + (yy - cy) * np.cos(a)) / r
    shade = _cylinder_shade(across, 0.35)
    side = (along > 0).astype(np.float32)
    obj = _mix(p["colour"], p["other"], side) * shade[..., None]
    if p["mark"]:  # a printed mark on one half
        m = np.zeros((s, s), np.float32)
        for k in range(3):
            q = -half_len * 0.55 + k * half_len * 0.12
            _line(m, (cx + np.cos(a) * q - np.sin(a) * r * 0.3, cy + np.sin(a) * q + np.cos(a) * r * 0.3),
                  (cx + np.cos(a) * q + np.sin(a) * r * 0.3, cy + np.sin(a) * q - np.cos(a) * r * 0.3), 1.0,
                  max(int(s / 128), 1))
        obj = obj * (1 - 0.8 * m[..., None])
    return img * (1 - mask[..., None]) + obj * mask[..., None], mask > 0.5


def _s_cable(rng: np.random.Generator) -> Params:
    p = _obj_base(rng, _palette(rng, (0.0, 0.3), (0.3, 0.8)))
    p.update(style=str(rng.choice(["section", "strand"])),
             wires=[_palette(rng, (0.5, 1.0), (0.4, 0.9)) for _ in range(3)],
             bend=rng.uniform(-0.4, 0.4, 2), angle=rng.uniform(0, np.pi), width=rng.uniform(0.08, 0.18))
    return p


def _r_cable(p: Params, s: int, pose: tuple[float, float, float], rng: np.random.Generator):
    img = _background(s, p, rng)
    cx, cy = s * (0.5 + pose[0]), s * (0.5 + pose[1])
    mask = np.zeros((s, s), np.float32)
    yy, xx = _grid(s)
    if p["style"] == "section":  # cross-section: jacket with three insulated conductors
        r = p["size"] * s / 2
        _circle(mask, cx, cy, r)
        obj = p["colour"] * (0.8 + 0.2 * np.cos(np.arctan2(yy - cy, xx - cx) - 1))[..., None] * np.ones(3, np.float32)
        for k in range(3):
            th = p["angle"] + pose[2] + k * 2 * np.pi / 3
            wx, wy = cx + np.cos(th) * r * 0.45, cy + np.sin(th) * r * 0.45
            ring = np.zeros((s, s), np.float32)
            _circle(ring, wx, wy, r * 0.38)
            core = np.zeros((s, s), np.float32)
            _circle(core, wx, wy, r * 0.2)
            obj = _mix(obj, p["wires"][k], ring)
            copper = np.array([0.85, 0.5, 0.25], np.float32) * (0.8 + 0.4 * rng.random((s, s, 1), dtype=np.float32))
            obj = obj * (1 - core[..., None]) + copper * core[..., None]
    else:  # a cable lying across the frame, gently bent
        a = p["angle"] + pose[2]
        t = np.linspace(-0.7, 0.7, 40)
        bend = p["bend"][0] * t * t + p["bend"][1] * t ** 3
        pts = _rot(np.stack([t * s, bend * s], 1), a, cx, cy)
        w = p["width"] * s
        cv2.polylines(mask, [np.round(pts * 16).astype(np.int32)], False, 1.0, int(w), cv2.LINE_AA, shift=4)
        dist = cv2.distanceTransform((mask > 0.5).astype(np.uint8), cv2.DIST_L2, 3)
        across = 1 - np.clip(dist / (w / 2), 0, 1)
        obj = p["wires"][0] * _cylinder_shade(across, 0.4)[..., None]
    obj = obj * _grain((s, s), np.random.default_rng(p["surface"]), 0.04)
    return img * (1 - mask[..., None]) + obj * mask[..., None], mask > 0.5


def _s_gear(rng: np.random.Generator) -> Params:
    p = _obj_base(rng, _metal(rng))
    p.update(teeth=int(rng.integers(8, 30)), depth=rng.uniform(0.08, 0.18), holes=int(rng.choice([0, 3, 4, 6])),
             hub=rng.uniform(0.12, 0.3), angle=rng.uniform(0, np.pi))
    return p


def _r_gear(p: Params, s: int, pose: tuple[float, float, float], rng: np.random.Generator):
    """A circular part: gear teeth (or a plain disc when teeth are shallow), bolt holes, a hub."""
    img = _background(s, p, rng)
    cx, cy = s * (0.5 + pose[0]), s * (0.5 + pose[1])
    a = p["angle"] + pose[2]
    r = p["size"] * s / 2
    n = p["teeth"] * 8
    th = np.linspace(0, 2 * np.pi, n, endpoint=False)
    tooth = np.clip(np.sin(th * p["teeth"]) * 3, -1, 1) * 0.5 + 0.5
    rad = r * (1 - p["depth"] * (1 - tooth))
    mask = np.zeros((s, s), np.float32)
    _fill(mask, _rot(np.stack([np.cos(th) * rad, np.sin(th) * rad], 1), a, cx, cy))
    holes = np.zeros((s, s), np.float32)
    _circle(holes, cx, cy, r * p["hub"])
    for k in range(p["holes"]):
        t = a + k * 2 * np.pi / max(p["holes"], 1)
        _circle(holes, cx + np.cos(t) * r * 0.55, cy + np.sin(t) * r * 0.55, r * 0.1)
    mask = np.clip(mask - holes, 0, 1)
    yy, xx = _grid(s)
    rr = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) / r
    ring = 0.85 + 0.15 * np.cos(rr * 40)  # turned (lathe) rings
    shade = ring * (0.8 + 0.2 * np.cos(np.arctan2(yy - cy, xx - cx) - 2.0))
    obj = p["colour"] * shade[..., None] * _grain((s, s), np.random.default_rng(p["surface"]), 0.05)
    return img * (1 - mask[..., None]) + obj * mask[..., None], mask > 0.5


def _s_transistor(rng: np.random.Generator) -> Params:
    body = _palette(rng, (0.0, 0.2), (0.05, 0.25))
    p = _obj_base(rng, _palette(rng, (0.0, 0.3), (0.5, 0.9)))
    p["bg"] = _palette(rng, (0.0, 0.6), (0.4, 0.9), (15, 35) if rng.random() < 0.5 else None)
    p.update(body=body, legs=int(rng.choice([2, 3, 3, 4])), tab=bool(rng.random() < 0.6),
             angle=rng.uniform(-0.1, 0.1), bw=rng.uniform(0.35, 0.55))
    return p


def _r_transistor(p: Params, s: int, pose: tuple[float, float, float], rng: np.random.Generator):
    img = _background(s, p, rng)
    cx, cy = s * (0.5 + pose[0]), s * (0.5 + pose[1] - 0.1)
    a = p["angle"] + pose[2]
    bw, bh = p["bw"] * s / 2, p["bw"] * s * 0.38
    mask = np.zeros((s, s), np.float32)
    body = np.zeros((s, s), np.float32)
    _fill(body, _rot(np.array([[-bw, -bh], [bw, -bh], [bw, bh], [-bw, bh]]), a, cx, cy))
    tab = np.zeros((s, s), np.float32)
    if p["tab"]:
        _fill(tab, _rot(np.array([[-bw, -bh * 2], [bw, -bh * 2], [bw, -bh], [-bw, -bh]]), a, cx, cy))
        hx, hy = _rot(np.array([[0.0, -bh * 1.5]]), a, cx, cy)[0]
        hole = np.zeros((s, s), np.float32)
        _circle(hole, hx, hy, bh * 0.25)
        tab = np.clip(tab - hole, 0, 1)
    legs = np.zeros((s, s), np.float32)
    for k in range(p["legs"]):
        x = -bw * 0.7 + k * (1.4 * bw) / max(p["legs"] - 1, 1)
        _fill(legs, _rot(np.array([[x - s * 0.02, bh], [x + s * 0.02, bh], [x + s * 0.02, bh + s * 0.3],
                                   [x - s * 0.02, bh + s * 0.3]]), a, cx, cy))
    mask = np.clip(body + tab + legs, 0, 1)
    yy = _grid(s)[0]
    metal = p["colour"] * (0.8 + 0.2 * np.sin(yy / s * 20))[..., None]
    obj = _mix(metal, p["body"], np.clip(body, 0, 1))
    obj = obj * _grain((s, s), np.random.default_rng(p["surface"]), 0.04)
    # A shadow of the part on the board.
    shadow = cv2.GaussianBlur(mask, (0, 0), s / 80)
    shadow = np.roll(shadow, (int(s * 0.015), int(s * 0.015)), (0, 1))
    img = img * (1 - 0.4 * shadow[..., None])
    return img * (1 - mask[..., None]) + obj * mask[..., None], mask > 0.5


def _s_nut_organic(rng: np.random.Generator) -> Params:
    p = _obj_base(rng, _palette(rng, (0.4, 0.8), (0.3, 0.7), (8, 22)))
    p.update(aspect=rng.uniform(0.75, 0.95), angle=rng.uniform(0, 2 * np.pi), stripes=rng.uniform(6, 14),
             tip=rng.uniform(0.1, 0.25))
    return p


def _r_nut_organic(p: Params, s: int, pose: tuple[float, float, float], rng: np.random.Generator):
    """A hazelnut-like organic object: a rounded shell with a pointed tip and streaks."""
    img = _background(s, p, rng)
    cx, cy = s * (0.5 + pose[0]), s * (0.5 + pose[1])
    a = p["angle"] + pose[2]
    r = p["size"] * s / 2 * 0.9
    th = np.linspace(0, 2 * np.pi, 72, endpoint=False)
    rad = r * (1 + p["tip"] * np.exp(-((np.angle(np.exp(1j * th))) ** 2) / 0.15))
    pts = np.stack([np.cos(th) * rad, np.sin(th) * rad * p["aspect"]], 1)
    mask = np.zeros((s, s), np.float32)
    _fill(mask, _rot(pts, a, cx, cy))
    yy, xx = _grid(s)
    u = (xx - cx) * np.cos(a) + (yy - cy) * np.sin(a)
    v = -(xx - cx) * np.sin(a) + (yy - cy) * np.cos(a)
    ang = np.arctan2(v, u)
    dist = np.sqrt(u * u + v * v) / r
    streak = 0.8 + 0.2 * np.sin(ang * p["stripes"] + 3 * perlin_noise((s, s), np.random.default_rng(p["surface"]), s / 6))
    dome = np.sqrt(np.clip(1 - dist * dist, 0, 1))
    obj = p["colour"] * (streak * (0.55 + 0.45 * dome))[..., None] * _grain((s, s), rng, 0.04)
    return img * (1 - mask[..., None]) + obj * mask[..., None], mask > 0.5


TEXTURES: dict[str, tuple[Callable[..., Params], Callable[..., np.ndarray]]] = {
    "wood": (_s_wood, _r_wood),
    "fabric": (_s_fabric, _r_fabric),
    "metal": (_s_metal, _r_metal),
    "carpet": (_s_carpet, _r_carpet),
    "mesh": (_s_mesh, _r_mesh),
    "tiles": (_s_tiles, _r_tiles),
    "leather": (_s_leather, _r_leather),
    "granular": (_s_granular, _r_granular),
    "stone": (_s_stone, _r_stone),
    "solar": (_s_solar, _r_solar),
    "pcb": (_s_pcb, _r_pcb),
    "label": (_s_label, _r_label),
    "perforated": (_s_perforated, _r_perforated),
    "zipper": (_s_zipper, _r_zipper),
}

OBJECTS: dict[str, tuple[Callable[..., Params], Callable[..., tuple[np.ndarray, np.ndarray]]]] = {
    "screw": (_s_screw, _r_screw),
    "nut": (_s_nut, _r_nut),
    "bottle": (_s_bottle, _r_bottle),
    "pill": (_s_pill, _r_pill),
    "capsule": (_s_capsule, _r_capsule),
    "cable": (_s_cable, _r_cable),
    "gear": (_s_gear, _r_gear),
    "transistor": (_s_transistor, _r_transistor),
    "hazelnut": (_s_nut_organic, _r_nut_organic),
}

CATEGORIES: tuple[str, ...] = tuple(TEXTURES) + tuple(OBJECTS)

#: Textures whose layout is fixed: their two views are nearly aligned crops.
ALIGNED = frozenset({"pcb", "label", "solar", "zipper", "perforated", "tiles", "mesh", "fabric"})

#: Materials whose fine structure differs from piece to piece (crystal grain, wood grain, stone,
#: leather, pile): two pieces share the kind's parameters but not the random structure.
VARYING = frozenset({"solar", "wood", "carpet", "leather", "granular", "stone", "metal"})


#: Textures are rendered this much larger than the output and cropped (two crops = two views).
_MARGIN = 1.15


def _to_u8(img: np.ndarray, grey: bool) -> np.ndarray:
    if grey:
        img = np.repeat(img.mean(axis=2, keepdims=True), 3, axis=2)
    return np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)


def _instance(category: str, rng: np.random.Generator) -> tuple[Params, bool]:
    sample = TEXTURES[category][0] if category in TEXTURES else OBJECTS[category][0]
    p = sample(rng)
    grey = bool(rng.random() < 0.3) or (category == "solar" and not p.get("colour", False))
    return p, grey


def _views(category: str, p: Params, grey: bool, size: int, rng: np.random.Generator, n: int,
           max_shift: float = 0.05, siblings: bool = False) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """``n`` views of one instance: crops of one texture canvas, or re-renders with a pose change.
    With ``siblings`` a texture is rendered afresh for every view (same parameters, new random
    structure: two pieces of one material)."""
    if category in TEXTURES:
        big = int(round(size * _MARGIN))
        canvas = TEXTURES[category][1](p, big, rng)
        canvases = [canvas] + [TEXTURES[category][1](p, big, rng) if siblings else canvas for _ in range(n - 1)]
        out = []
        slack = big - size
        # Laid-out products (a PCB, a label, a cell) are photographed in the same place each
        # time; random materials are compared with any other patch of the same material.
        near = max(int(size * 0.03), 1) if category in ALIGNED else slack
        by, bx = int(rng.integers(0, slack + 1)), int(rng.integers(0, slack + 1))
        for canvas in canvases:
            oy = int(np.clip(by + rng.integers(-near, near + 1), 0, slack))
            ox = int(np.clip(bx + rng.integers(-near, near + 1), 0, slack))
            out.append((_to_u8(canvas[oy : oy + size, ox : ox + size], grey), None))
        return out
    render = OBJECTS[category][1]
    out = []
    base = rng.uniform(-max_shift, max_shift, 2)
    for _ in range(n):
        pose = (float(base[0] + rng.uniform(-0.015, 0.015)), float(base[1] + rng.uniform(-0.015, 0.015)),
                float(rng.uniform(-0.05, 0.05)))
        img, mask = render(p, size, pose, rng)
        out.append((_to_u8(img, grey), mask))
    return out


def render(category: str, rng: np.random.Generator, size: int = 256) -> tuple[np.ndarray, np.ndarray | None]:
    """One normal image of ``category``: ((size, size, 3) uint8, object mask (size, size) bool or None)."""
    if category not in TEXTURES and category not in OBJECTS:
        raise AdcopilotError(f"unknown procedural category {category!r}; choose from {', '.join(CATEGORIES)}")
    p, grey = _instance(category, rng)
    return _views(category, p, grey, size, rng, 1)[0]


def random_normal(rng: np.random.Generator, size: int = 256) -> tuple[np.ndarray, np.ndarray | None, str]:
    """A random normal image: (image (S, S, 3) uint8, object mask or None for textures, category)."""
    category = str(rng.choice(CATEGORIES))
    image, mask = render(category, rng, size)
    return image, mask, category


def random_normal_pair(
    rng: np.random.Generator, size: int = 256, category: str | None = None, sibling_rate: float = 0.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, str]:
    """Two normal views of one instance (or, at ``sibling_rate`` for ``VARYING`` materials, two
    pieces of one material, so that a model learns such differences are normal): (reference, query_base, query's object mask or None, category)."""
    category = category or str(rng.choice(CATEGORIES))
    if category not in TEXTURES and category not in OBJECTS:
        raise AdcopilotError(f"unknown procedural category {category!r}; choose from {', '.join(CATEGORIES)}")
    p, grey = _instance(category, rng)
    siblings = category in VARYING and sibling_rate > 0 and bool(rng.random() < sibling_rate)
    (ref, _), (query, qmask) = _views(category, p, grey, size, rng, 2, siblings=siblings)
    return ref, query, qmask, category
