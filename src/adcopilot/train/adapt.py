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
from adcopilot.errors import AdcopilotError
from adcopilot.model.checkpoint_kind import DEFAULT_CHECKPOINT


@dataclass
class AdaptSampler:
    """Pairs from the user's images; images are uint8 (S, S, 3) at the training size.

    ``groups`` names each good image's variant (its sub-folder, e.g. "mono" / "poly"): a pair's
    reference and query are two images of one variant, since comparing a query with a reference of
    another variant is not what inspection does, and training on such pairs would teach the model
    that the difference between variants is normal. ``defect_groups`` does the same for the
    labelled defective images (a defect whose group no good image has is paired with any group).
    Without groups every image is one variant.
    """

    normals: list[np.ndarray]
    defects: list[np.ndarray]
    p_normal: float = 0.35
    p_defect_image: float = 0.25  # share of pairs drawn from the labelled defective images
    groups: list[str] | None = None
    defect_groups: list[str] | None = None

    def __post_init__(self) -> None:
        if len(self.normals) < 2:
            raise ValueError("adaptation needs at least two good images")
        self.size = self.normals[0].shape[0]
        groups = self.groups if self.groups is not None else [""] * len(self.normals)
        if len(groups) != len(self.normals):
            raise ValueError("one group per good image")
        by_group: dict[str, list[int]] = {}
        for i, g in enumerate(groups):
            by_group.setdefault(g, []).append(i)
        # Variants with a single good image cannot make a pair of their own: they join all the others.
        self._pools = {g: ix for g, ix in by_group.items() if len(ix) >= 2}
        self._group_of = [g if g in self._pools else None for g in groups]
        self._all = list(range(len(self.normals)))
        dgroups = self.defect_groups if self.defect_groups is not None else [""] * len(self.defects)
        if len(dgroups) != len(self.defects):
            raise ValueError("one group per defective image")
        self._defect_pool = [self._pools.get(g, self._all) for g in dgroups]

    def _pool(self, i: int) -> list[int]:
        g = self._group_of[i]
        return self._pools[g] if g is not None else self._all

    def sample(self, rng: np.random.Generator, n_refs: int = 1) -> ComparisonPair:
        """One pair; with ``n_refs`` > 1, ``more_references`` holds other good images of the variant."""
        s = self.size
        if self.defects and rng.random() < self.p_defect_image:
            d = int(rng.integers(len(self.defects)))
            pool = self._defect_pool[d]
            refs = self._references(rng, pool, n_refs, exclude=None)
            query = synth.photometric(self.defects[d], rng)
            # Location unknown: the mask is marked unknown (-1) and only the image loss applies.
            return ComparisonPair(refs[0], _f(query), np.full((s, s), -1.0, np.float32), 1, "labelled", "user",
                                  more_references=tuple(refs[1:]))
        j = int(rng.integers(len(self.normals)))
        refs = self._references(rng, self._pool(j), n_refs, exclude=j)
        base = synth.photometric(self.normals[j], rng)
        if rng.random() < self.p_normal:
            return ComparisonPair(refs[0], _f(base), np.zeros((s, s), np.float32), 0, "normal", "user",
                                  more_references=tuple(refs[1:]))
        d = synth.add_defect(base, rng)
        return ComparisonPair(refs[0], _f(d.image), d.mask.astype(np.float32), 1, d.kind, "user",
                              more_references=tuple(refs[1:]))

    def _references(self, rng: np.random.Generator, pool: list[int], n: int, exclude: int | None) -> list[np.ndarray]:
        """``n`` jittered good images from ``pool`` other than ``exclude`` (repeats only if too few)."""
        cand = [i for i in pool if i != exclude]
        pick = rng.choice(len(cand), n, replace=n > len(cand))
        return [
            _f(synth.jitter(self.normals[cand[int(i)]], rng, max_shift=0.02, max_rotate_deg=2.0, max_scale=0.02))
            for i in pick
        ]


def _f(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float32) / 255.0


def adapt_card(sources: dict[str, Any], base: str, licence_note: str):
    """A card writer for :class:`adcopilot.train.stage1.Stage1Task`."""
    import json

    def write(cfg, metrics: dict[str, Any]) -> str:
        how = (f"The weights of `{base}`, not fine-tuned (`adcopilot adapt --steps 0`): what is adapted is the "
               "product memory below." if cfg.steps == 0 else
               f"Fine-tuned from `{base}` with `adcopilot adapt` (seed {cfg.seed}, {cfg.steps} steps, batch {cfg.batch_size}).")
        return f"""# adcopilot nano — adapted model

{how}

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
    path = DEFAULT_CHECKPOINT if model == "default" else Path(model)
    if not (path / "config.json").exists():
        raise AdcopilotError(f"{path}: not a nano checkpoint folder (no config.json) to adapt from")
    return path
