"""Fixtures of the inspection-line tests: a tiny random-weight model and small synthetic lots."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from adcopilot.api import Copilot
from adcopilot.model.baseline import NearestPatchDetector
from adcopilot.model.vision import load_vision_tower

SIZE = 64


def texture(seed: int, size: int = 96, kind: str = "noise") -> np.ndarray:
    """A deterministic RGB uint8 image: smoothed noise, or stripes (another product variant)."""
    rng = np.random.default_rng(seed)
    if kind == "stripes":
        x = np.arange(size, dtype=np.float32)
        base = 0.5 + 0.4 * np.sin(x / 2.0)[None, :].repeat(size, 0)
        img = np.stack([base, base * 0.6, 1 - base], -1) + 0.03 * rng.standard_normal((size, size, 3))
    else:
        img = cv2.GaussianBlur(rng.random((size, size, 3)).astype(np.float32), (0, 0), 3)
        img = (img - img.min()) / (img.max() - img.min())
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def with_defect(img: np.ndarray, box: tuple[int, int, int, int] = (40, 30, 60, 50)) -> np.ndarray:
    x1, y1, x2, y2 = box
    out = img.copy()
    out[y1:y2, x1:x2] = 255
    return out


@pytest.fixture(scope="session")
def tiny_copilot() -> Copilot:
    """Baseline detector on a random-initialised tower (no weights needed), 64 px; the threshold
    sits halfway between a clean copy and a painted defect, so verdicts are meaningful."""
    # One compute thread: on a shared 2-core machine, more threads on a tiny model only wait on each other.
    torch.set_num_threads(1)
    torch.manual_seed(0)
    det = NearestPatchDetector(tower=load_vision_tower(pretrained=False), image_size=SIZE)
    cp = Copilot(det, registration=False, model_name="tiny")
    ref = texture(0)
    bad = cp.inspect(with_defect(ref), [ref]).score
    good = cp.inspect(ref, [ref]).score
    cp.threshold = det.threshold = (bad + good) / 2
    return cp


@pytest.fixture
def lot(tmp_path: Path) -> dict[str, Path]:
    """refs/ (3 normals), lot/good (4), lot/defect (3 + a broken file)."""
    refs, good, bad = tmp_path / "refs", tmp_path / "lot" / "good", tmp_path / "lot" / "defect"
    for d in (refs, good, bad):
        d.mkdir(parents=True)
    base = texture(0)
    for i in range(3):
        Image.fromarray(base).save(refs / f"ref{i}.png")
    for i in range(4):
        Image.fromarray(base).save(good / f"g{i}.png")
    for i in range(3):
        Image.fromarray(with_defect(base, (10 + 10 * i, 20, 30 + 10 * i, 40))).save(bad / f"d{i}.png")
    (bad / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot an image")
    return {"refs": refs, "lot": tmp_path / "lot", "out": tmp_path / "out"}
