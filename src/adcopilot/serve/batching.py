"""Dynamic request batching: requests that arrive together share one pass of the model.

A :class:`Batcher` owns the thread that runs the model. A request is first *admitted*: at most
``max_queue`` requests may be admitted and not yet running; beyond that :class:`QueueFull` is
raised at once, with an estimate of when to retry, instead of letting every request wait. It then
prepares its input in its own thread (decoding, registration: no model) and submits it. Once the
model is free (its lock, shared with the service's other model work), the model thread gathers the
submitted requests into a batch of at most ``max_batch``: it waits up to ``window_s`` after the
first one arrived, but only while other admitted requests are still being prepared, so a lone
request never waits. Each request gets its own result or its own exception through a
:class:`concurrent.futures.Future`.

A request that gives up (its time limit) cancels its future: if its batch has not started, the model
never sees it; a request whose deadline passes while it waits is dropped when its batch starts.
The thread ends after a few idle seconds and starts again with the next request.

Usage::

    batcher = Batcher(run_many, threading.Lock(), window_s=0.002, max_batch=4, max_queue=16)
    with batcher.admission() as submit:            # QueueFull when 16 are already waiting
        item = prepare(request)                      # in the request's thread
        future = submit(item, deadline=time.monotonic() + 60)
    result = future.result(timeout=60)
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

IDLE_EXIT_S = 5.0  # the model thread ends after this long without a request
EWMA = 0.2  # weight of the latest batch in the running estimate of a batch's duration


class QueueFull(Exception):
    """The queue for the model is full: answer at once, and say when to retry."""

    def __init__(self, waiting: int, limit: int, retry_after_s: int) -> None:
        super().__init__(f"{waiting} requests waiting for the model (limit {limit})")
        self.waiting, self.limit, self.retry_after_s = waiting, limit, retry_after_s


@dataclass
class _Job(Generic[T, R]):
    item: T
    future: Future[R]
    deadline: float  # time.monotonic() past which nobody waits for the result
    arrived: float = field(default_factory=time.monotonic)


class Batcher(Generic[T, R]):
    """Gathers submitted items into batches for ``run``, one batch at a time under ``lock``.

    ``run(items)`` returns one entry per item: its result, or the exception to raise for it alone.
    """

    def __init__(
        self,
        run: Callable[[list[T]], Sequence[R | Exception]],
        lock: threading.Lock,
        *,
        window_s: float = 0.002,
        max_batch: int = 4,
        max_queue: int | None = None,
        name: str = "adcopilot-model",
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if max_queue is not None and max_queue < 1:
            raise ValueError(f"max_queue must be at least 1 (or None: no bound), got {max_queue}")
        if not window_s >= 0:  # also refuses NaN
            raise ValueError(f"window_s must be 0 or more, got {window_s}")
        self._run, self._lock, self._name = run, lock, name
        self.window_s, self.max_batch, self.max_queue = window_s, max_batch, max_queue
        self._cond = threading.Condition()
        self._jobs: deque[_Job[T, R]] = deque()
        self._admitted = 0  # admitted and not yet taken into a batch: being prepared, or queued
        self._thread: threading.Thread | None = None
        self._batch_s = 0.0  # running estimate of one batch's duration
        self.batches = self.batched = self.dropped = self.refused = 0
        self.model_s = self.model_cpu_s = 0.0  # time in ``run``, and this thread's CPU time in it

    # ------------------------------------------------------------------ requests' side
    @contextmanager
    def admission(self) -> Iterator[Callable[[T, float], Future[R]]]:
        """A place in the queue for one item, or :class:`QueueFull` at once; yields ``submit(item,
        deadline)``. Leaving without submitting gives the place back."""
        with self._cond:
            if self.max_queue is not None and self._admitted >= self.max_queue:
                self.refused += 1
                raise QueueFull(self._admitted, self.max_queue, self._retry_after())
            self._admitted += 1
        submitted = False

        def submit(item: T, deadline: float) -> Future[R]:
            nonlocal submitted
            if submitted:
                raise RuntimeError("one item per admission")
            future: Future[R] = Future()
            with self._cond:
                submitted = True
                self._jobs.append(_Job(item, future, deadline))
                if self._thread is None:
                    self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
                    self._thread.start()
                self._cond.notify()
            return future

        try:
            yield submit
        finally:
            if not submitted:
                with self._cond:
                    self._admitted -= 1
                    self._cond.notify()  # the model thread may be waiting for this one

    def _retry_after(self) -> int:
        """Whole seconds until the queue has room again, by the recent batches' duration (at least 1)."""
        batches_ahead = self._admitted / self.max_batch + 1
        return max(1, math.ceil(batches_ahead * self._batch_s))

    def stats(self) -> dict[str, Any]:
        with self._cond:
            return {"waiting": self._admitted, "queued": len(self._jobs), "max_queue": self.max_queue, "max_batch": self.max_batch,
                    "window_ms": round(self.window_s * 1e3, 3), "batches": self.batches,
                    "batched_requests": self.batched, "mean_batch": round(self.batched / max(1, self.batches), 2),
                    "dropped": self.dropped, "refused": self.refused, "model_s": round(self.model_s, 3),
                    "model_cpu_s": round(self.model_cpu_s, 3)}

    # ------------------------------------------------------------------ the model's thread
    def _serve(self) -> None:
        while self._wait_for_work():
            with self._lock:  # the batch is formed when the model is free: all that queued meanwhile
                self._run_batch(self._gather())

    def _wait_for_work(self) -> bool:
        """True once a request is queued; False (and the thread ends) after ``IDLE_EXIT_S`` without one."""
        with self._cond:
            while not self._jobs:
                if not self._cond.wait(IDLE_EXIT_S) and not self._jobs:
                    self._thread = None  # under the lock: the next submit starts a new thread
                    return False
            return True

    def _gather(self) -> list[_Job[T, R]]:
        """The next batch (at least one request is queued)."""
        with self._cond:
            end = self._jobs[0].arrived + self.window_s
            # Wait for company only while admitted requests are still being prepared.
            while len(self._jobs) < self.max_batch and self._admitted > len(self._jobs):
                left = end - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch = [self._jobs.popleft() for _ in range(min(self.max_batch, len(self._jobs)))]
            self._admitted -= len(batch)
            return batch

    def _run_batch(self, batch: list[_Job[T, R]]) -> None:
        """Run a batch (the model lock held) and hand out its results."""
        now = time.monotonic()
        live = []
        for job in batch:
            if job.deadline <= now:  # nobody waits for it any more: the model never sees it
                job.future.cancel()
            elif job.future.set_running_or_notify_cancel():  # False: cancelled by its request
                live.append(job)
        self.dropped += len(batch) - len(live)
        if not live:
            return
        t0, cpu0 = time.monotonic(), time.thread_time()
        try:
            results = list(self._run([j.item for j in live]))
            if len(results) != len(live):
                raise RuntimeError(f"batch of {len(live)} gave {len(results)} results")
        except Exception as exc:  # a fault of ours: every request of the batch gets it
            log.exception("a batch of %d failed", len(live))
            results = [exc] * len(live)
        took = time.monotonic() - t0
        self.model_s += took
        self.model_cpu_s += time.thread_time() - cpu0  # all the model's work when it computes on one thread
        self._batch_s = took if self.batches == 0 else (1 - EWMA) * self._batch_s + EWMA * took
        self.batches += 1
        self.batched += len(live)
        for job, r in zip(live, results, strict=True):
            if isinstance(r, Exception):
                job.future.set_exception(r)
            else:
                job.future.set_result(r)
