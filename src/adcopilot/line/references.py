"""Nearest normal references by a global image feature.

A lot is usually inspected against a folder of normal images that differ among themselves (two
cell types, several product variants, lighting drift over a shift). For each query we pick the
``k`` references that look most alike overall: the global feature is the mean-pooled stride-16
feature of the frozen vision tower (112 channels), L2-normalised, and the nearest references are
those of highest cosine similarity. It is computed at a small size (128 px by default), which is
enough to tell variants apart and costs a quarter of a full-size pass. Reference features are
computed once per bank (the detector's own reference encodings are cached by ``Copilot``).

Usage::

    bank = ReferenceBank.from_paths(["normals/"], tower)
    feats = bank.features_of([query_array_128])          # (1, 112)
    bank.nearest(feats[0], k=2)                           # [(Path, similarity), ...]
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from adcopilot.errors import AdcopilotError
from adcopilot.imaging import load_image, to_float_array
from adcopilot.line.sources import is_image, list_images
from adcopilot.model.backbone import Backbone, load_backbone
from adcopilot.model.detector import Detector, to_batch
from adcopilot.paths import missing_reason

log = logging.getLogger(__name__)

#: Side of the square image the global feature is computed on.
GLOBAL_SIZE = 128
#: Global-feature cosine at or above which a reference is the query's own picture in another file (a copy
#: decodes to the same pixels and the same feature; a brightness change or a re-save as JPEG does not).
COPY_SIMILARITY = 1.0 - 1e-6


def tower_for(detector: Detector) -> Backbone:
    """The detector's own frozen backbone when it has one, else the default pretrained one."""
    tower = getattr(detector, "tower", None)
    return tower if isinstance(tower, Backbone) else load_backbone()


@torch.inference_mode()
def global_features(tower: Backbone, images: Sequence[np.ndarray]) -> torch.Tensor:
    """[(S, S, 3) float in [0, 1]] -> (B, D) unit vectors: the backbone's matching feature."""
    return tower.matching_feature(to_batch(list(images)))


def reference_paths(sources: Sequence[str | os.PathLike]) -> list[Path]:
    """Reference images from folders (recursive) and files, sorted, duplicates removed."""
    if not sources:
        raise AdcopilotError("no normal references given (--refs)")
    out: list[Path] = []
    for src in sources:
        p = Path(src)
        if p.is_dir():
            found = list_images(p)
            if not found:
                raise AdcopilotError(f"{p}: no images found in the reference folder")
            out.extend(found)
        elif p.exists():
            out.append(p)
        elif is_image(p) or os.path.islink(p):
            raise AdcopilotError(f"{p}: {missing_reason(p)}")
        else:
            raise AdcopilotError(f"{p}: no such reference folder or image")
    return list(dict.fromkeys(q.absolute() for q in out))


class ReferenceBank:
    """Normal references with their global features; unreadable ones are skipped and listed."""

    def __init__(self, paths: Sequence[Path], features: torch.Tensor, skipped: list[tuple[str, str]]) -> None:
        self.paths = list(paths)
        self.features = features  # (R, 112), unit vectors
        self.skipped = skipped
        self._index = {p: i for i, p in enumerate(self.paths)}

    def __len__(self) -> int:
        return len(self.paths)

    @classmethod
    def from_paths(
        cls,
        sources: Sequence[str | os.PathLike],
        tower: Backbone,
        *,
        size: int = GLOBAL_SIZE,
        batch_size: int = 16,
        need_features: bool = True,
    ) -> ReferenceBank:
        """Load and validate every reference; compute global features (unless not needed)."""
        paths = reference_paths(sources)
        good: list[Path] = []
        arrays: list[np.ndarray] = []
        skipped: list[tuple[str, str]] = []
        for p in paths:
            try:
                img = load_image(p)
            except AdcopilotError as exc:
                skipped.append((str(p), str(exc)))
                log.warning("skipping reference %s", exc)
                continue
            good.append(p)
            if need_features:
                arrays.append(to_float_array(img, size))
        if not good:
            raise AdcopilotError(f"none of the {len(paths)} reference images can be read ({skipped[0][1]})")
        feats = torch.zeros(len(good), 0)
        if need_features:
            parts = [global_features(tower, arrays[i : i + batch_size]) for i in range(0, len(arrays), batch_size)]
            feats = torch.cat(parts)
        return cls(good, feats, skipped)

    def nearest(self, query_feature: torch.Tensor | None, k: int, exclude: Path | None = None,
                skip_copies: bool = False) -> list[tuple[Path, float]]:
        """The ``k`` most similar references (cosine), best first; ``exclude`` (the query itself
        when it is also a reference) is never chosen, nor with ``skip_copies`` a reference whose global
        feature is the query's (the same picture in another file; kept if nothing else is left).
        Without features: the first ``k``."""
        candidates = [i for i, p in enumerate(self.paths) if p != exclude]
        if not candidates:
            raise AdcopilotError(f"{exclude}: the only reference is the query itself")
        if query_feature is None or self.features.shape[1] == 0:
            return [(self.paths[i], 1.0) for i in candidates[:k]]
        sims = self.features[torch.tensor(candidates)] @ query_feature  # (R',)
        if skip_copies and bool((sims < COPY_SIMILARITY).any()):
            candidates = [i for i, s in zip(candidates, sims.tolist(), strict=True) if s < COPY_SIMILARITY]
            sims = sims[sims < COPY_SIMILARITY]
        # Stable order for equal similarities: by index.
        order = sorted(range(len(candidates)), key=lambda j: (-float(sims[j]), candidates[j]))[:k]
        return [(self.paths[candidates[j]], float(sims[j])) for j in order]
