"""Calibrating a model on the line: score labelled images, choose the threshold, draw, store.

The labelled images are scored by the batch machinery (nearest references, resumable, bad files
skipped) into a work folder; the threshold of least expected cost is chosen from the scores
(:mod:`adcopilot.line.cost_threshold`); the ROC and cost curves are drawn to PNG; the result is written
as ``calibration.json`` where ``Copilot.load`` finds it (:mod:`adcopilot.calibration_store`).

Usage::

    items = labelled_items(["good/"], ["bad/"])
    records = score_items(cp, items, ["normals/"], "work/")
    choice = choose_from_records(records, miss_cost=20, false_alarm_cost=1)
    write_curves(choice, "work/", cp.model_name); save(cp, choice, "baseline")
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from adcopilot.api import Copilot
from adcopilot.calibration_store import default_calibration_path, write_calibration
from adcopilot.errors import AdcopilotError, require_finite
from adcopilot.line.batch import BatchConfig, run_batch
from adcopilot.line.cost_threshold import ThresholdChoice, check_choice_settings, choose_threshold
from adcopilot.line.plots import Series, line_chart
from adcopilot.line.report import load_results
from adcopilot.line.sources import LotItem, collect


def labelled_items(normals: Sequence[str | os.PathLike], defects: Sequence[str | os.PathLike]) -> list[LotItem]:
    """Normal and defective images (folders, files or CSV lists) with their labels."""
    out: list[LotItem] = []
    for label, sources in (("normal", normals), ("defective", defects)):
        if sources:
            out += [LotItem(it.path, f"{label}/{it.key}", label) for it in collect(sources)]
    return out


def score_items(
    copilot: Copilot, items: Sequence[LotItem], references: Sequence[str | os.PathLike], work_dir: str | os.PathLike,
    *, shots: int = 1, progress: bool = True, restart: bool = False,
) -> list[dict[str, Any]]:
    """Scores of the labelled items (resumable in ``work_dir``); records as in results.jsonl."""
    cfg = BatchConfig(shots=shots, save_images=False, report=False, match_threshold=False,
                      progress=progress, restart=restart)
    run_batch(copilot, items, references, work_dir, cfg)
    records, _ = load_results(work_dir)
    keys = {it.key for it in items}
    return [r for r in records if r["file"] in keys]


#: The settings of a calibration and the flags that give them.
SETTING_FLAGS = {
    "miss_cost": "--miss-cost", "false_alarm_cost": "--false-alarm-cost", "target_miss_rate": "--target-miss-rate",
    "target_false_alarm_rate": "--target-false-alarm-rate", "prevalence": "--prevalence",
}


def check_settings(**settings: float | None) -> None:
    """Refuse a NaN or infinite cost, rate or prevalence, or one out of its range, in one line naming its flag."""
    for name, value in settings.items():
        if value is not None:
            require_finite(value, SETTING_FLAGS.get(name, name))
    check_choice_settings(**{k: v for k, v in settings.items() if v is not None})  # type: ignore[arg-type]


def choose_from_records(records: Sequence[dict[str, Any]], **kwargs: Any) -> ThresholdChoice:
    """Threshold from records that carry a truth (folder names, CSV labels or --normals/--defects)."""
    check_settings(**{k: v for k, v in kwargs.items() if k in SETTING_FLAGS})
    known = [r for r in records if r.get("truth") in ("normal", "defective")]
    if not known:
        raise AdcopilotError("no labelled results to calibrate on (need truth from folder names or labels)")
    scores = np.array([r["score"] for r in known], dtype=np.float64)
    labels = np.array([r["truth"] == "defective" for r in known], dtype=np.int64)
    return choose_threshold(scores, labels, **kwargs)


def write_curves(choice: ThresholdChoice, out_dir: str | os.PathLike, model_name: str) -> dict[str, Path]:
    """roc.png (detection rate vs false-alarm rate) and cost.png (expected cost vs threshold); with
    normal images only, false-alarms.png (false-alarm rate vs threshold)."""
    out = Path(out_dir)
    c = choice.curves
    m = choice.metrics
    if not m["n_defective"]:
        chart = line_chart(
            out / "false-alarms.png",
            [Series(c.thresholds, c.overkill, f"false-alarm rate on {m['n_normal']} normal images")],
            "threshold", "false-alarm (overkill) rate", "False alarms by threshold (no defective images)",
            vline=(choice.threshold, f"chosen {choice.threshold:.4f}"),
        )
        return {"false_alarms": chart}
    roc = line_chart(
        out / "roc.png",
        [Series(c.overkill[::-1], (1 - c.miss)[::-1], f"{model_name} (AUROC {m['auroc']:.3f})"),
         Series([0, 1], [0, 1], "chance", (150, 150, 150), dashed=True)],
        "false-alarm (overkill) rate", "detection rate (1 - miss)", "ROC",
        xlim=(0, 1), ylim=(0, 1),
        marker=(m["overkill"], 1 - m["miss"], f"threshold {choice.threshold:.4f}"),
    )
    s = choice.settings
    cost = line_chart(
        out / "cost.png",
        [Series(c.thresholds, c.cost, f"expected cost per part (miss {s['miss_cost']:g}, false alarm {s['false_alarm_cost']:g})"),
         Series(c.thresholds, c.miss, "miss rate", (214, 39, 40)),
         Series(c.thresholds, c.overkill, "overkill rate", (255, 127, 14))],
        "threshold", "cost / rate", "Expected cost by threshold",
        vline=(choice.threshold, f"chosen {choice.threshold:.4f}"),
    )
    return {"roc": roc, "cost": cost}


def calibration_record(copilot: Copilot, choice: ThresholdChoice, *, shots: int | None, source: str) -> dict[str, Any]:
    """What ``calibration.json`` holds; ``shots``: the number of references the images were compared with
    (None: none, a lot scored on its own; the threshold then serves every count)."""
    return {
        "model": copilot.model_name,
        "threshold": round(choice.threshold, 6),
        "model_threshold": float(copilot.detector.threshold_for(shots or 1)),  # the model's own for that many references
        "image_score": copilot.detector.image_score_for(shots or 1),  # the score whose scale the threshold is on
        **choice.settings,
        "expected_cost": choice.expected_cost,
        "metrics": choice.metrics,
        "image_size": copilot.detector.image_size,
        "shots": shots,
        "registration": copilot.registration,
        "source": source,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def save(record: dict[str, Any], model_spec: str | os.PathLike | None, path: str | os.PathLike | None = None) -> Path:
    """Write the calibration where ``Copilot.load`` finds it (or to ``path``)."""
    target = Path(path) if path is not None else default_calibration_path(model_spec, record["model"])
    return write_calibration(target, record)
