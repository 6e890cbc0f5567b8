"""A line's tolerance sheet: how far its light, camera and part placement may drift from the references',
measured on the line's own good (and, if given, defective) images.

Every image is changed by each capture condition (:mod:`adcopilot.line.capture`) and inspected against the
references at the copilot's threshold; per condition, the share of good images flagged, their median score, the
share the image check calls not the product, and with defective images the misses and the image AUROC. A
condition whose false alarms rise well above its baseline's (the images as taken; for the pose conditions their
centred window) is one to hold steady on the line, or to cover with references taken under it. An unreadable
image is skipped and named; the rest are measured.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from adcopilot.api import Copilot
from adcopilot.errors import AdcopilotError, ImageError
from adcopilot.imaging import load_image, to_float_array
from adcopilot.line.capture import AS_TAKEN, WINDOW, Condition, conditions, window
from adcopilot.line.references import GLOBAL_SIZE, ReferenceBank, global_features, tower_for
from adcopilot.metrics import auroc

log = logging.getLogger(__name__)

#: A condition is said to cost when its false alarms exceed its baseline's by at least this share of good images.
COSTLY = 0.10
#: Above this share of good images flagged as taken, the threshold does not suit the line yet (fewer references
#: than it needs, or no calibration): the sheet says so before its rises.
HIGH_BASE = 0.20


@dataclass
class ToleranceRow:
    """One condition's figures (shares in [0, 1]; ``misses`` and ``auroc`` None without defective images)."""

    condition: str
    baseline: str  # the row this one is read against
    false_alarms: float
    median_normal_score: float
    not_the_product: float
    misses: float | None = None
    auroc: float | None = None


@dataclass
class ToleranceReport:
    rows: list[ToleranceRow]
    good: int
    defective: int
    references: int
    threshold: float
    model: str
    skipped: list[str] = field(default_factory=list)  # "path: reason"
    shots: int | None = None  # references each image was compared with (its nearest, from ``references``)

    def row(self, name: str) -> ToleranceRow:
        return next(r for r in self.rows if r.condition == name)

    def costly(self) -> list[tuple[ToleranceRow, float]]:
        """The conditions whose false alarms exceed their baseline's by ``COSTLY`` or more, with the rise."""
        out = []
        for r in self.rows:
            rise = r.false_alarms - self.row(r.baseline).false_alarms
            if r.condition != r.baseline and rise >= COSTLY - 1e-9:
                out.append((r, rise))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {**{k: v for k, v in asdict(self).items() if k != "rows"}, "rows": [asdict(r) for r in self.rows],
                "costly": [r.condition for r, _ in self.costly()]}


def choose_conditions(size: int, names: Sequence[str] | None) -> dict[str, Condition]:
    """The conditions asked for (all when ``names`` is empty), with the baselines they are read against."""
    every = conditions(size)
    if not names:
        return every
    unknown = [n for n in names if n not in every]
    if unknown:
        raise AdcopilotError(f"unknown condition {', '.join(map(repr, unknown))}; choose from {', '.join(every)}")
    keep = {AS_TAKEN, *names}
    if any(every[n].pose for n in names):
        keep.add(_window_name())
    return {k: v for k, v in every.items() if k in keep}


def _window_name() -> str:
    return f"window {100 * WINDOW:.0f} %"


def measure_tolerance(
    copilot: Copilot,
    good: Sequence[Path],
    references: Sequence[Path],
    defective: Sequence[Path] = (),
    names: Sequence[str] | None = None,
    seed: int = 0,
    progress: bool = True,
    shots: int | None = None,
) -> ToleranceReport:
    """The tolerance sheet of ``good`` (and ``defective``) images against ``references`` (see the module): each
    image against all of them, or with ``shots`` against its ``shots`` nearest, chosen as ``batch`` chooses them
    (on the image as taken, then kept for every condition)."""
    if not good:
        raise AdcopilotError("no good images in --good: the false alarms are counted on them")
    if shots is not None and shots < 1:
        raise AdcopilotError(f"--shots must be at least 1, got {shots}")
    chosen = choose_conditions(copilot.detector.image_size, names)
    bank, tower = None, None
    if shots is not None and shots < len(references):
        tower = tower_for(copilot.detector)
        bank = ReferenceBank.from_paths(references, tower)
        references = bank.paths  # the readable ones
    windows: dict[Path, np.ndarray] = {}  # a reference's centred window, for the pose conditions

    def window_of(ref: Path) -> np.ndarray:
        if ref not in windows:  # a bad reference ends the run: nothing can be measured against it
            windows[ref] = window(np.asarray(load_image(ref)))
        return windows[ref]

    k = min(shots or len(references), len(references))
    threshold = copilot.threshold_with(k)
    scores: dict[str, list[tuple[int, float, bool, bool]]] = {name: [] for name in chosen}
    skipped: list[str] = []
    items = [(p, 0) for p in good] + [(p, 1) for p in defective]
    for i, (path, label) in enumerate(tqdm(items, desc="images", disable=not progress)):
        try:
            taken = load_image(path)
        except ImageError as exc:
            skipped.append(str(exc))
            log.warning("skipped %s", exc)
            continue
        image = np.asarray(taken)
        refs = list(references)
        if bank is not None and tower is not None:
            feature = global_features(tower, [to_float_array(taken, GLOBAL_SIZE)])[0]  # (D,)
            refs = [p for p, _ in bank.nearest(feature, k, exclude=Path(path).absolute(), skip_copies=True)]
        for name, cond in chosen.items():
            changed = cond.change(image, np.random.default_rng([seed, i]))
            r = copilot.inspect(changed, [window_of(p) for p in refs] if cond.pose else refs, threshold=threshold)
            scores[name].append((label, r.score, r.verdict == "anomalous", r.image_check is not None))
    n_good = sum(1 for label, *_ in scores[AS_TAKEN] if label == 0)
    if not n_good:
        raise AdcopilotError("none of the good images could be read: " + "; ".join(skipped))
    rows = [_row(name, _window_name() if cond.pose else AS_TAKEN, scores[name]) for name, cond in chosen.items()]
    n_bad = len(scores[AS_TAKEN]) - n_good
    return ToleranceReport(rows, n_good, n_bad, len(references), float(threshold), copilot.model_name, skipped, k)


def _row(name: str, baseline: str, found: list[tuple[int, float, bool, bool]]) -> ToleranceRow:
    y, s, flagged, other = (np.asarray(c) for c in zip(*found, strict=True))
    good = y == 0
    row = ToleranceRow(name, baseline, float(flagged[good].mean()), float(np.median(s[good])), float(other.mean()))
    if (~good).any():
        row.misses = float((~flagged[~good]).mean())
        row.auroc = auroc(s, y)
    return row
