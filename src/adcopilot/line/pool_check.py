"""The reference pool checked as a whole before a batch: a reference that does not belong, named up front.

A folder of good parts is kept by hand, and mistakes get into it: a scrap part filed among the good ones, a
frame taken with the light off, a picture of another product. Each such reference is chosen for the queries
that look most like it, and then hides their defects or raises false alarms, one query at a time. Before a
batch, every reference is compared with the others, with nothing but the pool itself:

- the global image check (:func:`adcopilot.model.sanity.check_image`) against the other references'
  profiles: a blank, badly exposed or blurred frame, or another product;
- the lot's mutual score (:mod:`adcopilot.model.mutual`, both passes as ``batch --mutual`` runs them): each
  reference's patches against their closest matches in the other references. Most of the pool is normal, so
  a reference ``mad_k`` robust deviations above the pool's median (:func:`adcopilot.model.mutual.lot_threshold`)
  holds something the others do not show: it may show a defect.

The check names; it changes nothing (the references are used as given): a flag is a reason to look at the
picture, and a pool with two product variants can flag the rarer one. Pools smaller than ``MIN_POOL`` are not
scored (their median says nothing); the per-set check of :mod:`adcopilot.model.reference_check` still runs on
each inspection.

A batch writes what it found to ``reference-check.json`` in its output folder (read again when the run
resumes with the same references and model); the report lists it under "References to look at". Pools
larger than ``MAX_COMPARED`` are compared with an evenly spaced sample of that many (the cost stays linear).

Usage::

    findings = check_pool(copilot, bank.paths)     # [PoolFinding(path, reason, score), ...]
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from adcopilot.api import Copilot
from adcopilot.line.lot_features import encode_lot, lot_checks, lot_tower
from adcopilot.line.records import CHECK_FILE
from adcopilot.line.sources import LotItem
from adcopilot.model.mutual import (
    LotViews,
    MutualRecipe,
    image_scores,
    lot_image_scores,
    lot_threshold,
    mutual_patch_scores,
    pool_of,
)

log = logging.getLogger(__name__)

#: Fewest references whose mutual scores are compared with their median.
MIN_POOL = 5
#: Robust deviations above the pool's median mutual score at which a reference is named
#: (benchmarks/bench_pool_check.py: chosen on ELPV training cells, see benchmarks/RESULTS.md).
POOL_MAD_K = 4.0
#: Most references each one is compared with in the first pass (an evenly spaced sample of a larger pool).
MAX_COMPARED = 200


@dataclass(frozen=True)
class PoolFinding:
    """A reference the pool's check names, and why."""

    path: Path
    reason: str
    score: float | None = None  # its mutual score, when that is the reason

    def note(self) -> str:
        return f"reference {self.path.name}: {self.reason}"


def _spread(indices: list[int]) -> list[int]:
    """At most ``MAX_COMPARED`` of the indices, evenly spaced."""
    if len(indices) <= MAX_COMPARED:
        return indices
    return [indices[i] for i in np.linspace(0, len(indices) - 1, MAX_COMPARED).round().astype(int)]


def pool_scores(lot_views: LotViews, recipe: MutualRecipe, progress: bool = False) -> np.ndarray:
    """The pool's views -> (N,) mutual image scores: each reference against the others, then against those
    the first pass judged normal (the recipe's second pass), as ``batch --mutual`` scores a lot."""
    n = len(lot_views.global_features)
    sample = None if n <= MAX_COMPARED else _spread(list(range(n)))
    passes = 1 if recipe.pool_k is None else 2
    with tqdm(total=passes * n, unit="img", desc="references, compared", disable=not progress, dynamic_ncols=True) as bar:
        first = mutual_patch_scores(lot_views, recipe.interval, pool=sample, twin_ratio=recipe.twin_ratio,
                                    progress=bar.update)  # (N, P)
        values = first
        if recipe.pool_k is not None:
            pool = _spread(pool_of(image_scores(first, recipe.top_k), recipe.pool_k))  # two at least
            values = mutual_patch_scores(lot_views, recipe.pool_interval, pool=pool, twin_ratio=recipe.twin_ratio,
                                         progress=bar.update)
    return lot_image_scores(values, lot_views.global_features, recipe).numpy().astype(np.float64)


def check_pool(
    copilot: Copilot, paths: Sequence[Path], mad_k: float = POOL_MAD_K, recipe: MutualRecipe | None = None,
    workers: int = 2, progress: bool = False,
) -> list[PoolFinding]:
    """Each reference of the pool against the others: the ones that fail the image check or score far above
    the pool's median, with the reason (unreadable files are left to the bank, which lists them)."""
    recipe = recipe or MutualRecipe()
    if len(paths) < 2:
        return []
    items = [LotItem(Path(p), str(p)) for p in paths]
    lot = encode_lot(items, lot_tower(copilot), copilot.detector.image_size, recipe, workers, progress=progress)
    found: dict[Path, PoolFinding] = {}
    for item, reason in zip(lot.items, lot_checks(lot.profiles, copilot.check_rules), strict=True):
        if reason is not None:
            found[item.path] = PoolFinding(item.path, reason)
    if len(lot.items) >= MIN_POOL:
        scores = pool_scores(lot.views, recipe, progress)
        thr = lot_threshold(scores, mad_k)
        log.info("reference pool of %d: mutual threshold %.4f (median %.4f)", len(scores), thr, float(np.median(scores)))
        for item, s in zip(lot.items, scores, strict=True):
            if s >= thr and item.path not in found:
                found[item.path] = PoolFinding(
                    item.path, f"unlike the other references (mutual score {s:.3f}, the pool's limit {thr:.3f}): "
                    "look at it, it may show a defect or a view the others lack", float(s))
    out = [found[it.path] for it in lot.items if it.path in found]
    for f in out:
        log.warning("%s", f.note())
    return out


def has_tower(copilot: Copilot) -> bool:
    """Whether the model has the frozen vision tower the check compares references with."""
    det = copilot.detector
    return getattr(det, "fused_tower", None) is not None or getattr(det, "tower", None) is not None


def checked_pool(
    copilot: Copilot, paths: Sequence[Path], out: Path, key: dict[str, Any], progress: bool = False,
) -> list[PoolFinding]:
    """:func:`check_pool`'s findings for a batch in ``out``: read from ``CHECK_FILE`` when an earlier run
    wrote them for the same ``key`` (model and references), else found and written there."""
    path = out / CHECK_FILE
    key = {**key, "mad_k": POOL_MAD_K, "max_compared": MAX_COMPARED}
    try:
        old = json.loads(path.read_text())
        if isinstance(old, dict) and old.get("key") == key:
            return [PoolFinding(Path(f["reference"]), f["reason"], f.get("score")) for f in old["findings"]]
    except (OSError, ValueError, KeyError, TypeError):
        pass  # absent or unreadable: found again
    found = check_pool(copilot, paths, progress=progress)
    payload = {"key": key, "checked": len(paths),
               "findings": [{"reference": str(f.path), "reason": f.reason, "score": f.score, "note": f.note()}
                            for f in found]}
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # shards may write it at the same time
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)
    return found
