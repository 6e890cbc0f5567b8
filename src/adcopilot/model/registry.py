"""Resolve a model name or folder to a detector: "baseline", "default" or a checkpoint folder."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from adcopilot.errors import CheckpointError
from adcopilot.model.detector import Detector

log = logging.getLogger(__name__)

#: The shipped default checkpoint, inside the package so that it installs with it.
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "checkpoints" / "nano"


def load_detector(model: str | os.PathLike | None) -> tuple[Detector, dict[str, Any]]:
    """Return (detector, metadata) for a model spec."""
    spec = "default" if model is None else str(model)
    if spec == "baseline":
        from adcopilot.model.baseline import NearestPatchDetector

        return NearestPatchDetector(), {"name": "baseline"}
    if spec == "default":
        if (DEFAULT_CHECKPOINT / "config.json").exists():
            return _load_checkpoint(DEFAULT_CHECKPOINT)
        log.warning("no shipped checkpoint found at %s; using the training-free baseline", DEFAULT_CHECKPOINT)
        from adcopilot.model.baseline import NearestPatchDetector

        return NearestPatchDetector(), {"name": "baseline"}
    path = Path(spec)
    if not path.exists():
        raise CheckpointError(f"{spec}: no such model; use 'default', 'baseline' or a checkpoint folder")
    if path.is_file() and path.suffix == ".onnx":  # a dense path from `adcopilot export onnx`
        from adcopilot.model.onnx_detector import load_onnx_detector

        return load_onnx_detector(path)
    return _load_checkpoint(path)


def _is_full_checkpoint(path: Path) -> bool:
    """A full-scale (Qwen2.5-VL) checkpoint: config.json with an AD-Copilot or Qwen2.5-VL model type."""
    try:
        raw = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(raw, dict) and (
        raw.get("model_type") in ("ad_copilot", "yangjian", "qwen2_5_vl")
        or "ADCopilotVLForConditionalGeneration" in (raw.get("architectures") or [])
    )


def _load_checkpoint(path: Path) -> tuple[Detector, dict[str, Any]]:
    if _is_full_checkpoint(path):
        from adcopilot.full.pipeline import FullDetector, FullModel

        full = FullModel.load(path)
        meta = {"name": full.name, "language": full, "full": full, "threshold": FullDetector.threshold}
        return FullDetector(full), meta
    from adcopilot.model.nano import load_nano_detector

    detector, meta = load_nano_detector(path)
    if (path / "language" / "config.json").exists():  # answers questions; loaded on first use
        from adcopilot.language.handle import NanoLanguage

        meta["language"] = NanoLanguage(path / "language", detector)
    return detector, meta
