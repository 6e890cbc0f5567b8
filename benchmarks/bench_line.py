"""Inspection-line benchmark: service requests/s, batch images/s at 256 px, report opening time.

1. Service: ``adcopilot serve``'s app under uvicorn on loopback, the default model, one reference
   set registered (its features cached), ``--clients`` concurrent clients sending ELPV cells.
2. Batch: ``run_batch`` on ``--images`` ELPV cells resized to 256 x 256, 8 normal references
   (4 mono, 4 poly; nearest chosen per query), annotated images and thumbnails written.
3. Report: a batch folder of 1,000 records (thumbnails of the real run) rendered to report.html,
   opened in headless Chromium: seconds from navigation to the load event.

Run::

    python benchmarks/bench_line.py [--images 300] [--requests 300] [--clients 4] [--report-rows 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import uvicorn
from PIL import Image

from adcopilot import Copilot
from adcopilot.data.elpv import load_cells
from adcopilot.line.batch import BatchConfig, run_batch
from adcopilot.line.report import build_report
from adcopilot.line.runtime import prepare_for_inference, set_compute_threads
from adcopilot.line.sources import collect
from adcopilot.serve.app import create_app
from adcopilot.serve.browser import HeadlessChromium, find_chromium


def make_lot(root: Path, n: int, size: int = 256) -> tuple[Path, Path]:
    """lot/{good,defect} of n cells and refs/ of 8 normals, all resized to size x size PNG."""
    cells = load_cells()
    good = [c for c in cells if c.probability == 0.0]
    bad = [c for c in cells if c.probability > 0.5]
    refs = [c for c in good if c.kind == "mono"][:4] + [c for c in good if c.kind == "poly"][:4]
    rest = [c for c in good if c not in refs]
    n_bad = n // 4
    chosen = [("good", c) for c in rest[: n - n_bad]] + [("defect", c) for c in bad[:n_bad]]
    for folder, items in (("refs", [("", c) for c in refs]), ("lot", chosen)):
        for sub, c in items:
            d = root / folder / sub
            d.mkdir(parents=True, exist_ok=True)
            Image.open(c.path).convert("RGB").resize((size, size)).save(d / c.name)
    return root / "lot", root / "refs"


def cpu_seconds() -> float:
    """CPU time of this process (all threads): on a shared machine, what the work really cost."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def bench_batch(cp: Copilot, lot: Path, refs: Path, out: Path, workers: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    c0 = cpu_seconds()
    s = run_batch(cp, collect([lot]), [refs], out, BatchConfig(workers=workers, progress=False, report=False))
    cpu = cpu_seconds() - c0
    t = time.perf_counter()
    build_report(out)
    return {"images": s.processed, "seconds": round(s.seconds, 2), "images_per_s": round(s.images_per_second, 1),
            "cpu_ms_per_image": round(1e3 * cpu / max(1, s.processed), 1),
            "report_build_s": round(time.perf_counter() - t, 2)}


def bench_service(cp: Copilot, queries: list[Path], ref: Path, requests: int, clients: int) -> dict:
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(cp), host="127.0.0.1", port=port, log_level="warning",
                                        access_log=False))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    while not srv.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}"
    rid = httpx.post(f"{url}/v1/references", files=[("references", (ref.name, ref.read_bytes(), "image/png"))]).json()["id"]
    data = [(q.name, q.read_bytes()) for q in queries]
    local = threading.local()

    def one(i: int) -> tuple[int, float]:
        if not hasattr(local, "c"):
            local.c = httpx.Client(timeout=60)
        name, body = data[i % len(data)]
        t = time.perf_counter()
        r = local.c.post(f"{url}/v1/inspect", files=[("query", (name, body, "image/png"))], data={"reference_set": rid})
        return r.status_code, time.perf_counter() - t

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(2 * clients)))  # warm-up: reference features cached
        c0, t0 = cpu_seconds(), time.perf_counter()
        res = list(pool.map(one, range(requests)))
        wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    srv.should_exit = True
    th.join(10)
    lat = sorted(x for _, x in res)
    return {"requests": requests, "clients": clients, "errors": sum(s != 200 for s, _ in res),
            "requests_per_s": round(requests / wall, 1),
            "cpu_ms_per_request": round(1e3 * cpu / requests, 1),  # server and clients together
            "p50_ms": round(1e3 * statistics.median(lat), 1),
            "p95_ms": round(1e3 * lat[int(0.95 * (len(lat) - 1))], 1)}


def bench_report(batch_out: Path, rows: int, work: Path) -> dict:
    """Copy a real run's records up to ``rows`` (distinct keys, real thumbnails) and open the report."""
    recs = [json.loads(x) for x in (batch_out / "results.jsonl").read_text().splitlines()]
    out = work / "report1000"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    shutil.copytree(batch_out / "thumbs", out / "thumbs")
    shutil.copy(batch_out / "batch.json", out / "batch.json")
    with (out / "results.jsonl").open("w") as f:
        for i in range(rows):
            r = dict(recs[i % len(recs)])
            r["file"] = f"copy{i // len(recs)}/{r['file']}"
            f.write(json.dumps(r) + "\n")
    t = time.perf_counter()
    html = build_report(out)["html"]
    build = time.perf_counter() - t
    result = {"rows": rows, "html_mb": round(html.stat().st_size / 2**20, 2), "build_s": round(build, 2)}
    if find_chromium() is None:
        result["open_s"] = None
        return result
    with HeadlessChromium(timeout=60) as b:
        b.navigate("about:blank")
        times = []
        for _ in range(3):
            times.append(b.navigate(html.resolve().as_uri()))
            assert b.evaluate("document.querySelectorAll('#results tbody tr').length") == rows
        # Sorting 1,000 rows by score, as a user clicking the column.
        t = time.perf_counter()
        b.evaluate("document.querySelectorAll('#results th')[6].click()")
        sort_s = time.perf_counter() - t
    result.update({"open_s": round(min(times), 3), "open_s_all": [round(x, 3) for x in times], "sort_s": round(sort_s, 3)})
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="model compute threads (default: the line's rule)")
    ap.add_argument("--report-rows", type=int, default=1000)
    ap.add_argument("--model", default="default")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "adcopilot_bench_line")
    args = ap.parse_args()
    os.environ.setdefault("ADCOPILOT_HOME", str(args.work / "home"))  # no stored calibration
    work = args.work
    lot, refs = make_lot(work / "data", args.images) if not (work / "data" / "lot").exists() else (
        work / "data" / "lot", work / "data" / "refs")
    out: dict = {"machine": {"cpus": len(os.sched_getaffinity(0)), "load_avg_before": os.getloadavg()[0]}}
    threads = set_compute_threads(args.threads, reserve=args.workers)
    cp = prepare_for_inference(Copilot.load(args.model))
    out["model"] = cp.model_name
    out["batch"] = bench_batch(cp, lot, refs, work / "batch", args.workers) | {"compute_threads": threads}
    print(json.dumps({"batch": out["batch"]}), file=sys.stderr)
    threads = set_compute_threads(args.threads, reserve=1)
    queries = sorted((lot / "good").glob("*.png"))[:50] + sorted((lot / "defect").glob("*.png"))[:50]
    out["service"] = bench_service(cp, queries, sorted(refs.glob("*.png"))[0], args.requests, args.clients)
    out["service"]["compute_threads"] = threads
    print(json.dumps({"service": out["service"]}), file=sys.stderr)
    out["report"] = bench_report(work / "batch", args.report_rows, work)
    out["machine"]["load_avg_after"] = os.getloadavg()[0]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
