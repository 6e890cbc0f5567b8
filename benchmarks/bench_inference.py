"""Inference latency and memory: the default model beside the training-free baseline, same run.

Each (model, threads) pair runs in its own subprocess, so peak RSS is its own: one cached 256-pixel
reference (a real photo held out of training), N different queries (the reference with a painted
defect), ``Copilot.inspect`` timed with registration on (the default) and off, alternating query
by query so that both see the same machine load. A round runs every subprocess once; the table
gives, per row, the median over rounds of each subprocess's median (and p90) ms per pair, its median
CPU time per pair (``time.process_time``: on a loaded machine it leaves out the time a one-thread run
waits for a core), the median ECC registration time inside the inspection, and the largest peak RSS. Ratios are nano / baseline
for the same threads and registration.

    python benchmarks/bench_inference.py --n 40 --threads 1 2 --rounds 3

The subprocesses inherit the environment. On a machine whose cores other jobs keep busy, two
compute threads under OpenMP's default wait policy measured 1.6 s per pair (threads spin and wait
for a descheduled partner at every operation); ``OMP_WAIT_POLICY=PASSIVE`` removed that. The
table's header names the policy in use.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import json, resource, statistics, sys, time
import numpy as np, torch
torch.set_num_threads(int(sys.argv[3]))
from skimage import data
from adcopilot import Copilot
with_reg = Copilot.load(sys.argv[1])
without_reg = Copilot(with_reg.detector, threshold=with_reg.threshold, registration=False,
                      model_name=with_reg.model_name)
n = int(sys.argv[2])
ref = np.ascontiguousarray(data.gravel()[:256, :256])  # a real photo held out of training
rng = np.random.default_rng(0)
for cp in (with_reg, without_reg):
    cp.inspect(ref, [ref])  # warm-up, caches the reference
times = {True: [], False: []}
cpu = {True: [], False: []}
register_ms = []
for i in range(n):
    q = ref.copy()
    y, x = rng.integers(20, 200, 2)
    q[y:y + 24, x:x + 24] = 30
    for reg, cp in ((True, with_reg), (False, without_reg))[:: 1 if i % 2 else -1]:
        t, c = time.perf_counter(), time.process_time(); r = cp.inspect(q, [ref])
        times[reg].append(1000 * (time.perf_counter() - t)); cpu[reg].append(1000 * (time.process_time() - c))
        if reg:
            register_ms.append(r.timings_ms["register"])
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
for reg in (True, False):
    print(json.dumps({"model": with_reg.model_name, "threads": torch.get_num_threads(), "registration": reg,
                      "median_ms": statistics.median(times[reg]), "p90_ms": float(np.percentile(times[reg], 90)),
                      "cpu_ms": statistics.median(cpu[reg]),
                      "register_ms": statistics.median(register_ms) if reg else 0.0, "peak_rss_mb": rss}))
"""

KEY_FIELDS = ("model", "threads", "registration")


def run_child(model: str, n: int, threads: int) -> list[dict]:
    """One subprocess: its rows (registration on, off) as dicts."""
    out = subprocess.run([sys.executable, "-c", CHILD, model, str(n), str(threads)],
                         capture_output=True, text=True, check=True)
    return [json.loads(line) for line in out.stdout.strip().splitlines() if line.startswith("{")]


def summarise(rounds: list[list[dict]]) -> list[dict]:
    """Per (model, threads, registration): medians over rounds of the per-round figures, largest RSS."""
    groups: dict[tuple, list[dict]] = {}
    for rows in rounds:
        for row in rows:
            groups.setdefault(tuple(row[k] for k in KEY_FIELDS), []).append(row)
    table = []
    for key, rows in groups.items():
        med = {f: round(statistics.median(r[f] for r in rows), 1) for f in ("median_ms", "p90_ms", "cpu_ms", "register_ms")}
        table.append({**dict(zip(KEY_FIELDS, key, strict=True)), **med, "peak_rss_mb": round(max(r["peak_rss_mb"] for r in rows))})
    return table


def print_table(table: list[dict], rounds: int) -> None:
    policy = os.environ.get("OMP_WAIT_POLICY", "unset")
    print(f"\nMedians over {rounds} round(s), OMP_WAIT_POLICY={policy}:\n\n"
          "| model | threads | registration | median ms/pair | p90 ms | CPU ms | ECC ms | peak RSS MB | ratio nano/baseline |\n"
          "|---|---:|---|---:|---:|---:|---:|---:|---:|")
    base = {(r["threads"], r["registration"]): r["median_ms"] for r in table if r["model"] == "baseline"}
    for r in sorted(table, key=lambda r: (r["threads"], not r["registration"], r["model"])):
        b = base.get((r["threads"], r["registration"]))
        ratio = f"{r['median_ms'] / b:.2f}" if b and r["model"] != "baseline" else ""
        print(f"| {r['model']} | {r['threads']} | {'on' if r['registration'] else 'off'} | {r['median_ms']} | "
              f"{r['p90_ms']} | {r['cpu_ms']} | {r['register_ms'] if r['registration'] else ''} | {r['peak_rss_mb']} | "
              f"{ratio} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=40, help="queries per subprocess (each timed with and without registration)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--models", nargs="+", default=["baseline", "default"])
    args = ap.parse_args()
    rounds = []
    for i in range(args.rounds):
        rows = []
        for threads in args.threads:
            for m in args.models:
                new = run_child(m, args.n, threads)
                if m not in ("baseline", "default"):  # a checkpoint folder: its own row even where names agree
                    for r in new:
                        r["model"] = f"{r['model']} ({os.path.basename(os.path.normpath(m))})"
                rows += new
                for r in rows[-2:]:
                    print(f"round {i + 1}: " + ", ".join(f"{k}={round(v, 1) if isinstance(v, float) else v}"
                                                         for k, v in r.items()), flush=True)
        rounds.append(rows)
    print_table(summarise(rounds), args.rounds)


if __name__ == "__main__":
    main()
