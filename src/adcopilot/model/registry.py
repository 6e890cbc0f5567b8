"""Detectors by name: "baseline", "default" or a nano checkpoint folder.

The copilots above (:mod:`adcopilot.api`) pick the model kind of a folder with
:func:`adcopilot.model.checkpoint_kind.checkpoint_kind` and come here for the nano and baseline
detectors; a new training-free detector registers itself in :data:`DETECTORS`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from adcopilot.errors import CheckpointError
from adcopilot.model.baseline import NearestPatchDetector
from adcopilot.model.checkpoint_kind import DEFAULT_CHECKPOINT
from adcopilot.model.detector import Detector
from adcopilot.model.nano import load_nano_detector
from adcopilot.model.onnx_detector import load_onnx_detector
from adcopilot.model.openvino_detector import load_openvino_detector

log = logging.getLogger(__name__)

#: Detectors that need no checkpoint, by name: () -> (detector, metadata).
DETECTORS: dict[str, Callable[[], tuple[Detector, dict[str, Any]]]] = {
    "baseline": lambda: (NearestPatchDetector(), {"name": "baseline"}),
}


def resolve_model(model: str | os.PathLike | None) -> str | Path:
    """A detector name from :data:`DETECTORS`, or the checkpoint folder ``model`` names ("default":
    the shipped one, the baseline when it is absent)."""
    spec = "default" if model is None else str(model)
    if spec in DETECTORS:
        return spec
    if spec == "default":
        if (DEFAULT_CHECKPOINT / "config.json").exists():
            return DEFAULT_CHECKPOINT
        log.warning("no shipped checkpoint found at %s; using the training-free baseline", DEFAULT_CHECKPOINT)
        return "baseline"
    path = Path(spec)
    if not path.exists():
        known = ", ".join(f"'{n}'" for n in ["default", *DETECTORS])
        raise CheckpointError(f"{spec}: no such model; use {known} or a checkpoint folder")
    return path


def load_detector(model: str | Path) -> tuple[Detector, dict[str, Any]]:
    """(detector, metadata) for a name of :data:`DETECTORS`, a nano checkpoint folder, an ONNX export or an OpenVINO
    one."""
    if isinstance(model, str) and model in DETECTORS:
        return DETECTORS[model]()
    if Path(model).is_file() and Path(model).suffix == ".onnx":  # a dense path from `adcopilot export onnx`
        return load_onnx_detector(Path(model))
    if Path(model).is_file() and Path(model).suffix == ".xml":  # the same under OpenVINO (`adcopilot export openvino`)
        return load_openvino_detector(Path(model))
    return load_nano_detector(model)
