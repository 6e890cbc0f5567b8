"""Noise fields for synthetic textures and defects: gradient (Perlin) noise and cheap value noise.

Both the defect painters (:mod:`adcopilot.data.synth`) and the procedural materials
(:mod:`adcopilot.data.procedural`) draw from them.

Usage::

    field = perlin_noise((256, 256), rng, scale=32, octaves=3)   # (256, 256) float32 in [0, 1]
    blotches = smooth_noise((256, 256), rng, cells=6)
"""

from __future__ import annotations

import math

import cv2
import numpy as np


def _fade(t: np.ndarray) -> np.ndarray:
    return t * t * t * (t * (t * 6 - 15) + 10)


def _perlin_octave(h: int, w: int, rng: np.random.Generator, period: float) -> np.ndarray:
    """One octave of gradient noise, values in about [-0.71, 0.71]: (h, w) float32."""
    gh, gw = int(math.ceil(h / period)) + 2, int(math.ceil(w / period)) + 2
    angles = rng.uniform(0.0, 2 * np.pi, (gh, gw)).astype(np.float32)
    gx, gy = np.cos(angles), np.sin(angles)
    ys = np.arange(h, dtype=np.float32) / np.float32(period) + np.float32(rng.uniform(0, 1))
    xs = np.arange(w, dtype=np.float32) / np.float32(period) + np.float32(rng.uniform(0, 1))
    y0, x0 = ys.astype(np.int32), xs.astype(np.int32)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    yi, xi = y0[:, None], x0[None, :]

    def corner(dy: int, dx: int) -> np.ndarray:
        return gx[yi + dy, xi + dx] * (fx - dx) + gy[yi + dy, xi + dx] * (fy - dy)

    u, v = _fade(fx), _fade(fy)
    top = corner(0, 0) * (1 - u) + corner(0, 1) * u
    bottom = corner(1, 0) * (1 - u) + corner(1, 1) * u
    return top * (1 - v) + bottom * v


def perlin_noise(
    shape: tuple[int, int], rng: np.random.Generator, scale: float, octaves: int = 1
) -> np.ndarray:
    """2-D gradient (Perlin) noise of ``shape`` as float32 in [0, 1].

    ``scale`` is the feature size in pixels (the lattice period); each further octave halves it
    and halves its amplitude. Octaves with large periods are computed on a coarser grid and
    resized (the field is smooth there), which makes large noise cheap.
    """
    h, w = int(shape[0]), int(shape[1])
    total = np.zeros((h, w), np.float32)
    amp_sum = 0.0
    period = max(float(scale), 1.0)
    amp = 1.0
    for _ in range(max(int(octaves), 1)):
        f = max(int(period // 6), 1)  # sample at least 6 points per period
        if f > 1:
            hs, ws = -(-h // f) + 1, -(-w // f) + 1
            small = _perlin_octave(hs, ws, rng, period / f)
            octave = cv2.resize(small, (ws * f, hs * f), interpolation=cv2.INTER_LINEAR)[:h, :w]
        else:
            octave = _perlin_octave(h, w, rng, period)
        total += np.float32(amp) * octave
        amp_sum += amp
        amp *= 0.5
        period = max(period / 2, 1.0)
    # Perlin values lie in [-sqrt(1/2), sqrt(1/2)].
    out = total * np.float32(0.5 / amp_sum / math.sqrt(0.5)) + np.float32(0.5)
    return np.clip(out, 0.0, 1.0)


def smooth_noise(shape: tuple[int, int], rng: np.random.Generator, cells: float) -> np.ndarray:
    """Cheap value noise in [0, 1]: a (cells x cells) random grid resized bicubically."""
    h, w = int(shape[0]), int(shape[1])
    c = max(int(cells), 1)
    ch = max(int(round(c * h / max(h, w))), 1) + 2
    cw = max(int(round(c * w / max(h, w))), 1) + 2
    grid = rng.random((ch, cw)).astype(np.float32)
    big = cv2.resize(grid, (w + 2 * (w // cw + 1), h + 2 * (h // ch + 1)), interpolation=cv2.INTER_CUBIC)
    oy, ox = h // ch + 1, w // cw + 1
    return np.clip(big[oy : oy + h, ox : ox + w], 0.0, 1.0)
