"""Runtime settings of the line's long-running jobs (batch, service): compute threads, memory layout.

Threads: torch uses every core by default. In the batch and the service other threads decode
images, draw annotations and parse uploads at the same time, and a compute thread that waits for
a busy core stalls all the others at each layer (on a shared 2-core machine a batch with 2 compute
threads ran several times slower than with 1). So the line leaves ``reserve`` cores to that other work.

Layout: the frozen vision tower runs faster on CPU with its convolution weights in channels-last
order (oneDNN's preferred layout for depthwise convolutions); outputs are the same to float
rounding. Figures: ``benchmarks/RESULTS.md``, "Inspection line".

Usage::

    set_compute_threads(None, reserve=2)    # 2 cores -> 1 thread, 16 cores -> 14
    prepare_for_inference(copilot)
    copilot = ModelLoader("baseline", threshold=0.5)()   # loaded and prepared; picklable, for Ray actors
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

from adcopilot.api import Copilot
from adcopilot.model.backbone import Backbone

log = logging.getLogger(__name__)


def default_threads(reserve: int) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores - reserve)


def set_compute_threads(threads: int | None, reserve: int = 1) -> int:
    """Set torch's intra-op threads (explicit, else all cores but ``reserve``); return the number.
    ``OMP_NUM_THREADS`` in the environment is respected when no number is given."""
    if threads is None and os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    n = max(1, threads) if threads is not None else default_threads(reserve)
    torch.set_num_threads(n)
    log.info("model compute threads: %d", n)
    return n


def prepare_for_inference(copilot: Copilot) -> Copilot:
    """Put the detector's frozen CPU vision tower in channels-last layout (in place; idempotent)."""
    tower = getattr(copilot.detector, "tower", None)
    if isinstance(tower, Backbone):
        tower.prepare_for_inference()
    return copilot


@dataclass(frozen=True)
class ModelLoader:
    """Builds the inspection model, the same way in the driver and in every actor (picklable)."""

    model: str = "default"
    threshold: float | None = None
    registration: bool = True
    calibration: str | None = None
    refocus: bool = False  # references softened to a softer query (``Copilot.refocus``)

    def __call__(self) -> Copilot:
        cp = Copilot.load(self.model, threshold=self.threshold, registration=self.registration,
                          calibration=self.calibration)
        cp.refocus = self.refocus
        return prepare_for_inference(cp)
