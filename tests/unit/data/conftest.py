"""Fixtures of the curation tests: small image trees in every supported layout, built on the fly."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image


def _texture(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    small = rng.random((size // 8, size // 8, 3)).astype(np.float32)
    img = cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)
    return (np.clip(img, 0, 1) * 150 + 60).astype(np.uint8)


def _save(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture
def curate_tree(tmp_path) -> Path:
    """MVTec-style class "bottle" (with a wrong-size mask and a corrupt image), label folders
    "cells" (good / crack, no masks), a folder of normal images "plates", an unknown layout."""
    rng = np.random.default_rng(0)
    root = tmp_path / "src"
    mv = root / "mvtec" / "bottle"
    for i in range(6):
        _save(mv / "train" / "good" / f"{i:03d}.png", _texture(rng))
    for i in range(2):
        _save(mv / "test" / "good" / f"{i:03d}.png", _texture(rng))
    for d, (x, y) in (("broken_large", (8, 8)), ("contamination", (40, 36))):
        for i in range(3):
            img = _texture(rng)
            m = np.zeros((64, 64), np.uint8)
            m[y : y + 10, x + i : x + i + 12] = 255
            img[m > 0] = 20
            _save(mv / "test" / d / f"{i:03d}.png", img)
            _save(mv / "ground_truth" / d / f"{i:03d}_mask.png", m)
    _save(mv / "test" / "contamination" / "009.png", _texture(rng))
    _save(mv / "ground_truth" / "contamination" / "009_mask.png", np.zeros((10, 10), np.uint8))
    (mv / "test" / "broken_large" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    for d in ("good", "crack"):
        for i in range(4):
            _save(root / "cells" / d / f"{i}.png", _texture(rng))
    for i in range(4):
        _save(root / "plates" / f"p{i}.png", _texture(rng, 80))
    (root / "unknown").mkdir()
    (root / "unknown" / "notes.txt").write_text("hello")
    return root
