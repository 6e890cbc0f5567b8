"""Service latency under 8 clients, one process: batched inspections beside unbatched, same run.

For each setting a real ``adcopilot serve`` (one process, the default model unless ``--model``) is
started on 127.0.0.1, warmed up, then measured by ``bench_serve_workers.measure``: the single-request
latency (one client, median of 20), then ``--clients`` closed-loop clients sending ``--requests``
inspections (an ELPV cell at 256 px and one normal reference, cached by content): served requests/s,
p50 and p99 of the served requests, p99 over the single-request latency, the share of attempts
refused by the queue bound (a refused client sends again after the Retry-After the service gave, or
after ``--backoff-ms``), the mean batch, and the CPU time per request of the server process and of
the clients (all on the same machine), and the model's part of it: the time and the CPU time of the
service's model thread per request (with one compute thread, all of the model's work). Settings:

* ``before``: the service of an earlier commit (``--before REV``: its ``src`` from ``git archive``),
  one request at a time under the model lock, for comparison;
* ``unbatched``: ``--max-batch 1 --batch-window-ms 0``: one request per model pass, but decoding,
  registration, the image check and boxes outside the model lock;
* ``batched``: the defaults (``--max-batch 4 --batch-window-ms 2``);
* ``batched, max queue Q``: the defaults and ``--max-queue Q`` (``--max-queue``, repeatable).

First, in this process with one compute thread, the model's pass itself by batch size
(``--batch-sizes``): the CPU time per request of ``Copilot.encode`` + ``Copilot.detect`` on batches of
the same queries and reference, sizes alternating; this is what batching can save on this machine.

The settings alternate in order over ``--rounds`` (reversed every other round), so that each sees
the same share of other jobs on a shared machine; the summary gives each setting's median over rounds.

Run::

    python benchmarks/bench_serve_batching.py [--rounds 2] [--clients 8] [--requests 200] [--max-queue 2 4] \\
        [--before 5ef0973]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_serve_workers import free_port, measure, start, stop, workload

from adcopilot import Copilot
from adcopilot.line.runtime import prepare_for_inference, set_compute_threads

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("single_p50_ms", "requests_per_s", "p50_ms", "p99_ms", "p99_over_single", "refused_share", "mean_batch",
        "server_cpu_ms_per_request", "model_ms_per_request", "model_cpu_ms_per_request", "client_cpu_ms_per_request")


def source_tree(rev: str, into: Path) -> Path:
    """``src`` of commit ``rev`` of this repository, unpacked under ``into``."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def model_pass(model: str, data: list[tuple[str, bytes]], ref: tuple[str, bytes], sizes: list[int],
               rounds: int) -> dict[int, float]:
    """CPU ms per request of the model's part of a batch (encode + detect), by batch size: the median
    over ``rounds`` passes through all queries, the sizes alternating."""
    set_compute_threads(1)
    cp = prepare_for_inference(Copilot.load(model))
    assert isinstance(cp, Copilot)
    queries = [body for _, body in data]
    per: dict[int, list[float]] = {b: [] for b in sizes}
    for rnd in range(rounds):
        for b in sizes if rnd % 2 == 0 else sizes[::-1]:
            n = len(queries) // b * b
            pairs = [cp.prepare(q, [ref[1]]) for q in queries[:n]]
            c0 = time.process_time()
            for i in range(0, n, b):
                batch = pairs[i:i + b]
                for p in batch:
                    cp.encode(p)
                cp.detect(batch)
            per[b].append(1e3 * (time.process_time() - c0) / n)
    return {b: round(statistics.median(v), 1) for b, v in per.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-queue", type=int, nargs="*", default=[2], help="queue bounds to measure (none: skip)")
    ap.add_argument("--before", default=None, help="also measure the service of this commit")
    ap.add_argument("--backoff-ms", type=float, default=None, help="a refused client's wait (default: its Retry-After)")
    ap.add_argument("--model", default="default")
    ap.add_argument("--batch-sizes", type=int, nargs="*", default=[1, 2, 4, 8], help="model pass by batch size (none: skip)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "adcopilot_bench_line")
    args = ap.parse_args()
    os.environ.setdefault("ADCOPILOT_HOME", str(args.work / "home"))  # no stored calibration
    data, ref = workload(args.work)
    here = os.environ.get("PYTHONPATH", str(ROOT / "src"))
    settings: dict[str, tuple[tuple[str, ...], str]] = {}
    if args.before:
        before = source_tree(args.before, Path(tempfile.mkdtemp(prefix="adcopilot-before-")))
        settings["before"] = ((), str(before))
    settings["unbatched"] = (("--max-batch", "1", "--batch-window-ms", "0"), here)
    settings["batched"] = ((), here)
    for q in args.max_queue:
        settings[f"batched, max queue {q}"] = (("--max-queue", str(q)), here)
    out: dict = {"machine": {"cpus": len(os.sched_getaffinity(0)), "load_avg_before": os.getloadavg()[0]},
                 "model": args.model, "clients": args.clients, "requests": args.requests,
                 "backoff_ms": args.backoff_ms, "runs": []}
    if args.batch_sizes:
        out["model_cpu_ms_per_request_by_batch"] = model_pass(args.model, data, ref, args.batch_sizes, 2 * args.rounds)
        print(json.dumps({"model_pass": out["model_cpu_ms_per_request_by_batch"]}), file=sys.stderr)
    names = list(settings)
    for rnd in range(args.rounds):
        for name in names if rnd % 2 == 0 else names[::-1]:
            extra, pythonpath = settings[name]
            port = free_port()
            proc = start(args.model, 1, port, extra, env={**os.environ, "PYTHONPATH": pythonpath})
            try:
                run = {"round": rnd + 1, "setting": name, "load_avg": round(os.getloadavg()[0], 1),
                       **measure(f"http://127.0.0.1:{port}", proc, data, ref, args.requests, args.clients,
                                 4 * args.clients, None if args.backoff_ms is None else args.backoff_ms / 1e3)}
            finally:
                stop(proc)
            out["runs"].append(run)
            print(json.dumps(run), file=sys.stderr)
    out["summary"] = {name: {k: round(statistics.median(r[k] for r in out["runs"] if r["setting"] == name), 3)
                             for k in KEYS if all(k in r for r in out["runs"] if r["setting"] == name)}
                      for name in names}
    out["machine"]["load_avg_after"] = os.getloadavg()[0]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
