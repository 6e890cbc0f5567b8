"""User-facing errors.

Every mistake a user can make (a missing file, a corrupt image, a malformed JSON, an unknown
option value, a missing asset) raises an :class:`AdcopilotError` whose message is one line that
names the file or the value and the problem. The CLI prints it and exits with status 2; it never
shows a traceback for these.
"""

from __future__ import annotations

import math


class AdcopilotError(Exception):
    """An error caused by the user's input or environment, with a one-line message."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        # Keep it to one line whatever the caller passed.
        super().__init__(" ".join(str(message).split()))


class ImageError(AdcopilotError):
    """An image file that cannot be used (missing, empty, corrupt, truncated, too large)."""


class AssetMissingError(AdcopilotError):
    """A pretrained asset (weights, data) is not installed; the message says how to fetch it."""


class CheckpointError(AdcopilotError):
    """A checkpoint that cannot be loaded (missing file, wrong shapes, unknown keys)."""


def require_finite(value: float, what: str) -> float:
    """``value`` as a float, or an :class:`AdcopilotError` naming ``what`` when it is NaN or infinite
    (Python's float parsing and JSON reader both accept ``nan`` and ``inf``)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise AdcopilotError(f"{what}: must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise AdcopilotError(f"{what}: must be a finite number, got {value}")
    return number
