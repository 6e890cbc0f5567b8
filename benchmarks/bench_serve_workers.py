"""Service throughput by worker processes: ``adcopilot serve --workers N`` on loopback, 1 vs 2 workers.

For each worker count a real ``adcopilot serve`` is started on 127.0.0.1 (the default model unless
``--model``), waited for until every worker has loaded its model, warmed up, then measured (the
worker counts alternate in order over ``--rounds``, so that each sees the same share of other jobs):

* one client, one request at a time: the single-request latency (p50);
* ``--clients`` concurrent clients, ``--requests`` requests: requests/s, p50 and p99 latency, and
  the CPU time the server's processes (supervisor and workers) spent per request: on a shared
  machine, where wall-clock scaling is drowned by other jobs, what the work costs on dedicated cores;
  and the clients' own CPU time per request (they share the machine with the server).

Each request uploads an ELPV cell (256 px) and one normal reference (cached by content in each
worker after its first use). Only loopback is used; the run is bounded by ``--requests``.

Run::

    python benchmarks/bench_serve_workers.py [--workers 1 2] [--rounds 2] [--clients 8] [--requests 200]

The helpers (a server started and stopped, the load of concurrent clients) serve
``bench_serve_batching.py`` too.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
from bench_line import make_lot

START_LIMIT_S = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(model: str, workers: int, port: int, extra: tuple[str, ...] = (), env: dict | None = None) -> subprocess.Popen:
    """A real ``adcopilot serve`` (with ``extra`` options, in ``env``), returned once ``workers``
    distinct worker processes are ready."""
    proc = subprocess.Popen([sys.executable, "-m", "adcopilot", "serve", "--model", model, "--workers", str(workers),
                             "--port", str(port), *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    pids: set[int] = set()
    deadline = time.monotonic() + START_LIMIT_S
    while len(pids) < workers:
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise SystemExit(f"serve --workers {workers} did not become ready")
        try:
            h = httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=5).json()
            if h["ready"]:
                pids.add(h["pid"])
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    return proc


def server_cpu_seconds(pid: int) -> float:
    """CPU time of the server process and its workers (user + system)."""
    procs = [psutil.Process(pid)]
    procs += procs[0].children(recursive=True)
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def client_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def load(url: str, data: list[tuple[str, bytes]], ref: tuple[str, bytes], requests: int, clients: int,
         backoff_s: float | None = None) -> dict:
    """``requests`` inspections from ``clients`` closed-loop clients. A client refused with 503 and
    Retry-After (the queue bound) sends the same request again after the seconds that header says
    (or ``backoff_s``); latencies are those of the served attempts, and ``refused_share`` the refused
    attempts' share of all."""
    local = threading.local()

    def one(i: int) -> tuple[int, float, int]:
        if not hasattr(local, "c"):
            local.c = httpx.Client(timeout=120)
        name, body = data[i % len(data)]
        files = [("query", (name, body, "image/png")), ("references", (ref[0], ref[1], "image/png"))]
        refused = 0
        while True:
            t = time.perf_counter()
            r = local.c.post(f"{url}/v1/inspect", files=files)
            took = time.perf_counter() - t
            if r.status_code != 503 or "retry-after" not in r.headers:
                return r.status_code, took, refused
            refused += 1
            time.sleep(float(r.headers["retry-after"]) if backoff_s is None else backoff_s)

    with ThreadPoolExecutor(clients) as pool:
        c0, t0 = client_cpu_seconds(), time.perf_counter()
        res = list(pool.map(one, range(requests)))
        wall, cpu = time.perf_counter() - t0, client_cpu_seconds() - c0
    lat = sorted(x for s, x, _ in res if s == 200)
    refused = sum(n for _, _, n in res)
    return {"requests": requests, "clients": clients, "errors": sum(s != 200 for s, _, _ in res),
            "requests_per_s": round(len(lat) / wall, 2), "p50_ms": round(1e3 * statistics.median(lat), 1),
            "p99_ms": round(1e3 * percentile(lat, 0.99), 1), "refused_share": round(refused / (refused + requests), 3),
            "client_cpu_ms_per_request": round(1e3 * cpu / requests, 1)}


def batch_stats(url: str) -> dict:
    """The service's batching counters (one worker's), or {} from a service without them."""
    return httpx.get(f"{url}/v1/health", timeout=30).json().get("inspect_queue") or {}


def measure(url: str, proc: subprocess.Popen, data: list[tuple[str, bytes]], ref: tuple[str, bytes], requests: int,
            clients: int, warmup: int, backoff_s: float | None = None) -> dict:
    """Warm-up, the single-request latency (one client), then ``clients`` concurrent clients."""
    load(url, data, ref, warmup, clients)  # every worker caches the reference
    single = load(url, data, ref, 20, 1)
    c0, b0 = server_cpu_seconds(proc.pid), batch_stats(url)
    many = load(url, data, ref, requests, clients, backoff_s)
    many["server_cpu_ms_per_request"] = round(1e3 * (server_cpu_seconds(proc.pid) - c0) / requests, 1)
    b1 = batch_stats(url)
    if b0 and b1:  # one worker's counters
        served = max(1, b1["batched_requests"] - b0["batched_requests"])
        many["mean_batch"] = round(served / max(1, b1["batches"] - b0["batches"]), 2)
        # The model's part of a request (its thread, under the model lock; one compute thread).
        many["model_ms_per_request"] = round(1e3 * (b1["model_s"] - b0["model_s"]) / served, 1)
        many["model_cpu_ms_per_request"] = round(1e3 * (b1["model_cpu_s"] - b0["model_cpu_s"]) / served, 1)
    return {"single_p50_ms": single["p50_ms"], **many, "p99_over_single": round(many["p99_ms"] / single["p50_ms"], 2)}


def workload(work: Path) -> tuple[list[tuple[str, bytes]], tuple[str, bytes]]:
    """100 ELPV cells (50 normal, 50 defective) at 256 px as queries, and one normal reference."""
    lot, refs = make_lot(work / "data", 300) if not (work / "data" / "lot").exists() else (
        work / "data" / "lot", work / "data" / "refs")
    queries = sorted((lot / "good").glob("*.png"))[:50] + sorted((lot / "defect").glob("*.png"))[:50]
    r0 = sorted(refs.glob("*.png"))[0]
    return [(q.name, q.read_bytes()) for q in queries], (r0.name, r0.read_bytes())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=2, help="runs of every worker count, the order reversed each round")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--model", default="default")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "adcopilot_bench_line")
    args = ap.parse_args()
    os.environ.setdefault("ADCOPILOT_HOME", str(args.work / "home"))  # no stored calibration
    data, ref = workload(args.work)
    out: dict = {"machine": {"cpus": len(os.sched_getaffinity(0)), "load_avg_before": os.getloadavg()[0]},
                 "model": args.model, "runs": []}
    for rnd in range(args.rounds):
        for w in args.workers if rnd % 2 == 0 else args.workers[::-1]:
            port = free_port()
            proc = start(args.model, w, port)
            try:
                run = {"round": rnd + 1, "workers": w, "load_avg": round(os.getloadavg()[0], 1),
                       **measure(f"http://127.0.0.1:{port}", proc, data, ref, args.requests, args.clients, 4 * args.clients)}
            finally:
                stop(proc)
            out["runs"].append(run)
            print(json.dumps(run), file=sys.stderr)
    # Per round, each worker count's throughput over the first count's.
    base = {r["round"]: r["requests_per_s"] for r in out["runs"] if r["workers"] == args.workers[0]}
    out["speedup"] = [{"round": r["round"], "workers": r["workers"], "x": round(r["requests_per_s"] / base[r["round"]], 2)}
                      for r in out["runs"]]
    out["machine"]["load_avg_after"] = os.getloadavg()[0]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
