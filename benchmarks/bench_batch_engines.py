"""Batch engines side by side: ``batch --engine local`` and ``--engine ray`` on the same small lot.

Each run is the real command in a fresh process on a fresh output folder (``--json --quiet``): ELPV
cells resized to 256 x 256 with 8 normal references (the lot of ``bench_line.py``), the nearest
reference chosen per query, annotated images and thumbnails written. Reported per run: the
command's wall time (model loading, and for Ray starting a local Ray and its actors, included), the
run's own images/s (from the first query to the last record; for Ray that includes starting it),
the seconds until the first record was written, and the images/s from then on (the results file
polled every 0.1 s). Engines alternate, ``--repeats`` times each, so a change in the machine's load
hits both.

Run::

    python benchmarks/bench_batch_engines.py [--images 100] [--repeats 2] [--actors 2] [--model default]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_line import make_lot

from adcopilot.line.batch import read_records


def run_engine(engine: str, lot: Path, refs: Path, out: Path, model: str, actors: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "adcopilot", "batch", str(lot), "--refs", str(refs), "--out", str(out),
           "--model", model, "--engine", engine, "--json", "--quiet"]
    if engine == "ray":
        cmd += ["--actors", str(actors)]
    results = out / "results.jsonl"
    t0 = time.perf_counter()
    stamps: list[tuple[float, int]] = []  # (seconds since start, records written) at each change
    with tempfile.TemporaryFile("w+") as stdout, subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.PIPE,
                                                                   text=True) as p:
        while p.poll() is None:
            n = len(read_records(results)) if results.exists() else 0
            if n and (not stamps or n != stamps[-1][1]):
                stamps.append((time.perf_counter() - t0, n))
            time.sleep(0.1)
        wall = time.perf_counter() - t0
        if p.returncode != 0:
            raise SystemExit(f"{engine}: exit {p.returncode}: {p.stderr.read().strip()[-2000:]}")
        stdout.seek(0)
        d = json.loads(stdout.read())
    (t_first, n_first), (t_last, n_last) = stamps[0], stamps[-1]
    return {"engine": engine, "images": d["processed"], "wall_s": round(wall, 1), "run_s": d["seconds"],
            "images_per_s": d["images_per_second"], "first_record_s": round(t_first, 1),
            "after_first_images_per_s": round((n_last - n_first) / max(t_last - t_first, 1e-9), 2),
            "model": d["summary"]["run"]["model"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--model", default="default")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        lot, refs = make_lot(root, args.images)
        rows = []
        for _ in range(args.repeats):
            for engine in ("local", "ray"):
                rows.append(run_engine(engine, lot, refs, root / f"out-{engine}", args.model, args.actors))
                print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"cores": len(os.sched_getaffinity(0)), "load_average": os.getloadavg(), "runs": rows}, indent=2))


if __name__ == "__main__":
    main()
