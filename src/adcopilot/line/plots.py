"""Small line charts drawn with Pillow (no plotting library needed): ROC and cost curves.

Usage::

    line_chart("roc.png", [Series(fpr, tpr, "nano")], "false-alarm rate", "detection rate")
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from adcopilot.errors import AdcopilotError

PALETTE = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189)]


@dataclass
class Series:
    x: Sequence[float]
    y: Sequence[float]
    label: str
    colour: tuple[int, int, int] | None = None
    dashed: bool = False


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # very old Pillow
        return ImageFont.load_default()


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    return list(np.linspace(lo, hi, n))


def _dashed(d: ImageDraw.ImageDraw, a: tuple[float, float], b: tuple[float, float], colour: tuple[int, int, int],
            dash: float = 7.0, gap: float = 5.0) -> None:
    length = float(np.hypot(b[0] - a[0], b[1] - a[1]))
    if length == 0:
        return
    ux, uy = (b[0] - a[0]) / length, (b[1] - a[1]) / length
    t = 0.0
    while t < length:
        e = min(t + dash, length)
        d.line([(a[0] + ux * t, a[1] + uy * t), (a[0] + ux * e, a[1] + uy * e)], fill=colour, width=2)
        t = e + gap


def line_chart(
    path: str | Path,
    series: Sequence[Series],
    xlabel: str,
    ylabel: str,
    title: str = "",
    *,
    xlim: tuple[float, float] | None = None,
    ylim: tuple[float, float] | None = None,
    vline: tuple[float, str] | None = None,
    marker: tuple[float, float, str] | None = None,
    size: tuple[int, int] = (640, 480),
) -> Path:
    """Draw the series on one set of axes and save as PNG."""
    W, H = size
    left, right, top, bottom = 70, 20, 40 if title else 20, 55
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    f, fs = _font(14), _font(12)
    xs = np.concatenate([np.asarray(s.x, float) for s in series])
    ys = np.concatenate([np.asarray(s.y, float) for s in series])
    x0, x1 = xlim or (float(xs.min()), float(xs.max()))
    y0, y1 = ylim or (float(ys.min()), float(ys.max()))
    x1 = x1 if x1 > x0 else x0 + 1.0
    y1 = y1 if y1 > y0 else y0 + 1.0
    pw, ph = W - left - right, H - top - bottom

    def px(x: float, y: float) -> tuple[float, float]:
        return left + (x - x0) / (x1 - x0) * pw, top + ph - (y - y0) / (y1 - y0) * ph

    for tx in _ticks(x0, x1):
        X, _ = px(tx, y0)
        d.line([(X, top), (X, top + ph)], fill=(232, 232, 232))
        d.text((X, top + ph + 6), f"{tx:.3g}", fill="black", font=fs, anchor="ma")
    for ty in _ticks(y0, y1):
        _, Y = px(x0, ty)
        d.line([(left, Y), (left + pw, Y)], fill=(232, 232, 232))
        d.text((left - 6, Y), f"{ty:.3g}", fill="black", font=fs, anchor="rm")
    d.rectangle([left, top, left + pw, top + ph], outline="black")
    if title:
        d.text((W / 2, 12), title, fill="black", font=f, anchor="ma")
    d.text((left + pw / 2, H - 8), xlabel, fill="black", font=f, anchor="md")
    # Vertical y label: draw on a strip and rotate.
    strip = Image.new("RGB", (ph, 20), "white")
    ImageDraw.Draw(strip).text((ph / 2, 10), ylabel, fill="black", font=f, anchor="mm")
    img.paste(strip.rotate(90, expand=True), (4, top))

    for k, s in enumerate(series):
        colour = s.colour or PALETTE[k % len(PALETTE)]
        pts = [px(float(a), float(b)) for a, b in zip(s.x, s.y, strict=True)]
        if s.dashed:
            for a, b in zip(pts[:-1], pts[1:], strict=True):
                _dashed(d, a, b, colour)
        elif len(pts) > 1:
            d.line(pts, fill=colour, width=2)
        d.line([(left + 12, top + 14 + 18 * k), (left + 36, top + 14 + 18 * k)], fill=colour, width=3)
        d.text((left + 42, top + 14 + 18 * k), s.label, fill="black", font=fs, anchor="lm")
    if vline is not None:
        X, _ = px(vline[0], y0)
        for Y in range(top, top + ph, 8):
            d.line([(X, Y), (X, min(Y + 4, top + ph))], fill=(90, 90, 90), width=1)
        d.text((X + 4, top + ph - 14), vline[1], fill=(60, 60, 60), font=fs, anchor="lm")
    if marker is not None:
        X, Y = px(marker[0], marker[1])
        d.ellipse([X - 5, Y - 5, X + 5, Y + 5], outline="black", fill=(255, 200, 0), width=2)
        d.text((X + 8, Y - 8), marker[2], fill="black", font=fs, anchor="ld")
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        img.save(p)
    except OSError as exc:
        raise AdcopilotError(f"{p}: cannot write the chart ({exc})") from None
    return p
