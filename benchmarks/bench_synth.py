"""Speed of stage-1 data generation on one core: procedural images, defects, jitter, pairs/s.

Usage::

    python benchmarks/bench_synth.py [--size 256] [--n 200]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from adcopilot.data import procedural, synth  # noqa: E402
from adcopilot.data.pairs import PairSampler  # noqa: E402


def _rate(fn, n: int) -> float:
    """Calls per second of ``fn(i)`` over ``n`` calls (after 3 warm-up calls)."""
    for i in range(3):
        fn(i)
    t = time.perf_counter()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--n", type=int, default=200)
    args = ap.parse_args()
    cv2.setNumThreads(1)
    s, n = args.size, args.n
    rng = np.random.default_rng(0)
    print(f"size {s}, {n} samples per line, one core")
    for cat in procedural.CATEGORIES:
        r = _rate(lambda i, c=cat: procedural.render(c, rng, s), max(n // 10, 10))
        print(f"  procedural {cat:<12s} {1000 / r:6.1f} ms/image")
    img, region, _ = procedural.random_normal(rng, s)
    for kind in synth.DEFECT_KINDS:
        r = _rate(lambda i, k=kind: synth.add_defect(img, rng, k), max(n // 10, 10))
        print(f"  defect {kind:<16s} {1000 / r:6.1f} ms")
    print(f"  jitter                  {1000 / _rate(lambda i: synth.jitter(img, rng), n):6.1f} ms")
    sampler = PairSampler(s)
    cpu0 = time.process_time()
    rate = _rate(lambda i: sampler.sample(np.random.default_rng(i)), n)
    cpu = time.process_time() - cpu0
    # CPU-time rate: what one free core would give on a machine shared with other jobs.
    print(f"pairs/s at {s} px: {rate:.1f} wall, {(n + 3) / cpu:.1f} per CPU-second")


if __name__ == "__main__":
    main()
