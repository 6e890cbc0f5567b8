"""A batch folder's records: the manifest's and the reference check's names, the reader of ``results*.jsonl`` files.

Written by :mod:`adcopilot.line.batch`, read by it (to resume) and by :mod:`adcopilot.line.report`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: The batch folder's manifest: the run's settings, checked when a run resumes.
MANIFEST = "batch.json"
#: The reference pool's check (:mod:`adcopilot.line.pool_check`): the references it names, and why.
CHECK_FILE = "reference-check.json"


def read_records(path: Path) -> list[dict[str, Any]]:
    """Records of a results file; a torn last line (interrupted write) is ignored."""
    out = []
    if not path.exists():
        return out
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("%s:%d: unreadable record ignored (interrupted write?)", path, n)
    return out
