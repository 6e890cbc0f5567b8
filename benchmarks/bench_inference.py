"""Inference latency and memory: the default model beside the training-free baseline, same run.

Each model runs in its own subprocess (so peak RSS is its own): one cached 256-pixel reference,
N different queries, median and p90 of ``Copilot.inspect`` wall time, then peak RSS.

    python benchmarks/bench_inference.py --n 40 [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, statistics, sys, time
import numpy as np, torch
torch.set_num_threads(int(sys.argv[3]))
from skimage import data
from adcopilot import Copilot
cp = Copilot.load(sys.argv[1])
n = int(sys.argv[2])
base = data.gravel()  # a real photo held out of training
ref = np.ascontiguousarray(base[:256, :256])
rng = np.random.default_rng(0)
cp.inspect(ref, [ref])  # warm-up, caches the reference
times = []
for i in range(n):
    q = ref.copy()
    y, x = rng.integers(20, 200, 2)
    q[y:y + 24, x:x + 24] = 30
    t = time.perf_counter(); cp.inspect(q, [ref]); times.append(1000 * (time.perf_counter() - t))
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"model": cp.model_name, "median_ms": round(statistics.median(times), 1),
                  "p90_ms": round(float(np.percentile(times, 90)), 1), "peak_rss_mb": round(rss)}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", nargs="+", default=["baseline", "default"])
    args = ap.parse_args()
    rows = []
    for m in args.models:
        out = subprocess.run([sys.executable, "-c", CHILD, m, str(args.n), str(args.threads)],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1])
    if len(rows) == 2:
        print(f"latency ratio {rows[1]['model']}/{rows[0]['model']}: {rows[1]['median_ms'] / rows[0]['median_ms']:.2f}")


if __name__ == "__main__":
    main()
