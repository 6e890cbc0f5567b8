"""What a reference costs with each one-reference image score: its first use, its bytes in the cache, its views.

Per score (the shipped checkpoint as it is, "blend", and with ``"image_score": "map"``), each in its own process
(so that RSS is its own), one thread, 256 px, ELPV mono cells from their files:

* the first inspection with a new reference against the next ones with it (the blend makes the reference's seven
  flips and turns and its self-distance on first use and keeps them);
* ``--refs`` training cells used as references in turn for one query: the bytes each cached entry holds
  (``caches.footprint``), the RSS growth per reference, and how many stay cached under the cache's byte bound;
* the seven views through the tower in one batch against one at a time (``--threads``);
* the blend's image score by its parts (the views' search, the query's own twins, the fused map), with a cached
  reference.

    OMP_NUM_THREADS=1 python benchmarks/bench_reference_cost.py [--refs 60 150] [--threads 1 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any


def _median_ms(f: Callable[[], Any], n: int = 15) -> float:
    f()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return round(1e3 * statistics.median(times), 2)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def child(score: str, refs: int) -> dict[str, Any]:
    """First use, cached use and cache bytes with ``score`` as the one-reference score."""
    import torch

    from adcopilot import Copilot
    from adcopilot.caches import footprint
    from adcopilot.data.elpv import split
    from adcopilot.model.registry import load_detector, resolve_model

    torch.set_num_threads(1)
    det, _ = load_detector(resolve_model("default"))
    det.model.cfg = replace(det.model.cfg, image_score=score)
    cp = Copilot(det)
    cells = split(seed=0)
    query = next(c.path for c in cells["test"] if c.kind == "mono" and c.probability == 1.0)
    pool = [c.path for c in cells["train"] if c.kind == "mono"][: refs + 12]
    cp.inspect(query, [pool[0]])  # warm-up
    first = []
    for r in pool[1:11]:  # a new reference each time, then the same one again
        t = time.perf_counter()
        cp.inspect(query, [r])
        first.append(time.perf_counter() - t)
    cached = _median_ms(lambda: cp.inspect(query, [pool[1]]))
    start = _rss_mb()
    for r in pool[11 : 11 + refs]:
        cp.inspect(query, [r])
    held = [footprint(e) for e in cp._cache.values()]
    return {"score": score, "first_ms": round(1e3 * statistics.median(first), 1), "cached_ms": cached,
            "entry_mb": round(statistics.median(held) / 2**20, 2), "rss_mb_per_ref": round((_rss_mb() - start) / refs, 2),
            "refs": refs, "cached_refs": cp.cached_references}


def views(threads: int) -> dict[str, Any]:
    """The seven views of a 256 px image through the tower: one batch against one at a time."""
    import numpy as np
    import torch

    from adcopilot.model.baseline import normalized_patch_features
    from adcopilot.model.detector import to_batch
    from adcopilot.model.registry import load_detector, resolve_model
    from adcopilot.model.score import dihedral_views

    torch.set_num_threads(threads)
    det, _ = load_detector(resolve_model("default"))
    seven = dihedral_views(np.random.default_rng(0).random((256, 256, 3), dtype=np.float32))[1:]
    with torch.inference_mode():
        batch = _median_ms(lambda: normalized_patch_features(det.fused_tower, to_batch(seven)), 7)
        each = _median_ms(lambda: [normalized_patch_features(det.fused_tower, to_batch([v])) for v in seven], 7)
    return {"threads": threads, "batch_ms": batch, "one_at_a_time_ms": each}


def score_parts() -> dict[str, Any]:
    """The blend's parts with a cached reference (one thread)."""
    import torch

    from adcopilot import Copilot
    from adcopilot.data.elpv import split
    from adcopilot.model.score import fused_score, self_gated_distance, view_distance

    torch.set_num_threads(1)
    cp = Copilot.load()
    det, cfg = cp.detector, cp.detector.model.cfg
    cells = split(seed=0)
    ref = next(c.path for c in cells["train"] if c.kind == "mono" and c.probability == 0.0)
    query = next(c.path for c in cells["test"] if c.kind == "mono")
    _, enc = cp._reference(ref, "reference")
    q, _ = cp._reference(query, "query")  # the query at the model's size, as a reference would be read
    refs = det._scored_inputs([enc])
    with torch.inference_mode():
        qf = det.patch_features(q)
        out = det.model.compare_with(qf, refs, with_tokens=False)
        prob = det.detection(q, [enc]).amap
        tokens = qf[0].flatten(1).T
        d8 = view_distance(out["distance"][0, 0], tokens, refs.views[0])
        gated = self_gated_distance(d8, tokens, refs.own.view(d8.shape), cfg.self_gate, cfg.twin_quantile)
        return {"views_search_ms": _median_ms(lambda: view_distance(out["distance"][0, 0], tokens, refs.views[0]), 30),
                "own_twins_ms": _median_ms(lambda: self_gated_distance(d8, tokens, refs.own.view(d8.shape),
                                                                       cfg.self_gate, cfg.twin_quantile), 30),
                "fused_map_ms": _median_ms(lambda: fused_score(prob, gated, cfg.fused_weight), 30),
                "whole_score_ms": _median_ms(lambda: det._score(prob, out, qf, refs), 30)}


def _run(*args: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{' '.join(args)} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--refs", type=int, nargs="+", default=[60, 150], help="references used in turn, per run")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, *rest = args.child
        got = child(rest[0], int(rest[1])) if kind == "cache" else views(int(rest[0])) if kind == "views" \
            else score_parts()
        print(json.dumps(got))
        return
    print("| score | references in turn | first use ms | cached ms | MB per cached entry | RSS MB per reference "
          "| still cached |\n|---|---:|---:|---:|---:|---:|---:|")
    for refs in args.refs:
        for score in ("map", "blend"):
            r = _run("--child", "cache", score, str(refs))
            print(f"| {score} | {refs} | {r['first_ms']} | {r['cached_ms']} | {r['entry_mb']} | {r['rss_mb_per_ref']} "
                  f"| {r['cached_refs']} |", flush=True)
    print("\n| threads | seven views in one batch ms | one at a time ms |\n|---:|---:|---:|")
    for t in args.threads:
        r = _run("--child", "views", str(t))
        print(f"| {t} | {r['batch_ms']} | {r['one_at_a_time_ms']} |", flush=True)
    r = _run("--child", "parts")
    print("\nthe blend's score, cached reference, one thread (ms): " + ", ".join(f"{k} {v}" for k, v in r.items()))


if __name__ == "__main__":
    main()
