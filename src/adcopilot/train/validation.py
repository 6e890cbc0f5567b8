"""Adaptation's validation split: a held-out measure of the adapted model, per memory weight.

``adcopilot adapt`` holds a seeded share of each variant's images out of fine-tuning and out of the
product memory (:mod:`adcopilot.model.memory`), then inspects them 1-shot as inspection would
(registered onto a reference drawn from the variant's training images). The model card reports the
image AUROC for every weight of the memory's map in the fused map (0: the comparison model alone,
1: the memory alone): a figure on the user's own images that training never saw.

Which map deserves more trust depends on the product (on ELPV's mono cells the memory, on poly cells
the fine-tuned comparison), so ``--memory-weight auto`` keeps, per variant, the weight with the best
validation AUROC. That choice is only as good as the validation set: after fine-tuning on ELPV, with 31
and 40 held-out defective cells, it picked the opposite of what the 450- and 661-cell test split
preferred, so fine-tuned models keep 0.5. For a memory-only adaptation (``--steps 0``) it is the
default: there it kept what the test split also preferred (0.75 on mono cells, 1 on poly; see
benchmarks/RESULTS.md).

* Anomalous validation queries: the variant's held-out labelled defective images when there are
  at least :data:`MIN_REAL_DEFECTS` of them (what the user cares about), otherwise synthetic
  defects (:func:`adcopilot.data.synth.add_defect`, seeded) on the held-out good images.
* Normal validation queries: the held-out good images.
* Weights tried: :data:`WEIGHTS`. With PaDiM statistics in the memory (:mod:`adcopilot.model.padim`),
  the memory's side is measured at each PaDiM share of :data:`SHARES` too (0: the nearest-patch map, 1:
  PaDiM alone; the image score takes PaDiM's own, its map's peak, by the share).
* Kept: the simplest (share, weight) whose AUROC lies within one standard error of the best (the
  one-standard-error rule; :func:`choose_within`): a validation of some tens of images cannot tell
  pairs closer than that apart, and weight 1 is the faster model (the comparison model is skipped).
* The split is a pure function of the sorted file list, the fraction and the seed, and is written
  beside the model (``validation.json``), so it can be checked and reproduced.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from adcopilot.data import synth

log = logging.getLogger(__name__)

WEIGHTS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
SHARES: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)  # PaDiM's share of the memory's map and score
MIN_GROUP = 10  # a variant with fewer good images keeps all of them for training
MIN_REAL_DEFECTS = 5


def holdout(
    groups: Sequence[str], fraction: float, seed: int, salt: int = 0, min_group: int = MIN_GROUP, min_held: int = 1
) -> list[bool]:
    """Which images are held out: a seeded ``fraction`` (at least one) of every group of at least
    ``min_group`` images, when that makes ``min_held`` images or more. ``salt`` keeps the good and the
    defective images' splits independent."""
    held = [False] * len(groups)
    if fraction <= 0:
        return held
    rng = np.random.default_rng([seed, salt])
    for g in sorted(set(groups)):
        idx = [i for i, x in enumerate(groups) if x == g]
        if len(idx) < min_group:
            continue
        n = max(1, int(round(fraction * len(idx))))
        if n < min_held:
            continue
        for i in rng.permutation(idx)[:n]:
            held[int(i)] = True
    return held


def validation_split(
    groups: Sequence[str], defect_groups: Sequence[str], fraction: float, seed: int, all_defects: bool = False
) -> tuple[list[bool], list[bool]]:
    """Which good and which defective images are held out. Defects are held out only for variants
    that have held-out good images (elsewhere they would measure nothing and only leave training);
    ``all_defects`` (nothing is trained on them: ``adapt --steps 0``): every defect of such a variant."""
    held_good = holdout(groups, fraction, seed, salt=0)
    measured = {g for g, h in zip(groups, held_good, strict=True) if h}
    held = [True] * len(defect_groups) if all_defects else holdout(defect_groups, fraction, seed, salt=1,
                                                                   min_held=MIN_REAL_DEFECTS)
    return held_good, [h and g in measured for h, g in zip(held, defect_groups, strict=True)]


Side = np.ndarray | tuple[np.ndarray, float]  # the memory's map, or (map, value added to its pooled score)


@dataclass
class VariantChoice:
    """The validation of one variant: AUROC per weight (at the PaDiM share kept), the weight and share kept,
    and the AUROC per share and weight where PaDiM was measured."""

    weight: float
    auroc: dict[float, float]
    normals: int
    anomalies: int
    anomaly_source: str  # "labelled" or "synthetic"
    share: float = 0.0
    by_share: dict[float, dict[float, float]] = field(default_factory=dict)
    normal_scores: list[float] = field(default_factory=list)  # the held-out good images' scores, as kept


#: The share of good parts an adapted model's own threshold is set to flag (its held-out good images' quantile).
NORMAL_QUANTILE = 0.95
#: Good images' scores the adapted threshold needs at least; with fewer the model's threshold stays.
MIN_THRESHOLD_IMAGES = 10


def normal_threshold(choices: dict[str, VariantChoice], more: Sequence[float] = ()) -> tuple[float, int] | None:
    """(threshold, good images it rests on): the ``NORMAL_QUANTILE`` of the held-out good images' scores
    over all variants (each scored against a memory without them, as inspection scores) and of ``more``
    such scores, or None without any. With few images it sits near their highest score, so a new good
    part is flagged more often than 5 %; ``calibrate`` with labelled parts sets it by the costs instead."""
    scores = [v for c in choices.values() for v in c.normal_scores] + list(more)
    if not scores:
        return None
    return float(np.quantile(scores, NORMAL_QUANTILE)), len(scores)


def choose_weight(aurocs: dict[float, float]) -> float:
    """The weight with the best AUROC; ties to the one nearest 0.5."""
    return choose_share({0.0: aurocs})[1]


def choose_share(by_share: dict[float, dict[float, float]], fixed: float | None = None) -> tuple[float, float]:
    """(share, weight) with the best AUROC (at weight ``fixed`` when given); ties to the smaller share, then
    as :func:`choose_weight`."""
    cands = [(s, w, a) for s, row in by_share.items() for w, a in row.items() if fixed is None or w == fixed]
    best = max(a for _, _, a in cands)
    share, weight, _ = min((c for c in cands if c[2] >= best - 1e-9), key=lambda c: (c[0], abs(c[1] - 0.5), c[1]))
    return share, weight


def auroc_standard_error(auroc: float, positives: int, negatives: int) -> float:
    """The standard error of an AUROC measured on this many positives and negatives (Hanley and McNeil 1982)."""
    a = min(max(auroc, 1e-6), 1 - 1e-6)
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (positives - 1) * (q1 - a * a) + (negatives - 1) * (q2 - a * a)) / (positives * negatives)
    return float(np.sqrt(max(var, 0.0)))


def choose_within(by_share: dict[float, dict[float, float]], tolerance: float,
                  fixed: float | None = None) -> tuple[float, float]:
    """(share, weight): the simplest pair whose AUROC lies within ``tolerance`` of the best (at weight ``fixed``
    when given). Simplest, in order: memory weight 1 (inspection then skips the comparison model), PaDiM
    share 0 (no statistics stored, no second tower pass), the share nearest 0.5 (both normality models
    counted alike), then the best AUROC and :func:`choose_share`'s ties."""
    cands = [(s, w, a) for s, row in by_share.items() for w, a in row.items() if fixed is None or w == fixed]
    best = max(a for _, _, a in cands)
    near = [c for c in cands if c[2] >= best - tolerance - 1e-9]
    share, weight, _ = min(near, key=lambda c: (c[1] != 1.0, c[0] != 0.0, abs(c[0] - 0.5), -c[2], c[0],
                                                abs(c[1] - 0.5), c[1]))
    return share, weight


def validate(
    maps: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, Side | dict[float, Side] | None]],
    score: Callable[[np.ndarray], float],
    train_good: dict[str, list[np.ndarray]],
    val_good: dict[str, list[np.ndarray]],
    val_defects: dict[str, list[np.ndarray]],
    seed: int,
    fixed: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, VariantChoice]:
    """Per variant, the validation image AUROC at each memory weight, and the weight kept: ``fixed``,
    or (None) the best one.

    ``maps(query, reference)`` (uint8 (S, S, 3) images) returns the comparison model's and the
    memory's (S, S) maps (None without a memory: only weight 0 is measured; a dict: the memory's side
    at each PaDiM share, all measured: a map, or (map, value added after pooling) where PaDiM's peak
    enters the score, see :meth:`adcopilot.model.memory.MemoryMaps.scored`); ``score(map)`` pools a
    fused map into the image score.
    Variants without held-out good images are left out.
    """
    rng = np.random.default_rng([seed, 2])
    out: dict[str, VariantChoice] = {}
    for name in sorted(val_good):
        goods, refs = val_good[name], train_good.get(name, [])
        if not goods or not refs:
            continue
        real = val_defects.get(name, [])
        if len(real) >= MIN_REAL_DEFECTS:
            anomalies, source = list(real), "labelled"
        else:
            anomalies, source = [synth.add_defect(g, rng).image for g in goods], "synthetic"
        labels = [0] * len(goods) + [1] * len(anomalies)
        weights = WEIGHTS if fixed is None or fixed in WEIGHTS else (*WEIGHTS, fixed)
        scores: dict[tuple[float, float], list[float]] = {}  # per (share, weight); the maps are not kept
        for q in [*goods, *anomalies]:
            ref = refs[int(rng.integers(len(refs)))]
            m_cmp, m_mem = maps(q, ref)
            sides = {} if m_mem is None else m_mem if isinstance(m_mem, dict) else {0.0: m_mem}
            if not sides:
                scores.setdefault((0.0, 0.0), []).append(score(m_cmp))
            for share, side in sides.items():
                m, added = side if isinstance(side, tuple) else (side, 0.0)
                for w in weights:
                    scores.setdefault((share, w), []).append(score((1 - w) * m_cmp + w * m) + w * added)
            if progress:
                progress(1)
        by_share: dict[float, dict[float, float]] = {}
        for (share, w), s in scores.items():
            by_share.setdefault(share, {})[w] = round(float(roc_auc_score(labels, s)), 4)
        # Differences within the AUROC's standard error on these few images are noise: the simplest pair
        # within it is kept (on ELPV's validation cells, synthetic defects moved the best weight between 0.75 and
        # 1 with every change of the score, while the labelled defects preferred 1 on poly cells by 0.025).
        best = max(a for row in by_share.values() for a in row.values())
        se = auroc_standard_error(best, len(anomalies), len(goods))
        share, kept = (0.0, 0.0) if len(scores) == 1 else choose_within(by_share, se, fixed)
        out[name] = VariantChoice(kept, by_share[share], len(goods), len(anomalies), source, share,
                                  by_share if len(by_share) > 1 else {}, scores[(share, kept)][: len(goods)])
        log.info("variant %r: memory weight %.2f, PaDiM share %.2f (AUROC by share and weight %s)", name or ".",
                 kept, share, by_share)
    return out


Held = tuple[Path | None, Sequence[Path], Sequence[bool]]  # (folder, files, held-out flags)


def write_split(path: Path, normals: Held, defects: Held, fraction: float, seed: int) -> None:
    """``validation.json``: the held-out files, relative to their folders (the defects' folder may be None)."""
    import json

    def rel(folder: Path | None, paths: Sequence[Path], held: Sequence[bool]) -> list[str]:
        return [p.relative_to(folder).as_posix() for p, h in zip(paths, held, strict=True) if h] if folder else []

    doc = {"fraction": fraction, "seed": seed, "normals": rel(*normals), "defects": rel(*defects)}
    path.write_text(json.dumps(doc, indent=1))
