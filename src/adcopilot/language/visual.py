"""What the language model sees of a query/reference pair: the frozen parts' outputs per sample.

:class:`VisualEncoder` runs the frozen EfficientNet-Lite0 tower and the stage-1 comparison model
(:class:`adcopilot.model.nano.NanoComparisonModel`) exactly as ``Copilot.inspect`` does (images
resized to the model's size, the query registered onto the first reference) and returns a
:class:`VisualInputs`: small tensors that the trainable projectors of
:class:`adcopilot.language.model.NanoCopilot` turn into LLM tokens. Because everything here is
frozen in stages 2 and 3, training precomputes them once per sample (see
:mod:`adcopilot.train.chat_data`), which is what makes the stages fit a CPU budget.

Per image (references first, the query last):

- ``base``   (n, G*G, 152): the tower's stride-8/16 patch features, average-pooled to a G x G grid
  (G = 3, the grid MMAD names regions on); they become the image's *base tokens*;
- ``glob``   (n, 1280): the tower's pooled last-layer features (ImageNet semantics: what the object is).

Per pair (the query compared with all references):

- ``compare`` (L, 576): the Comparison Encoder's comparison tokens (L = 16 comparison queries);
- ``cells``   (G*G, 5 + 304): the dense anomaly head's map read on the same G x G grid of the
  query, in the query's own frame: per cell the peak and mean anomaly probability, the peak
  nearest-reference distance, the fraction of the cell above 0.5 and the image probability, then
  the anomaly-weighted query features in the cell and their difference from the reference's.

Usage::

    enc = VisualEncoder(detector)                      # a NanoDetector (tower + comparison model)
    v = enc.encode("query.png", ["good.png"])          # VisualInputs
    v.base.shape, v.compare.shape, v.cells.shape       # (2, 9, 152), (16, 576), (9, 309)
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from adcopilot.api import _cache_key, _source_name
from adcopilot.imaging import ImageInput, load_image, to_float_array
from adcopilot.model.baseline import normalized_patch_features
from adcopilot.model.detector import to_batch
from adcopilot.model.nano import pooled_score
from adcopilot.model.upsample import upsample_centered
from adcopilot.model.vision import EfficientNetLite0
from adcopilot.registration import register, warp

GRID = 3
FEATURES = 152
GLOBAL = 1280
CELL_STATS = 5
CELL_WIDTH = CELL_STATS + 2 * FEATURES


@dataclass
class VisualInputs:
    """Frozen-model outputs for one sample (see the module docstring for shapes)."""

    base: torch.Tensor  # (n_images, G*G, 152), references first, query last
    glob: torch.Tensor  # (n_images, 1280)
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


def tower_features(tower: EfficientNetLite0, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass: ((B, 152, S/8, S/8) normalised patch features, (B, 1280) pooled head features)."""
    h = tower.stem(x)
    s8 = s16 = h
    for i, block in enumerate(tower._blocks):
        h = block(h)
        if i == 4:
            s8 = h
        elif i == 10:
            s16 = h
    head = F.relu6(tower._bn1(tower._conv_head(h))).mean(dim=(2, 3))  # (B, 1280)
    patches = torch.cat(
        [F.normalize(s8, dim=1), F.normalize(upsample_centered(s16, 2), dim=1)], dim=1
    ) / np.sqrt(2.0)
    return patches, head


def pool_grid(x: torch.Tensor, grid: int = GRID) -> torch.Tensor:
    """(B, C, h, w) -> (B, grid*grid, C) average per cell, cells row by row."""
    return F.adaptive_avg_pool2d(x, grid).flatten(2).transpose(1, 2)


def cell_inputs(
    prob: np.ndarray, dist: np.ndarray, qf: torch.Tensor, rf: torch.Tensor, score: float, grid: int = GRID
) -> torch.Tensor:
    """Per-cell map statistics and features: prob/dist (S, S) in the query frame, qf (152, h, w),
    rf (k, 152, h, w) -> (grid*grid, CELL_WIDTH)."""
    p = torch.from_numpy(np.ascontiguousarray(prob)).float()[None, None]  # (1, 1, h, w)
    d = torch.from_numpy(np.ascontiguousarray(dist)).float()[None, None]
    peak = F.adaptive_max_pool2d(p, grid).flatten()  # (G*G,)
    mean = F.adaptive_avg_pool2d(p, grid).flatten()
    dpeak = F.adaptive_max_pool2d(d, grid).flatten()
    above = F.adaptive_avg_pool2d((p > 0.5).float(), grid).flatten()
    stats = torch.stack([peak, mean, dpeak, above, torch.full_like(peak, score)], dim=1)  # (G*G, 5)
    # Anomaly-weighted features per cell: what the query looks like where it differs.
    w = F.adaptive_avg_pool2d(p, qf.shape[-2:])[0] + 1e-3  # (1, h, w) at the features' resolution
    qw = F.adaptive_avg_pool2d(qf * w, grid) / F.adaptive_avg_pool2d(w, grid)  # (152, G, G)
    rw = F.adaptive_avg_pool2d(rf.mean(0) * w, grid) / F.adaptive_avg_pool2d(w, grid)
    feats = torch.cat([qw, qw - rw], dim=0).flatten(1).T  # (G*G, 304)
    return torch.cat([stats, feats], dim=1)


class VisualEncoder:
    """Frozen tower + stage-1 comparison model -> :class:`VisualInputs` (inspect's preprocessing)."""

    def __init__(self, detector: object, registration: bool = True, cache_size: int = 64) -> None:
        # detector: a NanoDetector (it has .model, .tower, .image_size)
        self.model = detector.model  # type: ignore[attr-defined]
        self.tower = detector.tower  # type: ignore[attr-defined]
        self.size = int(detector.image_size)  # type: ignore[attr-defined]
        self.smooth = float(getattr(self.model.cfg, "smooth_sigma", 0.0))
        self.registration = registration
        self._cache: OrderedDict[str, tuple[np.ndarray, torch.Tensor, torch.Tensor]] = OrderedDict()
        self._cache_size = cache_size

    def _image(self, src: ImageInput, name: str) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        """(array (S, S, 3), patch features (152, h, w), global (1280,)), cached per file."""
        key = _cache_key(src, self.size)
        if key is not None and key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        arr = to_float_array(load_image(src, name=name), self.size)
        with torch.no_grad():
            pf, gf = tower_features(self.tower, to_batch([arr]))
        entry = (arr, pf[0], gf[0])
        if key is not None:
            self._cache[key] = entry
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return entry

    @torch.no_grad()
    def encode(self, query: ImageInput, references: Sequence[ImageInput]) -> VisualInputs:
        refs = [self._image(r, _source_name(r, f"reference {i + 1}")) for i, r in enumerate(references)]
        q_arr, qf, qg = self._image(query, _source_name(query, "query"))
        return self.encode_arrays(q_arr, qf, qg, refs)

    @torch.no_grad()
    def encode_arrays(
        self,
        q_arr: np.ndarray,
        qf: torch.Tensor,
        qg: torch.Tensor,
        refs: list[tuple[np.ndarray, torch.Tensor, torch.Tensor]],
    ) -> VisualInputs:
        reg = register(q_arr, refs[0][0]) if self.registration else None
        aligned = reg is not None and reg.method != "identity"
        if aligned:
            qa_f = normalized_patch_features(self.tower, to_batch([warp(q_arr, reg.matrix)]))  # (1, 152, h, w)
        else:
            qa_f = qf[None]
        rf = torch.stack([r[1] for r in refs])  # (k, 152, h, w)
        out = self.model(qa_f, rf[None])
        h = out["pixel_logits"].shape[-1]
        prob = torch.sigmoid(upsample_centered(out["pixel_logits"], self.size // h))[0, 0].numpy()
        dist = upsample_centered(out["distance"], self.size // h)[0, 0].numpy()
        if self.smooth > 0:
            prob = cv2.GaussianBlur(prob, (0, 0), self.smooth)
        # The same image score as the detector's verdict (``NanoDetector.detect``).
        score = pooled_score(prob, self.model.cfg.topk_frac)
        if aligned:  # back to the query's own frame, where regions are named
            prob = warp(prob, reg.inverse, border="constant")
            dist = warp(dist, reg.inverse, border="constant")
        feats = torch.cat([rf, qf[None]])  # (k+1, 152, h, w)
        return VisualInputs(
            base=pool_grid(feats),  # (k+1, G*G, 152)
            glob=torch.stack([*(r[2] for r in refs), qg]),  # (k+1, 1280)
            compare=out["tokens"][0],  # (L, 576)
            cells=cell_inputs(prob, dist, qf, rf, score),
            score=score,
        )


def sample_key(image: str, references: Sequence[str]) -> str:
    """A stable name for a (query, references) pair, for the precomputed feature store."""
    return hashlib.sha1("\x1f".join([image, *references]).encode()).hexdigest()[:20]
