"""Adaptation of the comparison model to a user's product from good images (and optional bad ones).

``adcopilot adapt --normals DIR [--defects DIR]`` fine-tunes a trained nano checkpoint with the
stage-1 task on the user's own images:

* pairs of two *different* good images of the product (each with pose and light jitter), the
  query carrying a synthetic defect with its exact mask or left normal — this is what teaches the
  model the product's normal variation (e.g. the crystal grain of polycrystalline cells);
* when ``--defects`` is given, (good reference, defective query) pairs with an image-level label
  only: no pixel loss, only the image loss, whose top-k pooled pixel term makes this
  multiple-instance learning (some patch of a defective image must light up, none of a good one).

The result is a new checkpoint folder that ``inspect --model`` takes. Its model card records the
sources; the user is responsible for their images' licence (e.g. ELPV is CC BY-NC-SA 4.0, so a
model adapted on it inherits the non-commercial terms).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from adcopilot.data import synth
from adcopilot.data.pairs import ComparisonPair


@dataclass
class AdaptSampler:
    """Pairs from the user's images; images are uint8 (S, S, 3) at the training size."""

    normals: list[np.ndarray]
    defects: list[np.ndarray]
    p_normal: float = 0.35
    p_defect_image: float = 0.25  # share of pairs drawn from the labelled defective images

    def __post_init__(self) -> None:
        if len(self.normals) < 2:
            raise ValueError("adaptation needs at least two good images")
        self.size = self.normals[0].shape[0]

    def sample(self, rng: np.random.Generator) -> ComparisonPair:
        s = self.size
        i, j = rng.choice(len(self.normals), 2, replace=False)
        reference = synth.jitter(self.normals[i], rng, max_shift=0.02, max_rotate_deg=2.0, max_scale=0.02)
        if self.defects and rng.random() < self.p_defect_image:
            q = self.defects[int(rng.integers(len(self.defects)))]
            query = synth.photometric(q, rng)
            # Location unknown: the mask is marked unknown (-1) and only the image loss applies.
            return ComparisonPair(_f(reference), _f(query), np.full((s, s), -1.0, np.float32), 1, "labelled", "user")
        base = synth.photometric(self.normals[j], rng)
        if rng.random() < self.p_normal:
            return ComparisonPair(_f(reference), _f(base), np.zeros((s, s), np.float32), 0, "normal", "user")
        d = synth.add_defect(base, rng)
        return ComparisonPair(_f(reference), _f(d.image), d.mask.astype(np.float32), 1, d.kind, "user")


def _f(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float32) / 255.0


def adapt_card(sources: dict[str, Any], base: str, licence_note: str):
    """A card writer for :class:`adcopilot.train.stage1.Stage1Task`."""
    import json

    def write(cfg, metrics: dict[str, Any]) -> str:
        return f"""# adcopilot nano — adapted model

Fine-tuned from `{base}` with `adcopilot adapt` (seed {cfg.seed}, {cfg.steps} steps, batch {cfg.batch_size}).

## Data
```json
{json.dumps(sources, indent=2)}
```
Licence: {licence_note}

## Metrics at the end (held-out synthetic pairs on the user's good images)
```json
{json.dumps(metrics, indent=2)}
```
"""

    return write


def default_licence_note() -> str:
    return ("inherits the licence of the user's images listed above; check it before commercial use "
            "(the base model itself is trained only on commercially usable data).")


def resolve_base(model: str) -> Path:
    from adcopilot.errors import AdcopilotError
    from adcopilot.model.registry import DEFAULT_CHECKPOINT

    path = DEFAULT_CHECKPOINT if model == "default" else Path(model)
    if not (path / "config.json").exists():
        raise AdcopilotError(f"{path}: not a nano checkpoint folder (no config.json) to adapt from")
    return path
