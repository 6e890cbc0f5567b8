"""Stage-1 training pairs for the Comparison Encoder: (normal reference, query, exact query mask).

A pair is two normal views of one product (a procedural instance re-rendered with another pose,
or two overlapping crops of a licensed photo), each with its own nuisance (pose, light, noise).
The query then gets zero, one or a few synthetic defects (:mod:`adcopilot.data.synth`), whose
mask is carried into the query's frame. A fraction of pairs are "general" spot-the-difference
pairs on arbitrary images (a shape added, removed, moved or recoloured).

Usage::

    sampler = PairSampler(256, seed=0)
    pair = sampler.sample(np.random.default_rng(1))
    pair.reference, pair.query, pair.mask, pair.label, pair.kind, pair.category

    loader = torch.utils.data.DataLoader(PairDataset(sampler, seed=0, length=10_000), batch_size=16,
                                         num_workers=2)
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch

from adcopilot.data import procedural, synth
from adcopilot.data.normals import HELDOUT_FOR_EVALUATION, licensed_normal_images
from adcopilot.errors import AdcopilotError

log = logging.getLogger(__name__)

SOURCES = ("procedural", "photos")


@dataclass
class ComparisonPair:
    """One training pair; images are float32 in [0, 1], the mask is in the query's frame."""

    reference: np.ndarray  # (S, S, 3) float32 [0, 1]
    query: np.ndarray  # (S, S, 3) float32 [0, 1]
    mask: np.ndarray  # (S, S) float32 0/1 in the query frame
    label: int  # 1 anomalous
    kind: str  # "normal", a defect kind from synth.DEFECT_KINDS (joined by "+"), or a general change
    category: str  # procedural category or "photo:<name>"
    # Other normal images of the product for k-shot training, when the sampler has them (adapt);
    # otherwise extra references are jittered views of ``reference``.
    more_references: tuple[np.ndarray, ...] = ()


# ----------------------------------------------------------------------------------------------
# spot the difference

_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 170, 50), "blue": (30, 60, 220), "yellow": (240, 220, 30),
    "cyan": (30, 210, 220), "magenta": (210, 40, 200), "orange": (245, 140, 20), "purple": (120, 40, 170),
    "white": (250, 250, 250), "black": (10, 10, 10),
}
_GREYS: dict[str, tuple[int, int, int]] = {
    "black": (10, 10, 10), "dark grey": (70, 70, 70), "light grey": (180, 180, 180), "white": (250, 250, 250),
}
_MIN_CONTRAST = 40  # mean grey-level change inside a shape for it to count as visible
_SHAPES = ("square", "circle", "triangle", "star", "cross", "ring", "bar")


def _where(cy: float, cx: float, h: int, w: int) -> str:
    """Name the 3x3 cell of (cy, cx): "the top left", "the centre", ..."""
    row = ("top", "middle", "bottom")[min(int(3 * cy / h), 2)]
    col = ("left", "centre", "right")[min(int(3 * cx / w), 2)]
    if row == "middle" and col == "centre":
        return "the centre"
    if row == "middle":
        return f"the {col}"
    if col == "centre":
        return f"the {row}"
    return f"the {row} {col}"


def _shape_mask(shape: str, h: int, w: int, cy: float, cx: float, r: float, angle: float) -> np.ndarray:
    canvas = np.zeros((h, w), np.uint8)
    c, s = np.cos(angle), np.sin(angle)

    def poly(pts: np.ndarray) -> None:
        rot = np.stack([cx + c * pts[:, 0] - s * pts[:, 1], cy + s * pts[:, 0] + c * pts[:, 1]], 1)
        cv2.fillPoly(canvas, [np.round(rot * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)

    if shape == "circle":
        cv2.circle(canvas, (int(cx * 16), int(cy * 16)), max(int(r * 16), 16), 255, -1, cv2.LINE_AA, shift=4)
    elif shape == "ring":
        cv2.circle(canvas, (int(cx * 16), int(cy * 16)), max(int(r * 0.8 * 16), 16), 255,
                   max(int(r * 0.4), 1), cv2.LINE_AA, shift=4)
    elif shape == "square":
        poly(np.array([[-r, -r], [r, -r], [r, r], [-r, r]]) * 0.85)
    elif shape == "triangle":
        t = np.array([-np.pi / 2, np.pi / 6, 5 * np.pi / 6])
        poly(np.stack([np.cos(t), np.sin(t)], 1) * r)
    elif shape == "star":
        t = np.arange(10) * np.pi / 5 - np.pi / 2
        rr = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
        poly(np.stack([np.cos(t) * rr, np.sin(t) * rr], 1))
    elif shape == "cross":
        a = r * 0.3
        poly(np.array([[-r, -a], [r, -a], [r, a], [-r, a]]))
        poly(np.array([[-a, -r], [a, -r], [a, r], [-a, r]]))
    else:  # bar
        poly(np.array([[-r, -r * 0.3], [r, -r * 0.3], [r, r * 0.3], [-r, r * 0.3]]))
    return canvas.astype(np.float32) / 255.0


def _paint(image: np.ndarray, cover: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    a = cover[..., None]
    out = image.astype(np.float32) * (1 - a) + np.asarray(colour, np.float32) * a
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def spot_the_difference(
    image: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """A general change between two copies of ``image``: (before, after, mask, caption).

    One coloured shape is added, removed, moved or recoloured; ``mask`` ((H, W) uint8 0/1) is
    exactly the pixels where ``before`` and ``after`` differ. Greyscale images get grey shapes.
    """
    img = synth.as_rgb_uint8(image)
    h, w = img.shape[:2]
    palette = _GREYS if synth.is_grey(img) else _COLOURS
    names = list(palette)
    for _ in range(20):
        op = str(rng.choice(["added", "removed", "moved", "recolored"]))
        shape = str(rng.choice(_SHAPES))
        r = max(min(h, w) * rng.uniform(0.05, 0.14), 1.5)
        angle = float(rng.uniform(0, 2 * np.pi)) if shape not in ("circle", "ring") else 0.0
        cy, cx = rng.uniform(r, max(h - r, r + 1e-3)), rng.uniform(r, max(w - r, r + 1e-3))
        col, col2 = (str(x) for x in rng.choice(names, 2, replace=False))
        cover = _shape_mask(shape, h, w, cy, cx, r, angle)
        where = _where(cy, cx, h, w)
        if op == "added":
            before, after = img.copy(), _paint(img, cover, palette[col])
            caption = f"a {col} {shape} was added at {where}"
        elif op == "removed":
            before, after = _paint(img, cover, palette[col]), img.copy()
            caption = f"a {col} {shape} was removed from {where}"
        elif op == "moved":
            ny, nx = rng.uniform(r, max(h - r, r + 1e-3)), rng.uniform(r, max(w - r, r + 1e-3))
            before = _paint(img, cover, palette[col])
            after = _paint(img, _shape_mask(shape, h, w, ny, nx, r, angle), palette[col])
            caption = f"the {col} {shape} moved from {where} to {_where(ny, nx, h, w)}"
        else:
            before, after = _paint(img, cover, palette[col]), _paint(img, cover, palette[col2])
            caption = f"the {shape} at {where} changed colour from {col} to {col2}"
        diff = np.abs(before.astype(np.int16) - after.astype(np.int16)).max(axis=2)
        inside = cover > 0.5
        if not inside.any() or diff[inside].mean() < _MIN_CONTRAST:
            continue  # e.g. a black shape on a black background: not a visible difference
        # Faint anti-aliased edge pixels are made identical, so the mask is exactly what differs.
        mask = diff >= synth.MIN_CHANGE
        after = np.where(mask[..., None], after, before)
        if mask.sum() >= max(4, int(0.0005 * h * w)):
            return before, after, mask.astype(np.uint8), caption
    raise AdcopilotError(f"image of shape {img.shape}: could not make a visible change")


# ----------------------------------------------------------------------------------------------
# the sampler


def _to_float(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float32) / 255.0


class PairSampler:
    """Draws stage-1 pairs from procedural instances and licensed photos.

    Args:
        size: output side S in pixels.
        p_normal: probability that the query has no defect (label 0, empty mask).
        p_general: probability of a general spot-the-difference pair.
        sources: any of "procedural", "photos".
        seed: seed of the generator used when :meth:`sample` gets no ``rng``.
    """

    def __init__(
        self,
        size: int = 256,
        *,
        p_normal: float = 0.35,
        p_general: float = 0.1,
        sources: tuple[str, ...] = ("procedural", "photos"),
        seed: int = 0,
        p_photo: float = 0.25,
        p_multi: float = 0.2,
        p_grey: float = 0.25,
        sibling_rate: float = 0.0,
    ) -> None:
        if int(size) < 8:
            raise AdcopilotError(f"size must be at least 8 pixels, got {size}")
        unknown = [s for s in sources if s not in SOURCES]
        if unknown or not sources:
            raise AdcopilotError(f"unknown pair source(s) {unknown or sources}; choose from {', '.join(SOURCES)}")
        for name, p in (("p_normal", p_normal), ("p_general", p_general), ("p_photo", p_photo),
                        ("sibling_rate", sibling_rate)):
            if not 0.0 <= p <= 1.0:
                raise AdcopilotError(f"{name} must be in [0, 1], got {p}")
        if p_normal + p_general > 1.0:
            raise AdcopilotError(f"p_normal + p_general must be at most 1, got {p_normal + p_general}")
        self.size = int(size)
        self.p_normal = float(p_normal)
        self.p_general = float(p_general)
        self.sources = tuple(sources)
        self.p_photo = float(p_photo)
        self.p_multi = float(p_multi)
        self.p_grey = float(p_grey)
        # Pairs of varying materials (procedural.VARYING) that show two different pieces.
        self.sibling_rate = float(sibling_rate)
        self.rng = np.random.default_rng(seed)
        # Photos held out for evaluation never enter training.
        self._photos = (
            [p for p in licensed_normal_images() if p.name not in HELDOUT_FOR_EVALUATION]
            if "photos" in self.sources
            else []
        )
        if "photos" in self.sources and not self._photos:
            log.warning("no licensed photos installed; sampling procedural images only")

    def describe(self) -> dict[str, Any]:
        return {"size": self.size, "p_normal": self.p_normal, "p_general": self.p_general,
                "sources": list(self.sources), "photos": [p.name for p in self._photos]}

    # -- views ----------------------------------------------------------------------------------

    def _photo_views(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, None, str]:
        """Two overlapping crops of one photo, resized to S (the same "product", shifted)."""
        photo = self._photos[int(rng.integers(0, len(self._photos)))]
        img = photo.image
        h, w = img.shape[:2]
        side = int(min(h, w) * rng.uniform(0.3, 0.9))
        side = max(side, min(h, w, 16))
        shift = int(side * 0.06)
        y = int(rng.integers(0, h - side + 1))
        x = int(rng.integers(0, w - side + 1))
        views = []
        for _ in range(2):
            yy = int(np.clip(y + rng.integers(-shift, shift + 1), 0, h - side))
            xx = int(np.clip(x + rng.integers(-shift, shift + 1), 0, w - side))
            crop = img[yy : yy + side, xx : xx + side]
            views.append(cv2.resize(crop, (self.size, self.size), interpolation=cv2.INTER_AREA))
        k, flip = int(rng.integers(0, 4)), bool(rng.random() < 0.5)
        views = [np.rot90(v[:, ::-1] if flip else v, k) for v in views]
        if rng.random() < self.p_grey:
            views = [np.repeat(cv2.cvtColor(np.ascontiguousarray(v), cv2.COLOR_RGB2GRAY)[..., None], 3, 2)
                     for v in views]
        return np.ascontiguousarray(views[0]), np.ascontiguousarray(views[1]), None, f"photo:{photo.name}"

    def _views(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, str]:
        use_photo = bool(self._photos) and (self.sources == ("photos",) or
                                            ("procedural" in self.sources and rng.random() < self.p_photo))
        if use_photo:
            return self._photo_views(rng)
        return procedural.random_normal_pair(rng, self.size, sibling_rate=self.sibling_rate)

    # -- sampling -------------------------------------------------------------------------------

    def sample(self, rng: np.random.Generator | None = None) -> ComparisonPair:
        """One pair; a pure function of ``rng``'s state (the sampler's own generator when None)."""
        rng = self.rng if rng is None else rng
        s = self.size
        ref_base, query_base, region, category = self._views(rng)
        u = rng.random()
        if u < self.p_general:
            before, after, mask, caption = spot_the_difference(query_base, rng)
            # The reference is the "before" copy (another shot of it); the query the changed copy.
            reference = synth.jitter(before, rng, max_shift=0.02, max_rotate_deg=2.0, max_scale=0.02)
            query = synth.photometric(after, rng)
            return ComparisonPair(_to_float(reference), _to_float(query), mask.astype(np.float32), 1,
                                  _general_kind(caption), category)
        reference = synth.jitter(ref_base, rng)
        if u < self.p_general + self.p_normal:
            query, mask, kind = query_base, np.zeros((s, s), np.uint8), "normal"
        else:
            n = int(rng.integers(2, 4)) if rng.random() < self.p_multi else 1
            query, mask, kinds = query_base, np.zeros((s, s), np.uint8), []
            for _ in range(n):
                d = synth.add_defect(query, rng, region=region)
                query, mask = d.image, np.maximum(mask, d.mask)
                kinds.append(d.kind)
            kind = "+".join(kinds)
        # Nuisance on the query too: sometimes a small pose change (the mask moves with it).
        if rng.random() < 0.5:
            m = synth.jitter_transform((s, s), rng, max_shift=0.02, max_rotate_deg=2.0, max_scale=0.02)
            query = synth.warp(query, m)
            mask = (synth.warp(mask.astype(np.float32), m, nearest=False) > 0.5).astype(np.uint8) if mask.any() \
                else mask
        query = synth.photometric(query, rng)
        label = int(mask.any())
        if not label:
            kind = "normal"
        return ComparisonPair(_to_float(reference), _to_float(query), mask.astype(np.float32), label, kind, category)


def _general_kind(caption: str) -> str:
    for k in ("added", "removed", "moved", "changed colour"):
        if k in caption:
            return "recolored" if k == "changed colour" else k
    return "changed"


# ----------------------------------------------------------------------------------------------
# torch wrapper


class PairDataset(torch.utils.data.IterableDataset):
    """An endless-style stream of ``length`` pairs, deterministic for a seed.

    Pair ``i`` is drawn from ``np.random.default_rng([seed, epoch, i])``, so the stream does not
    depend on the number of workers (worker ``k`` of ``n`` yields ``i = k, k + n, ...``). Each item
    is a dict: reference, query (3, S, S) float32 tensors, mask (1, S, S) float32, label (int64
    scalar), kind and category (str).
    """

    def __init__(self, sampler: PairSampler, seed: int = 0, length: int = 10_000) -> None:
        super().__init__()
        if length < 1:
            raise AdcopilotError(f"length must be positive, got {length}")
        self.sampler = sampler
        self.seed = int(seed)
        self.length = int(length)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw different pairs in each epoch (still deterministic)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def item(self, i: int) -> dict[str, Any]:
        """Pair number ``i`` as a dict of tensors."""
        pair = self.sampler.sample(np.random.default_rng([self.seed, self.epoch, int(i)]))
        return {
            "reference": torch.from_numpy(pair.reference).permute(2, 0, 1).contiguous(),
            "query": torch.from_numpy(pair.query).permute(2, 0, 1).contiguous(),
            "mask": torch.from_numpy(pair.mask)[None],
            "label": torch.tensor(pair.label, dtype=torch.int64),
            "kind": pair.kind,
            "category": pair.category,
        }

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        wid, n = (0, 1) if info is None else (info.id, info.num_workers)
        for i in range(wid, self.length, n):
            yield self.item(i)
