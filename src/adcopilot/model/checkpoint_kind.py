"""What kind of model a checkpoint folder holds, read from its ``config.json`` in one place.

=================  ===========================================================================
kind               config.json
=================  ===========================================================================
``nano``           ``"architecture": "adcopilot-nano"`` (:mod:`adcopilot.model.nano`)
``ad-copilot``     ``model_type`` ``ad_copilot`` / ``yangjian``, or the
                   ``ADCopilotVLForConditionalGeneration`` architecture (:mod:`adcopilot.full`)
``qwen2.5-vl``     ``model_type`` ``qwen2_5_vl`` (the full-scale loader reads it too)
``qwen2-vl``       ``model_type`` ``qwen2_vl`` (evaluation through transformers only)
=================  ===========================================================================

Usage::

    checkpoint_kind("checkpoints/nano")      # "nano"
    read_config_json(folder)                 # the decoded config.json, or one clear CheckpointError
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from adcopilot.errors import CheckpointError
from adcopilot.jsonfile import read_json

#: The shipped default checkpoint, inside the package so that it installs with it.
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "checkpoints" / "nano"

NANO_ARCHITECTURE = "adcopilot-nano"
AD_COPILOT_TYPES = ("ad_copilot", "yangjian")
AD_COPILOT_ARCHITECTURE = "ADCopilotVLForConditionalGeneration"

CheckpointKind = Literal["nano", "ad-copilot", "qwen2.5-vl", "qwen2-vl"]
#: The kinds the full-scale (Qwen2.5-VL) path loads.
FULL_KINDS: tuple[CheckpointKind, ...] = ("ad-copilot", "qwen2.5-vl")


def read_config_json(folder: str | os.PathLike) -> dict[str, Any]:
    """The decoded ``folder/config.json``; a missing, unreadable or malformed file is a CheckpointError."""
    file = Path(folder) / "config.json"
    if not file.is_file():
        raise CheckpointError(f"{file}: missing (a checkpoint folder needs config.json)")
    raw = read_json(file, CheckpointError)
    if not isinstance(raw, dict):
        raise CheckpointError(f"{file}: expected a JSON object")
    return raw


def kind_of_config(raw: dict[str, Any]) -> CheckpointKind | None:
    """The kind a decoded config.json describes, or None when it is none of ours."""
    if raw.get("architecture") == NANO_ARCHITECTURE:
        return "nano"
    if raw.get("model_type") in AD_COPILOT_TYPES or AD_COPILOT_ARCHITECTURE in (raw.get("architectures") or []):
        return "ad-copilot"
    return {"qwen2_5_vl": "qwen2.5-vl", "qwen2_vl": "qwen2-vl"}.get(str(raw.get("model_type")))  # type: ignore[return-value]


def checkpoint_kind(folder: str | os.PathLike) -> CheckpointKind | None:
    """The kind of model in ``folder`` (see the module docstring), None when it is none of ours."""
    return kind_of_config(read_config_json(folder))
