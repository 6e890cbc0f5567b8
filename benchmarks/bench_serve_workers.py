"""Service throughput by worker processes: ``adcopilot serve --workers N`` on loopback, 1 vs 2 workers.

For each worker count a real ``adcopilot serve`` is started on 127.0.0.1 (the default model unless
``--model``), waited for until every worker has loaded its model, warmed up, then measured:

* one client, one request at a time: the single-request latency (p50);
* ``--clients`` concurrent clients, ``--requests`` requests: requests/s, p50 and p99 latency, and
  the CPU time the server's processes (supervisor and workers) spent per request: on a shared
  machine, where wall-clock scaling is drowned by other jobs, what the work costs on dedicated cores.

Each request uploads an ELPV cell (256 px) and one normal reference (cached by content in each
worker after its first use). Only loopback is used; the run is bounded by ``--requests``.

Run::

    python benchmarks/bench_serve_workers.py [--workers 1 2] [--clients 8] [--requests 200] [--model default]
"""

from __future__ import annotations

import argparse
import json
import os
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


def start(model: str, workers: int, port: int) -> subprocess.Popen:
    """A real ``adcopilot serve``, returned once ``workers`` distinct worker processes are ready."""
    proc = subprocess.Popen([sys.executable, "-m", "adcopilot", "serve", "--model", model, "--workers", str(workers),
                             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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


def load(url: str, data: list[tuple[str, bytes]], ref: tuple[str, bytes], requests: int, clients: int) -> dict:
    local = threading.local()

    def one(i: int) -> tuple[int, float]:
        if not hasattr(local, "c"):
            local.c = httpx.Client(timeout=120)
        name, body = data[i % len(data)]
        files = [("query", (name, body, "image/png")), ("references", (ref[0], ref[1], "image/png"))]
        t = time.perf_counter()
        r = local.c.post(f"{url}/v1/inspect", files=files)
        return r.status_code, time.perf_counter() - t

    with ThreadPoolExecutor(clients) as pool:
        t0 = time.perf_counter()
        res = list(pool.map(one, range(requests)))
        wall = time.perf_counter() - t0
    lat = sorted(x for _, x in res)
    return {"requests": requests, "clients": clients, "errors": sum(s != 200 for s, _ in res),
            "requests_per_s": round(requests / wall, 2), "p50_ms": round(1e3 * statistics.median(lat), 1),
            "p99_ms": round(1e3 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--model", default="default")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "adcopilot_bench_line")
    args = ap.parse_args()
    os.environ.setdefault("ADCOPILOT_HOME", str(args.work / "home"))  # no stored calibration
    lot, refs = make_lot(args.work / "data", 300) if not (args.work / "data" / "lot").exists() else (
        args.work / "data" / "lot", args.work / "data" / "refs")
    queries = sorted((lot / "good").glob("*.png"))[:50] + sorted((lot / "defect").glob("*.png"))[:50]
    data = [(q.name, q.read_bytes()) for q in queries]
    r0 = sorted(refs.glob("*.png"))[0]
    ref = (r0.name, r0.read_bytes())
    out: dict = {"machine": {"cpus": len(os.sched_getaffinity(0)), "load_avg_before": os.getloadavg()[0]},
                 "model": args.model, "runs": []}
    for w in args.workers:
        port = free_port()
        proc = start(args.model, w, port)
        url = f"http://127.0.0.1:{port}"
        try:
            load(url, data, ref, 4 * args.clients, args.clients)  # warm-up: every worker caches the reference
            single = load(url, data, ref, 20, 1)
            c0 = server_cpu_seconds(proc.pid)
            many = load(url, data, ref, args.requests, args.clients)
            many["server_cpu_ms_per_request"] = round(1e3 * (server_cpu_seconds(proc.pid) - c0) / args.requests, 1)
        finally:
            stop(proc)
        run = {"workers": w, "single_p50_ms": single["p50_ms"], **many,
               "p99_over_single": round(many["p99_ms"] / single["p50_ms"], 2)}
        out["runs"].append(run)
        print(json.dumps(run), file=sys.stderr)
    if len(out["runs"]) > 1:
        base = out["runs"][0]["requests_per_s"]
        out["speedup"] = {r["workers"]: round(r["requests_per_s"] / base, 2) for r in out["runs"]}
    out["machine"]["load_avg_after"] = os.getloadavg()[0]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
