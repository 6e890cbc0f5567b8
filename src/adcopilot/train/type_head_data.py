"""Labelled synthetic defects for the defect-type head, with the frozen detector's cell features.

The type head (``Projectors.type_head`` of :class:`adcopilot.language.model.NanoCopilot`) reads the
anomaly-weighted features of one grid cell of the query. This module builds a set made for it
alone: many products, every defect kind of :data:`adcopilot.data.synth.DEFECT_KINDS` on each, and
a split by *product* (train / val / test), so that validation measures products never fitted on.

Products: every procedural category (:mod:`adcopilot.data.procedural`, ``instances`` seeded
instances each) and square crops at several positions and scales of the licensed training photos
(:func:`adcopilot.train.language_data.training_photos`: the evaluation photos are excluded).
Per product: ``refs`` normal views (one is the reference of each query, in turn) and
``per_kind`` defective queries of every kind, each a new view (:func:`adcopilot.data.synth.jitter`)
with one defect (objects: inside the object's mask, moved with the view).

Written to ``out`` per part: ``samples-NN.jsonl`` (product, kind, label, split per sample),
``features-NN.safetensors`` (``cells`` (N, G*G, CELL_WIDTH) from :class:`adcopilot.language.visual.VisualEncoder` and ``cover``
(N, G*G), the fraction of each cell the defect's mask covers), and ``manifest.json`` (the settings and
the checkpoint's hash; a folder built otherwise is refused).

Usage::

    build(Path("runs/typehead-data"), Path("src/adcopilot/checkpoints/nano"), TypeHeadDataConfig())
    x, y, labels = load_split(Path("runs/typehead-data"), "val")
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from adcopilot.data import procedural
from adcopilot.data.synth import DEFECT_KINDS, LABELS, add_defect, jitter_transform, photometric, warp
from adcopilot.errors import AdcopilotError
from adcopilot.language.visual import CELL_STATS, GRID, VisualEncoder
from adcopilot.model.nano import load_nano_detector
from adcopilot.train.language_data import comparison_hash, training_photos

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass
class TypeHeadDataConfig:
    seed: int = 0
    size: int = 256
    instances: int = 3  # procedural instances per category
    photo_crops: int = 3  # crops per training photo (the centre crop and random ones)
    refs: int = 2  # normal views per product
    per_kind: int = 2  # defective queries per product and defect kind
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    categories: list[str] | None = None  # procedural categories (None: all)
    photos: bool = True  # crops of the licensed training photos as products


def display_label(kind: str) -> str:
    """The box label of a synthetic kind as the curated data writes it ("dark region" -> "Dark Region")."""
    return LABELS[kind].title()


def _seed(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:4], "little")


def _split(name: str, cfg: TypeHeadDataConfig) -> str:
    u = _seed(cfg.seed, "split", name) / 2**32
    return "val" if u < cfg.val_fraction else "test" if u < cfg.val_fraction + cfg.test_fraction else "train"


def _crop(photo: np.ndarray, rng: np.random.Generator, size: int, centre: bool) -> np.ndarray:
    """A square crop (the centred largest one, or a random one of 45-100 % of the short side)."""
    h, w = photo.shape[:2]
    s = min(h, w) if centre else int(min(h, w) * rng.uniform(0.45, 1.0))
    y = (h - s) // 2 if centre else int(rng.integers(0, h - s + 1))
    x = (w - s) // 2 if centre else int(rng.integers(0, w - s + 1))
    return cv2.resize(np.ascontiguousarray(photo[y : y + s, x : x + s]), (size, size), interpolation=cv2.INTER_AREA)


def products(cfg: TypeHeadDataConfig) -> list[tuple[str, np.ndarray, np.ndarray | None]]:
    """(name, normal image (S, S, 3) uint8, object mask (S, S) bool or None) of every product."""
    out: list[tuple[str, np.ndarray, np.ndarray | None]] = []
    for cat in procedural.CATEGORIES if cfg.categories is None else cfg.categories:
        for i in range(cfg.instances):
            img, mask = procedural.render(cat, np.random.default_rng(_seed(cfg.seed, cat, i)), cfg.size)
            out.append((f"{cat}_{i}", img, mask))
    for name, photo in training_photos() if cfg.photos else []:
        for i in range(cfg.photo_crops):
            rng = np.random.default_rng(_seed(cfg.seed, name, i))
            out.append((f"{name}_{i}", _crop(photo, rng, cfg.size, centre=i == 0), None))
    return out


def _view(img: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """Another shot of the product (:func:`adcopilot.data.synth.jitter`), its mask moved along."""
    m = jitter_transform(img.shape[:2], rng)
    shot = photometric(warp(img, m), rng)
    if mask is None:
        return shot, None
    moved = warp(mask.astype(np.uint8), m, nearest=True) > 0
    return shot, moved if moved.sum() >= 16 else None


def _cover(mask: np.ndarray) -> torch.Tensor:
    """Fraction of each grid cell the mask covers: (H, W) -> (G*G,)."""
    return F.adaptive_avg_pool2d(torch.from_numpy(mask.astype(np.float32))[None, None], GRID).flatten()


def build(out: Path, checkpoint: Path, cfg: TypeHeadDataConfig, part: int = 0, parts: int = 1,
          progress: bool = True, detector: Any = None) -> int:
    """Paint, encode and write the set (see the module docstring), or its ``part``-th of ``parts``
    (products dealt in turn; parts can be built by separate processes); returns the part's size.
    ``detector``: the checkpoint's detector when already loaded."""
    if not 0 <= part < parts:
        raise AdcopilotError(f"part {part} is not one of 0..{parts - 1}")
    out.mkdir(parents=True, exist_ok=True)
    want = {"data": asdict(cfg), "comparison_hash": comparison_hash(checkpoint), "parts": parts}
    manifest = out / "manifest.json"
    if manifest.exists() and json.loads(manifest.read_text()) != want:
        raise AdcopilotError(f"{out}: built with other settings or another checkpoint; use another folder")
    manifest.write_text(json.dumps(want, indent=1))
    features = out / f"features-{part:02d}.safetensors"
    if features.exists():
        return len(_read_jsonl(out / f"samples-{part:02d}.jsonl"))
    if detector is None:
        detector, _ = load_nano_detector(checkpoint)
    enc = VisualEncoder(detector, cache_size=2 * cfg.refs)
    rows: list[dict[str, Any]] = []
    cells: list[torch.Tensor] = []
    cover: list[torch.Tensor] = []
    items = products(cfg)[part::parts]
    for name, img, mask in tqdm(items, desc="type-head products", disable=not progress):
        rng = np.random.default_rng(_seed(cfg.seed, "views", name))
        refs = [_view(img, mask, rng)[0] for _ in range(cfg.refs)]
        split = _split(name, cfg)
        for kind in DEFECT_KINDS:
            for j in range(cfg.per_kind):
                shot, region = _view(img, mask, rng)
                d = add_defect(shot, rng, kind, region=region)
                ref = refs[(len(rows)) % cfg.refs]
                v = enc.encode(d.image, [ref])
                rows.append({"product": name, "kind": kind, "label": display_label(kind), "split": split, "n": j})
                cells.append(v.cells)  # (G*G, CELL_WIDTH)
                cover.append(_cover(d.mask))
    tmp = out / f"samples-{part:02d}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    tmp.replace(out / f"samples-{part:02d}.jsonl")
    # The features last: their presence marks the part done.
    save_file({"cells": torch.stack(cells).contiguous(), "cover": torch.stack(cover).contiguous()},
              str(out / "features.tmp"))
    (out / "features.tmp").replace(features)
    log.info("type-head set part %d/%d: %d samples of %d products in %s", part, parts, len(rows), len(items), out)
    return len(rows)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError) as exc:
        raise AdcopilotError(f"{path}: unreadable ({exc})") from exc


def read_set(folder: Path) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor]]:
    """Every sample of a built set and its tensors (``cells`` (N, G*G, W), ``cover`` (N, G*G))."""
    try:
        parts = int(json.loads((folder / "manifest.json").read_text())["parts"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AdcopilotError(f"{folder}: not a type-head set (manifest.json unreadable: {exc})") from exc
    rows: list[dict[str, Any]] = []
    tensors: dict[str, list[torch.Tensor]] = {"cells": [], "cover": []}
    for p in range(parts):
        feats = folder / f"features-{p:02d}.safetensors"
        if not feats.exists():
            raise AdcopilotError(f"{feats}: missing; build part {p} of the type-head set first")
        rows += _read_jsonl(folder / f"samples-{p:02d}.jsonl")
        try:
            t = load_file(str(feats))
        except Exception as exc:  # safetensors raises its own error type on a damaged file
            raise AdcopilotError(f"{feats}: not a readable safetensors file ({exc})") from exc
        for k in tensors:
            tensors[k].append(t[k])
    return rows, {k: torch.cat(v) for k, v in tensors.items()}


def load_split(folder: Path, split: str, labels: list[str], cell: str = "hottest") -> tuple[torch.Tensor, torch.Tensor]:
    """Features (N, 2C) of one cell per sample and label indices (N,) into ``labels``.

    ``cell``: "hottest" (the cell of the highest peak anomaly, what answering reads) or "defect"
    (the cell the defect covers most, a cleaner training signal)."""
    if split not in SPLITS:
        raise AdcopilotError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    if cell not in ("hottest", "defect"):
        raise AdcopilotError(f"unknown cell choice {cell!r}; use 'hottest' or 'defect'")
    rows, t = read_set(folder)
    index = {lab: i for i, lab in enumerate(labels)}
    keep = [i for i, r in enumerate(rows) if r["split"] == split and r["label"] in index]
    if not keep:
        raise AdcopilotError(f"{folder}: no {split} samples with the head's labels")
    cells = t["cells"][keep]  # (N, G*G, W)
    pick = cells[:, :, 0].argmax(1) if cell == "hottest" else t["cover"][keep].argmax(1)  # (N,)
    x = cells[torch.arange(len(keep)), pick, CELL_STATS:]  # (N, 2C)
    y = torch.tensor([index[rows[i]["label"]] for i in keep])
    return x, y
