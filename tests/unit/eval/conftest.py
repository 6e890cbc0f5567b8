"""Small MMAD-format benchmarks written into tmp folders (images, masks, mmad.json)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from adcopilot.geometry import region_name


def sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + "."


def _texture(seed: int, size: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.random((size, size, 3)).astype(np.float32), (0, 0), 2)
    noise = (noise - noise.min()) / (noise.max() - noise.min())
    return (noise * 255).astype(np.uint8)


def write_benchmark(root: Path, n_bad: int = 3, n_good: int = 2) -> Path:
    """Two datasets; anomalous images have a dark square and a mask; returns mmad.json's path."""
    base = _texture(0)
    data = {}
    for ds in ("DSA", "DSB"):
        for cls in ("plate",):
            tdir = root / ds / cls / "train" / "good"
            tdir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(base).save(tdir / "t0.png")
            Image.fromarray(base).save(tdir / "t1.png")
            templates = [f"{ds}/{cls}/train/good/t0.png", f"{ds}/{cls}/train/good/t1.png"]
            for i in range(n_bad + n_good):
                bad = i < n_bad
                sub = "hole" if bad else "good"
                idir = root / ds / cls / "test" / sub
                idir.mkdir(parents=True, exist_ok=True)
                img = base.copy()
                mask = np.zeros((64, 64), np.uint8)
                if bad:
                    x, y = 8 + 12 * i, 10 + 8 * i
                    img[y : y + 12, x : x + 12] = 0
                    mask[y : y + 12, x : x + 12] = 255
                rel = f"{ds}/{cls}/test/{sub}/{i:03d}.png"
                Image.fromarray(img).save(root / rel)
                entry = {"image_path": rel, "random_templates": templates[:1], "similar_templates": templates[::-1],
                         "conversation": [
                             {"Question": "Is there any defect in the object?", "Answer": "A" if bad else "B",
                              "Options": {"A": "Yes.", "B": "No."}, "type": "Anomaly Detection", "annotation": True},
                             {"Question": "What is the object in the image?", "Answer": "C",
                              "Options": {"A": "Bottle.", "B": "Cable.", "C": "Plate.", "D": "Screw."},
                              "type": "Object Classification", "annotation": False},
                         ]}
                if bad:
                    mrel = f"{ds}/{cls}/ground_truth/hole/{i:03d}_mask.png"
                    (root / mrel).parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(mask).save(root / mrel)
                    entry["mask_path"] = mrel
                    cell = region_name([x, y, x + 12, y + 12], 64, 64)
                    wrong = [c for c in ("bottom right", "bottom left", "right", "top right") if c != cell][:3]
                    entry["conversation"].insert(1, {
                        "Question": "Where is the defect located in the image?", "Answer": "A",
                        "Options": {k: sentence(v) for k, v in zip("ABCD", [cell, *wrong], strict=True)},
                        "type": "Defect Localization", "annotation": True})
                data[rel] = entry
    path = root / "mmad.json"
    path.write_text(json.dumps(data, indent=1))
    return path


@pytest.fixture
def small_bench(tmp_path) -> Path:
    return write_benchmark(tmp_path / "bench")
