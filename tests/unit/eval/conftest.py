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


def _save(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _write_json(root: Path, data: dict) -> Path:
    path = root / "mmad.json"
    path.write_text(json.dumps(data, indent=1))
    return path


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
                    _save(root / mrel, mask)
                    entry["mask_path"] = mrel
                    cell = region_name([x, y, x + 12, y + 12], 64, 64)
                    wrong = [c for c in ("bottom right", "bottom left", "right", "top right") if c != cell][:3]
                    entry["conversation"].insert(1, {
                        "Question": "Where is the defect located in the image?", "Answer": "A",
                        "Options": {k: sentence(v) for k, v in zip("ABCD", [cell, *wrong], strict=True)},
                        "type": "Defect Localization", "annotation": True})
                data[rel] = entry
    return _write_json(root, data)


@pytest.fixture
def small_bench(tmp_path) -> Path:
    return write_benchmark(tmp_path / "bench")


#: The real benchmark file's layout, reproduced on generated images: per dataset, the class
#: folder, the query's folder under it, where its masks live and how ``mask_path`` is written.
#: DS-MVTec keeps masks in a sibling folder of ``image/`` and writes ``mask_path`` relative to
#: the class folder; VisA's ``mask_path`` is the one ``generate_metadata.py``'s join
#: (the key's first three components + ``mask_path``) finds.
REAL_LAYOUT = {
    "DS-MVTec": {"cls": "screw", "image": "image/{sub}/{i:03d}.png", "mask_file": "rbg_mask/{sub}/{i:03d}_rbg_mask.png",
                 "mask_path": "rbg_mask/{sub}/{i:03d}_rbg_mask.png", "bad": "scratch_head",
                 "templates": "MVTec-AD/screw/train/good/{t:03d}.png"},
    "VisA": {"cls": "candle", "image": "test/{sub}/{i:03d}.JPG", "mask_file": "ground_truth/{sub}/{i:03d}.png",
             "mask_path": "../ground_truth/{sub}/{i:03d}.png", "bad": "bad",
             "templates": "VisA/candle/train/good/{t:03d}.JPG"},
}
OBJECTS = {"A": "Bottle.", "B": "Candle.", "C": "Cable.", "D": "Screw."}


def write_real_layout(root: Path, n_bad: int = 2, n_good: int = 2) -> Path:
    """An ``mmad.json`` in the real download's layout (see :data:`REAL_LAYOUT`); returns its path.

    Keys are root-relative, ``image_path`` and ``mask_path`` are not; templates are root-relative.
    """
    data = {}
    for ds, lay in REAL_LAYOUT.items():
        cls = lay["cls"]
        base = _texture(1 if ds == "VisA" else 2)
        templates = []
        for t in range(2):
            rel = lay["templates"].format(t=t)
            _save(root / rel, base)
            templates.append(rel)
        gold_object = next(k for k, v in OBJECTS.items() if v == sentence(cls))
        for i in range(n_bad + n_good):
            bad = i < n_bad
            sub = lay["bad"] if bad else "good"
            image_path = lay["image"].format(sub=sub, i=i)
            key = f"{ds}/{cls}/{image_path}"
            img = base.copy()
            if bad:
                y, x = 10 + 20 * i, 12
                img[y : y + 16, x : x + 16] = 0
            _save(root / key, img)
            entry = {"image_path": image_path, "similar_templates": templates[::-1], "random_templates": templates,
                     "conversation": [
                         {"Question": "Is there any defect in the object?", "Answer": "A" if bad else "B",
                          "Options": {"A": "Yes.", "B": "No."}, "type": "Anomaly Detection", "annotation": True},
                         {"Question": "What kind of product is in the image?", "Answer": gold_object,
                          "Options": OBJECTS, "type": "Object Classification", "annotation": False},
                     ]}
            if bad:
                mask = np.zeros((64, 64), np.uint8)
                mask[y : y + 16, x : x + 16] = 255
                _save(root / ds / cls / lay["mask_file"].format(sub=sub, i=i), mask)
                entry["mask_path"] = lay["mask_path"].format(sub=sub, i=i)
            data[key] = entry
    return _write_json(root, data)


@pytest.fixture
def real_bench(tmp_path) -> Path:
    return write_real_layout(tmp_path / "MMAD")
