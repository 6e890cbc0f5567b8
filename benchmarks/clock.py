"""Wall-clock and CPU time of the calls a benchmark makes (imported by the benchmarks beside it)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


class Clock:
    """Wall-clock and CPU time (ms) of calls, per key. On a machine whose cores other jobs share, a
    one-thread computation's CPU time leaves out the time it waited for a core."""

    def __init__(self) -> None:
        self.wall: dict[str, list[float]] = {}
        self.cpu: dict[str, list[float]] = {}

    def __call__(self, key: str, fn: Callable[..., object], *args: object) -> object:
        w, c = time.perf_counter(), time.process_time()
        out = fn(*args)
        self.cpu.setdefault(key, []).append(1e3 * (time.process_time() - c))
        self.wall.setdefault(key, []).append(1e3 * (time.perf_counter() - w))
        return out

    def medians(self, cpu: bool = False) -> dict[str, float]:
        return {k: statistics.median(v) for k, v in (self.cpu if cpu else self.wall).items()}
