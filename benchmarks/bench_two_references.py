"""Latency with two cached references: the default model (fused score) beside its pooled map, same run.

Two 256-pixel references (ELPV poly training normals) are encoded once (the default model also encodes
their seven other dihedral views: that time is reported apart); then ``--n`` different queries (test
cells) are inspected by both, alternating query by query so that both see the same machine load, with
registration on. Prints the median and p90 ms per pair and the reference encoding time.

    OMP_NUM_THREADS=1 python benchmarks/bench_two_references.py --n 40
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from bench_threshold import models

from adcopilot.data.elpv import split


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--model", default="default")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cps = {k: v for k, v in models(args.model).items() if k != "baseline"}
    parts = split(seed=0)
    refs = [c.path for c in parts["train"] if c.kind == "poly" and c.probability == 0.0][:2]
    queries = [c.path for c in parts["test"] if c.kind == "poly"][: args.n + 1]
    for name, cp in cps.items():
        t = time.perf_counter()
        cp.inspect(queries[0], refs)  # encodes (and caches) the references
        print(f"{name}: first inspection, references encoded: {(time.perf_counter() - t) * 1e3:.0f} ms", flush=True)
    ms: dict[str, list[float]] = {k: [] for k in cps}
    for q in queries[1:]:
        for name, cp in cps.items():
            t = time.perf_counter()
            cp.inspect(q, refs)
            ms[name].append((time.perf_counter() - t) * 1e3)
    for name, v in ms.items():
        print(f"{name}: median {np.median(v):.1f} ms, p90 {np.percentile(v, 90):.1f} ms per pair "
              f"({len(v)} pairs, 2 cached references)", flush=True)


if __name__ == "__main__":
    main()
