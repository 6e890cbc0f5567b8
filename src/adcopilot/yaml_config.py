"""Reading a YAML config file for a config dataclass, with one clear error line for each way it can be bad.

Both trainers (the nano stages and the full-scale one) read their configs this way.

Usage::

    raw = read_yaml_config("stage1.yaml", TrainConfig)   # {} for None; keys are TrainConfig's fields
    cfg = TrainConfig(**raw)
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import yaml

from adcopilot.errors import AdcopilotError


def read_yaml_config(path: str | os.PathLike | None, config_class: type) -> dict[str, Any]:
    """The file's mapping (``{}`` without a file); a missing or malformed file, a file that is not a
    mapping, or a key that is not a field of ``config_class`` raises naming the file."""
    if path is None:
        return {}
    p = Path(path)
    if not p.is_file():
        raise AdcopilotError(f"{p}: no such config file")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise AdcopilotError(f"{p}: malformed YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise AdcopilotError(f"{p}: a config must be a mapping of keys to values")
    unknown = sorted(set(raw) - {f.name for f in dataclasses.fields(config_class)})
    if unknown:
        raise AdcopilotError(f"{p}: unknown config key(s) {', '.join(unknown)}")
    return raw
