"""Leak guard: content hashes of curated images, and a check that test images were not trained on.

A curated set records, in ``hashes.json``, the SHA-256 of every image's decoded pixels (RGB,
after EXIF orientation; shape included) with its split and path. Hashing pixels, not file bytes,
catches the same image saved again under another name or re-encoded losslessly; it does not
catch resized or re-compressed (JPEG) copies.

Evaluation calls :func:`check_leaks` with its test images and the curated sets a model was
trained on: each test image found in a training split is logged loudly, and with
``strict=True`` the call raises :class:`LeakError`.

Usage::

    leaks = check_leaks(["mmad/bottle/000.png"], ["curated/run1"], strict=False)
    for leak in leaks:
        print(leak.image, "was trained on as", leak.train_path)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from adcopilot.errors import AdcopilotError, ImageError
from adcopilot.imaging import IMAGE_SUFFIXES, load_image
from adcopilot.jsonfile import read_json

log = logging.getLogger(__name__)

MANIFEST = "hashes.json"
FORMAT = "adcopilot-curated-hashes/1"


class LeakError(AdcopilotError):
    """Test images were part of a training set and ``strict`` was asked for."""


@dataclass(frozen=True)
class Leak:
    image: str  # the test image
    hash: str
    train_set: str  # the manifest that lists it
    train_path: str  # the path under which it was curated


def pixel_hash(arr: np.ndarray) -> str:
    """SHA-256 of an image array's shape and bytes (uint8, C order)."""
    a = np.ascontiguousarray(arr, dtype=np.uint8)
    h = hashlib.sha256(repr(a.shape).encode())
    h.update(a.tobytes())
    return h.hexdigest()


def content_hash(source: str | os.PathLike | np.ndarray) -> str:
    """The pixel hash of an image file or (H, W, 3) uint8 array (raises ImageError if unreadable)."""
    if isinstance(source, np.ndarray):
        return pixel_hash(source)
    return pixel_hash(np.asarray(load_image(source)))


def write_manifest(out_dir: str | os.PathLike, images: dict[str, dict]) -> Path:
    """Write ``hashes.json``: ``{"format", "images": {hash: {"split", "path"}}}``."""
    path = Path(out_dir) / MANIFEST
    payload = {"format": FORMAT, "images": dict(sorted(images.items()))}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=0))
    tmp.replace(path)
    return path


def load_manifest(path: str | os.PathLike) -> dict[str, dict]:
    """Hash -> {"split", "path"} of a curated folder or its ``hashes.json``."""
    p = Path(path)
    if p.is_dir():
        p = p / MANIFEST
    if not p.is_file():
        raise AdcopilotError(f"{p}: no such hash manifest (curate with adcopilot curate to make one)")
    data = read_json(p)
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("images"), dict):
        raise AdcopilotError(f"{p}: not an adcopilot hash manifest (expected format {FORMAT})")
    return data["images"]


def _expand(images: Iterable[str | os.PathLike]) -> list[Path]:
    out: list[Path] = []
    for item in images:
        p = Path(item)
        if p.is_dir():
            out += sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
        else:
            out.append(p)
    return out


def find_leaks(
    test_images: Iterable[str | os.PathLike], train_sets: Iterable[str | os.PathLike]
) -> list[Leak]:
    """Test images (files or folders) whose pixels appear in a training split of ``train_sets``."""
    trained: dict[str, tuple[str, str]] = {}
    for ts in train_sets:
        for h, rec in load_manifest(ts).items():
            if rec.get("split") == "train":
                trained.setdefault(h, (os.fspath(ts), str(rec.get("path", ""))))
    leaks: list[Leak] = []
    if not trained:
        return leaks
    for img in _expand(test_images):
        try:
            h = content_hash(img)
        except ImageError as exc:  # a bad file cannot be checked; say so and go on
            log.warning("leak check skipped %s", exc)
            continue
        if h in trained:
            ts, tp = trained[h]
            leaks.append(Leak(image=os.fspath(img), hash=h, train_set=ts, train_path=tp))
    return leaks


def check_leaks(
    test_images: Iterable[str | os.PathLike],
    train_sets: Iterable[str | os.PathLike],
    *,
    strict: bool = False,
) -> list[Leak]:
    """Find leaks; log each one as a warning, and raise :class:`LeakError` when ``strict``."""
    leaks = find_leaks(test_images, list(train_sets))
    if not leaks:
        return leaks
    log.warning("=" * 72)
    log.warning("DATA LEAK: %d test image(s) were in a training set; scores are not trustworthy", len(leaks))
    for leak in leaks[:20]:
        log.warning("  %s == %s (in %s)", leak.image, leak.train_path, leak.train_set)
    if len(leaks) > 20:
        log.warning("  ... and %d more", len(leaks) - 20)
    log.warning("=" * 72)
    if strict:
        first = leaks[0]
        raise LeakError(
            f"{first.image}: test image was in training set {first.train_set} as {first.train_path}"
            + (f" (and {len(leaks) - 1} more leaked test images)" if len(leaks) > 1 else "")
        )
    return leaks
