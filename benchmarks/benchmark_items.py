"""The queries of an MMAD-format benchmark as the capture benchmarks read them (``bench_jpeg.py``,
``bench_defocus.py``, ``bench_framing.py``, ``bench_capture.py``): a seeded shuffle, then the first ``limit``."""

from __future__ import annotations

import json
import random
from pathlib import Path

from adcopilot.eval.bundled import ensure_bundled


def benchmark_items(
    benchmark: str, limit: int | None = None, normal_only: bool = False
) -> tuple[Path, list[tuple[str, dict]]]:
    """(the JSON file, [(query path relative to its folder, entry)]) of ``benchmark``: "bundled" or an MMAD-format
    JSON file; ``normal_only``: the queries under a ``good`` folder. A file that is not such JSON ends the run
    with a one-line message."""
    if limit is not None and limit < 1:
        raise SystemExit(f"--limit must be at least 1, got {limit}")
    path = ensure_bundled() if benchmark == "bundled" else Path(benchmark).expanduser()
    try:
        items = list(json.loads(path.read_text()).items())
    except (OSError, ValueError, AttributeError) as exc:
        raise SystemExit(f"{path}: not an MMAD-format JSON file ({exc.__class__.__name__}: {exc})") from None
    if normal_only:
        items = [(k, v) for k, v in items if "/good/" in k]
    random.Random(0).shuffle(items)
    return path, items[:limit]
