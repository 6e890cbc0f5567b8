"""What the language model sees of a query/reference pair: the frozen parts' outputs per sample.

:class:`VisualEncoder` reads the inspection core's output for the pair
(:func:`adcopilot.model.inspection.inspect_arrays`, the same call ``Copilot.inspect`` makes: images
resized to the model's size, the query registered onto the first of up to two references, the product memory
fused in) and the frozen backbone's features of each image, and returns a :class:`VisualInputs`:
small tensors that the trainable projectors of :class:`adcopilot.language.model.NanoCopilot` turn
into LLM tokens. Because everything here is
frozen in stages 2 and 3, training precomputes them once per sample (see
:mod:`adcopilot.train.language_data`), which is what makes the stages fit a CPU budget.

Per image (references first, the query last):

- ``base``   (n, G*G, C): the backbone's dense patch features (C channels, :mod:`adcopilot.model.backbone`), average-pooled to a G x G grid
  (G = 3, the grid MMAD names regions on); they become the image's *base tokens*;
- ``glob``   (n, D): the backbone's global feature (D channels) (ImageNet semantics: what the object is).

Per pair (the query compared with all references):

- ``compare`` (L, 576): the Comparison Encoder's comparison tokens (L = 16 comparison queries);
- ``cells``   (G*G, 5 + 2C): the detector's anomaly map read on the same G x G grid of the
  query, in the query's own frame: per cell the peak and mean anomaly probability, the peak
  nearest-reference distance, the fraction of the cell above 0.5 and the image probability, then
  the anomaly-weighted query features in the cell and their difference from the reference's.

Usage::

    enc = VisualEncoder(detector)                      # a NanoDetector (tower + comparison model)
    v = enc.encode("query.png", ["good.png"])          # VisualInputs
    v.base.shape, v.compare.shape, v.cells.shape       # (2, 9, C), (16, 576), (9, 5 + 2C)
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from adcopilot.caches import put_bounded
from adcopilot.imaging import (
    DRAFT,
    ImageInput,
    full_size,
    load_image,
    pair_deblock,
    peek_size,
    to_float_array,
)
from adcopilot.inputs import frame_key, reference_names, smoothed_key, source_name
from adcopilot.model.backbone import backbone_spec
from adcopilot.model.detector import to_batch
from adcopilot.model.focus import matching_sigma, sharpness, soften
from adcopilot.model.framing import frame_references
from adcopilot.model.inspection import in_common_frame, inspect_arrays, into_frame
from adcopilot.model.nano import NanoComparisonModel, NanoDetector

GRID = 3
#: The sizes of the backbone the language model reads (its checkpoints do not name another yet).
FEATURES = backbone_spec().channels  # C
GLOBAL = backbone_spec().global_channels  # G
CELL_STATS = 5
#: Bytes the encoder's image cache may hold (64 entries of about 8.5 MB at 256 px once a reference's views are made).
VISUAL_CACHE_BYTES = 256 * 2**20
CELL_WIDTH = CELL_STATS + 2 * FEATURES


@dataclass
class VisualInputs:
    """Frozen-model outputs for one sample (see the module docstring for shapes)."""

    base: torch.Tensor  # (n_images, G*G, C), references first, query last
    glob: torch.Tensor  # (n_images, D)
    compare: torch.Tensor  # (L, 576)
    cells: torch.Tensor  # (G*G, CELL_WIDTH)
    score: float = 0.0  # the detector's image score (its verdict compares it with the threshold)

    @property
    def n_refs(self) -> int:
        return int(self.base.shape[0]) - 1

    def to_tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        """Flat dict for safetensors (``prefix`` names the sample)."""
        return {
            f"{prefix}.base": self.base.contiguous(),
            f"{prefix}.glob": self.glob.contiguous(),
            f"{prefix}.compare": self.compare.contiguous(),
            f"{prefix}.cells": self.cells.contiguous(),
            f"{prefix}.score": torch.tensor([self.score], dtype=torch.float32),
        }

    def rescored(self, threshold: float, trained: float) -> VisualInputs:
        """A copy whose image score (also in ``cells``) is mapped monotonically so that
        ``threshold`` (the verdict's) lands on ``trained`` (the score the language model learned
        to call defective), 0 on 0 and 1 on 1: the model then reads a verdict agreeing with
        ``threshold`` together with a score that agrees with its verdict."""
        s = rescale_score(self.score, threshold, trained)
        cells = self.cells.clone()
        cells[:, CELL_STATS - 1] = s
        return VisualInputs(base=self.base, glob=self.glob, compare=self.compare, cells=cells, score=s)

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], prefix: str) -> VisualInputs:
        return cls(
            base=tensors[f"{prefix}.base"].float(),
            glob=tensors[f"{prefix}.glob"].float(),
            compare=tensors[f"{prefix}.compare"].float(),
            cells=tensors[f"{prefix}.cells"].float(),
            score=float(tensors[f"{prefix}.score"][0]),
        )


def rescale_score(score: float, threshold: float, trained: float) -> float:
    """Piecewise-linear map of [0, 1] onto itself taking ``threshold`` to ``trained``."""
    t = min(max(float(threshold), 1e-6), 1 - 1e-6)
    if score < t:
        return float(score) * trained / t
    return trained + (float(score) - t) * (1.0 - trained) / (1.0 - t)


def pool_grid(x: torch.Tensor, grid: int = GRID) -> torch.Tensor:
    """(B, C, h, w) -> (B, grid*grid, C) average per cell, cells row by row."""
    return F.adaptive_avg_pool2d(x, grid).flatten(2).transpose(1, 2)


def cell_inputs(
    prob: np.ndarray, dist: np.ndarray, qf: torch.Tensor, rf: torch.Tensor, score: float, grid: int = GRID
) -> torch.Tensor:
    """Per-cell map statistics and features: prob/dist (S, S) in the query frame, qf (C, h, w),
    rf (k, C, h, w) -> (grid*grid, CELL_WIDTH)."""
    p = torch.from_numpy(np.ascontiguousarray(prob)).float()[None, None]  # (1, 1, h, w)
    d = torch.from_numpy(np.ascontiguousarray(dist)).float()[None, None]
    peak = F.adaptive_max_pool2d(p, grid).flatten()  # (G*G,)
    mean = F.adaptive_avg_pool2d(p, grid).flatten()
    dpeak = F.adaptive_max_pool2d(d, grid).flatten()
    above = F.adaptive_avg_pool2d((p > 0.5).float(), grid).flatten()
    stats = torch.stack([peak, mean, dpeak, above, torch.full_like(peak, score)], dim=1)  # (G*G, 5)
    # Anomaly-weighted features per cell: what the query looks like where it differs.
    w = F.adaptive_avg_pool2d(p, qf.shape[-2:])[0] + 1e-3  # (1, h, w) at the features' resolution
    qw = F.adaptive_avg_pool2d(qf * w, grid) / F.adaptive_avg_pool2d(w, grid)  # (C, G, G)
    rw = F.adaptive_avg_pool2d(rf.mean(0) * w, grid) / F.adaptive_avg_pool2d(w, grid)
    feats = torch.cat([qw, qw - rw], dim=0).flatten(1).T  # (G*G, 2C)
    return torch.cat([stats, feats], dim=1)


@dataclass
class _Image:
    """One image as the encoder keeps it (cached per file)."""

    array: np.ndarray  # (S, S, 3) float in [0, 1]
    patches: torch.Tensor  # (C, h, w) dense patch features
    glob: torch.Tensor  # (D,) global feature
    encoded: Any = None  # the detector's encoding as a reference, made when the image is one


class VisualEncoder:
    """The inspection core's output for a pair -> :class:`VisualInputs`.

    Map, distance and image score are the detector's (:func:`adcopilot.model.inspection.inspect_arrays`,
    the product memory's fusion included), so the language model reads the score ``inspect``
    reports. ``comparison``: the comparison model the language model was trained with, when it
    differs from the detector's; it then gives the comparison tokens."""

    def __init__(
        self,
        detector: NanoDetector,
        registration: bool = True,
        cache_size: int = 64,
        comparison: NanoComparisonModel | None = None,
        cache_bytes: int | None = VISUAL_CACHE_BYTES,
    ) -> None:
        self.detector = detector
        self.comparison = comparison
        self.tower = detector.tower
        self.size = int(detector.image_size)
        self.registration = registration
        # As ``Copilot``: a compressed JPEG query and its references smoothed alike; references softened to a
        # softer query (``imaging.pair_deblock``, :mod:`adcopilot.model.focus`).
        self.deblock = True
        self.refocus = False
        self._cache: OrderedDict[str, _Image] = OrderedDict()
        self._cache_size = cache_size
        self._cache_bytes = cache_bytes  # the images' features and reference encodings (caches.put_bounded)

    def _image(
        self, src: ImageInput, name: str, first: tuple[ImageInput, np.ndarray] | None = None, smooth: float = 0.0,
        soft: float = 0.0, loaded: Image.Image | None = None,
    ) -> _Image:
        """An image's features (cached); with ``first`` (a reference set's first: source, array), the reference in
        that one's frame (:func:`into_frame`), as the inspection core compares it; ``smooth`` and ``soft`` as
        ``Copilot`` applies them, each variant cached apart; ``loaded``: the image already decoded."""
        key = smoothed_key(smoothed_key(frame_key(src, None if first is None else first[0], self.size), smooth), soft, "^")
        if key is not None and key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        if first is None:
            img = loaded if loaded is not None else load_image(src, name=name, draft=DRAFT * self.size)
            arr = soften(to_float_array(img, self.size, smooth), soft)
        else:
            own = self._image(src, name, smooth=smooth, soft=soft)
            arr = into_frame(own.array, first[1])
            if arr is own.array:
                return own
        with torch.no_grad():
            pf, gf = self.tower.features(to_batch([arr]))
        entry = _Image(arr, pf[0], gf[0])
        if key is not None:
            put_bounded(self._cache, key, entry, self._cache_size, self._cache_bytes)
        return entry

    @torch.no_grad()
    def encode(self, query: ImageInput, references: Sequence[ImageInput]) -> VisualInputs:
        names = reference_names(references)
        qname = source_name(query, "query")
        qimg = load_image(query, name=qname, draft=DRAFT * self.size)  # as ``Copilot`` decodes it
        smooth = pair_deblock(qimg, references, DRAFT * self.size).sigma if self.deblock else 0.0
        q = self._image(query, qname, smooth=smooth, loaded=qimg)  # a query needs no reference encoding
        # References framed unlike the query: chosen as ``Copilot`` chooses them (the same rule on the same arrays).
        references, _ = frame_references(q.array, full_size(qimg), references, names, peek_size,
                                         lambda r, n: self._image(r, n, smooth=smooth).array, bool(self.registration))
        taken = [self._image(r, n, smooth=smooth) for r, n in zip(references, names, strict=True)]
        sharp = sharpness(q.array) if self.refocus else 0.0
        soft = [matching_sigma(sharp, r.array) if self.refocus else 0.0 for r in taken]
        onto = (references[0], taken[0].array) if in_common_frame(self.registration, len(references)) else None
        plain = [self._image(r, n, smooth=smooth, soft=s) for r, n, s in zip(references, names, soft, strict=True)]
        refs = plain[:1] + [self._image(r, n, onto, smooth, s) if onto is not None else p
                            for r, n, s, p in zip(references[1:], names[1:], soft[1:], plain[1:], strict=True)]
        for r in refs + plain:
            if r.encoded is None:
                r.encoded = self.detector.encode_reference(r.array)
        core = inspect_arrays(self.detector, q.array, [(r.array, r.encoded) for r in refs],
                              registration=self.registration, with_tokens=self.comparison is None,
                              as_taken=[(r.array, r.encoded) for r in plain])
        if core.registration.method == "identity":  # compared with the references as taken (compared_references)
            refs = plain
        assert core.distance is not None and core.features is not None  # a nano detector gives both
        rf = torch.stack([r.patches for r in refs])  # (k, C, h, w)
        tokens = core.tokens
        if self.comparison is not None:  # the language model's own comparison model
            tokens = self.comparison(core.features[None], rf[None])["tokens"]
        assert tokens is not None
        feats = torch.cat([rf, q.patches[None]])  # (k+1, C, h, w)
        return VisualInputs(
            base=pool_grid(feats),  # (k+1, G*G, C)
            glob=torch.stack([*(r.glob for r in refs), q.glob]),  # (k+1, D)
            compare=tokens.reshape(tokens.shape[-2:]).clone(),  # (L, 576); a clone is no inference tensor
            cells=cell_inputs(core.amap, core.distance, q.patches, rf, core.score),
            score=core.score,
        )


def sample_key(image: str, references: Sequence[str]) -> str:
    """A stable name for a (query, references) pair, for the precomputed feature store."""
    return hashlib.sha1("\x1f".join([image, *references]).encode()).hexdigest()[:20]
