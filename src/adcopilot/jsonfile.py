"""Reading a JSON file with one clear error line for each way it can be bad.

Usage::

    raw = read_json(folder / "config.json", CheckpointError)   # the decoded value
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from adcopilot.errors import AdcopilotError


def read_json(path: str | os.PathLike, error: type[AdcopilotError] = AdcopilotError) -> Any:
    """The decoded file; a missing, unreadable or malformed one raises ``error`` naming the file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{p}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{p}: cannot read ({exc})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{p}: malformed JSON ({exc.msg} at line {exc.lineno})") from None
