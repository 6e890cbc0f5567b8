"""Where a calibrated threshold is stored and how ``Copilot.load`` finds it.

``adcopilot calibrate`` writes ``calibration.json`` (threshold, costs, metrics, model name, date):

* for a checkpoint folder: ``<folder>/calibration.json``, beside the model's ``config.json``;
* for the built-in models (``default``, ``baseline``): ``$ADCOPILOT_HOME/calibration/<model-name>.json``.

``Copilot.load`` uses it when no explicit threshold is given; an explicit ``threshold`` always
wins, and ``calibration=FILE`` picks a specific file. A file calibrated for another model is
ignored with a warning (or refused, when named explicitly).

Usage::

    path = default_calibration_path("baseline", "baseline")   # ~/.cache/adcopilot/calibration/baseline.json
    cal = resolve_calibration("baseline", "baseline", None)     # dict or None
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from adcopilot import assets
from adcopilot.errors import AdcopilotError, require_finite
from adcopilot.jsonfile import read_json

log = logging.getLogger(__name__)

FILE_NAME = "calibration.json"
BUILTIN_SPECS = {None, "default", "baseline"}


def calibration_dir() -> Path:
    return assets.home() / "calibration"


def default_calibration_path(model_spec: str | os.PathLike | None, model_name: str) -> Path:
    """Where the calibration of this model is written and looked up."""
    spec = None if model_spec is None else str(model_spec)
    if spec in BUILTIN_SPECS:
        return calibration_dir() / f"{model_name}.json"
    return Path(spec) / FILE_NAME


def read_calibration(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a calibration file."""
    p = Path(path)
    if not p.exists():
        raise AdcopilotError(f"{p}: no such calibration file")
    data = read_json(p)
    if not isinstance(data, dict) or not isinstance(data.get("threshold"), (int, float)):
        raise AdcopilotError(f"{p}: not a calibration file (no numeric 'threshold')")
    require_finite(data["threshold"], f"{p}: 'threshold'")
    shots = data.get("shots")
    if shots is not None and (not isinstance(shots, int) or isinstance(shots, bool) or shots < 1):
        raise AdcopilotError(f"{p}: 'shots' must be the number of references the images were scored with "
                             f"(a whole number from 1), got {shots!r}")
    score = data.get("image_score")
    if score is not None and not isinstance(score, str):
        raise AdcopilotError(f"{p}: 'image_score' must be the name of the image score calibrated, got {score!r}")
    data["path"] = str(p)
    return data


def write_calibration(path: str | os.PathLike, data: dict[str, Any]) -> Path:
    """Write atomically (a reader never sees half a file)."""
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(p.suffix + ".tmp")
        tmp.write_text(json.dumps({k: v for k, v in data.items() if k != "path"}, indent=2) + "\n")
        os.replace(tmp, p)
    except OSError as exc:
        raise AdcopilotError(f"{p}: cannot write the calibration ({exc})") from None
    return p


def calibrated_references(cal: dict[str, Any]) -> int | None:
    """The number of references a calibration's images were scored with (its ``shots``); None for a file
    without one (written before it was recorded, or by hand), which then serves every count."""
    shots = cal.get("shots")  # checked by read_calibration
    return int(shots) if shots is not None else None


def score_mismatch(cal: dict[str, Any], image_score: Callable[[int], str] | None) -> str | None:
    """Why a calibration does not fit the model's image score (``image_score``: its name by the number of
    references), or None. A threshold is a point on one score's scale: a calibration made before the model's
    config chose another score for that count (a checkpoint's ``image_score`` edited) would flag every part or
    none. Files without ``image_score`` (written before it was recorded, or by hand) are trusted."""
    kind = cal.get("image_score")
    if kind is None or image_score is None:
        return None
    now = image_score(calibrated_references(cal) or 1)
    return None if now == kind else f"calibrated on the '{kind}' image score, but the model now scores with '{now}'"


def resolve_calibration(
    model_spec: str | os.PathLike | None, model_name: str, explicit: str | os.PathLike | None = None,
    image_score: Callable[[int], str] | None = None,
) -> dict[str, Any] | None:
    """The calibration to use for a model: the explicit file, else the stored one, else None. ``image_score``
    (the model's score name by the number of references) rules out a calibration made on another score."""
    if explicit is not None:
        cal = read_calibration(explicit)
        if cal.get("model") not in (None, model_name):
            raise AdcopilotError(
                f"{explicit}: calibrated for model '{cal.get('model')}', not for the loaded '{model_name}'"
            )
        why = score_mismatch(cal, image_score)
        if why is not None:
            raise AdcopilotError(f"{explicit}: {why}; calibrate again")
        return cal
    path = default_calibration_path(model_spec, model_name)
    if not path.exists():
        return None
    try:
        cal = read_calibration(path)
    except AdcopilotError as exc:
        log.warning("ignoring the stored calibration: %s", exc)
        return None
    if cal.get("model") not in (None, model_name):
        log.warning("ignoring %s: calibrated for model '%s', not '%s'", path, cal.get("model"), model_name)
        return None
    why = score_mismatch(cal, image_score)
    if why is not None:
        log.warning("ignoring %s: %s; calibrate again", path, why)
        return None
    log.info("using the calibrated threshold %.4f from %s", cal["threshold"], path)
    return cal
