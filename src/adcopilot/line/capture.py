"""Capture conditions: a query changed as a line's light, camera or part placement drifts from the references'.

Each condition changes an (H, W, 3) uint8 image: exposure (gain), gamma, a left-to-right illumination ramp,
sensor noise, defocus, a JPEG round trip (as the file's bytes, so the product reads its quality); and the pose: a
shift, a turn, a zoom. Pose conditions compare windows of ``WINDOW`` of each side, so that no made-up border
enters the frame: the reference's centred window against the query's window moved, turned or zoomed within the
query (the condition "window 84 %" is their baseline). Used by ``adcopilot tolerance`` (a line's own images)
and ``benchmarks/bench_capture.py`` (the benchmarks).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

#: (image (H, W, 3) uint8, a seeded generator) -> the changed image, as pixels or as a JPEG file's bytes.
Change = Callable[[np.ndarray, np.random.Generator], "np.ndarray | bytes"]
#: Pose conditions compare windows of this share of each side.
WINDOW = 0.84
#: The baseline every condition is read against (the images as they are).
AS_TAKEN = "as taken"


@dataclass(frozen=True)
class Condition:
    """A change of the query; ``pose``: the references are compared by their centred window too."""

    change: Change
    pose: bool = False


def _u8(a: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def gain(g: float) -> Change:
    return lambda a, _: _u8(a.astype(np.float32) * g)


def gamma(g: float) -> Change:
    return lambda a, _: _u8(255.0 * (a.astype(np.float32) / 255.0) ** g)


def ramp(amount: float) -> Change:
    """Brightness from 1 - ``amount`` at the left edge to 1 + ``amount`` at the right."""
    def change(a: np.ndarray, _: np.random.Generator) -> np.ndarray:
        r = np.linspace(1 - amount, 1 + amount, a.shape[1], dtype=np.float32)[None, :, None]
        return _u8(a.astype(np.float32) * r)
    return change


def noise(sigma: float) -> Change:
    """Gaussian sensor noise of ``sigma`` grey levels."""
    return lambda a, rng: _u8(a.astype(np.float32) + rng.normal(0, sigma, a.shape))


def defocus(sigma: float, size: int) -> Change:
    """A Gaussian blur of ``sigma`` px at the model's input size ``size`` (scaled to the image's own size)."""
    return lambda a, _: cv2.GaussianBlur(a, (0, 0), sigma * max(a.shape[:2]) / size)


def window(a: np.ndarray, dx: float = 0.0, dy: float = 0.0, degrees: float = 0.0, z: float = 1.0) -> np.ndarray:
    """The ``WINDOW`` share of ``a`` about its centre moved by (dx, dy) of its sides, turned and zoomed by ``z``."""
    h, w = a.shape[:2]
    cw, ch = max(1, round(w * WINDOW)), max(1, round(h * WINDOW))
    cx, cy = w / 2 + dx * w, h / 2 + dy * h
    m = cv2.getRotationMatrix2D((cx, cy), degrees, z)  # about the window's centre, in the image
    m[:, 2] += [cw / 2 - cx, ch / 2 - cy]  # the window's centre to the output's
    return cv2.warpAffine(a, m, (cw, ch), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def jpeg(quality: int) -> Change:
    def change(a: np.ndarray, _: np.random.Generator) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, "JPEG", quality=quality)
        return buf.getvalue()
    return change


def conditions(size: int) -> dict[str, Condition]:
    """Every condition by name, the baseline first; ``size``: the model's input side (for defocus)."""
    light: dict[str, Change] = {
        AS_TAKEN: lambda a, _: a,
        "gain 0.8": gain(0.8), "gain 1.25": gain(1.25),
        "gamma 0.8": gamma(0.8), "gamma 1.25": gamma(1.25),
        "ramp +-15 %": ramp(0.15), "ramp +-30 %": ramp(0.3),
        "noise 3": noise(3.0), "noise 8": noise(8.0),
        "defocus 0.5 px": defocus(0.5, size), "defocus 1 px": defocus(1.0, size),
        "JPEG 75": jpeg(75),
    }
    pose: dict[str, Change] = {
        f"window {100 * WINDOW:.0f} %": lambda a, _: window(a),
        "shift 2 %": lambda a, _: window(a, 0.02, 0.02), "shift 5 %": lambda a, _: window(a, 0.05, 0.05),
        "turn 2 deg": lambda a, _: window(a, degrees=2.0), "turn 8 deg": lambda a, _: window(a, degrees=8.0),
        "zoom 1.05": lambda a, _: window(a, z=1.05), "zoom 1.15": lambda a, _: window(a, z=1.15),
    }
    return {**{k: Condition(v) for k, v in light.items()}, **{k: Condition(v, pose=True) for k, v in pose.items()}}
