"""The training-free baseline on EfficientNet-Lite2 against Lite0, in one run: are Lite2's frozen features better?

The baseline (:class:`adcopilot.model.baseline.NearestPatchDetector`: nearest reference patch distance, 256 px)
is built once per backbone and measured on the same items with the same references:

- ELPV mono / poly, k-shot image AUROC: ``bench_elpv.py``'s split, cells and reference draws (one per seed);
- the bundled benchmark's held-out photos, 1-shot: image AUROC, pixel AUROC and PRO (``eval detect``'s runner);
- latency: ``Copilot.inspect`` per pair with a cached 256 px reference (a real photo with a painted defect as
  the query, registration and the image check on, as shipped), the backbones alternating query by query on
  one thread; beside it the tower's own stride-8/16 pass (plain and batch-norm-folded) on one 256 px image.

Run (one thread; a few minutes per 100 cells and shot count on a quiet core):

    OMP_NUM_THREADS=1 python benchmarks/bench_backbone.py --shots 1 5 --seeds 0 1 --limit 200 \
        --out benchmarks/results/backbone.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_elpv import evaluate
from skimage import data

from adcopilot import Copilot
from adcopilot.data.elpv import split
from adcopilot.eval.backends import CopilotBackend
from adcopilot.eval.bundled import ensure_bundled
from adcopilot.eval.mmad import load_mmad
from adcopilot.eval.runner import run_detect
from adcopilot.model.backbone import load_backbone
from adcopilot.model.baseline import NearestPatchDetector
from adcopilot.model.vision import FusedPatchTower

BACKBONES = ["efficientnet-lite0", "efficientnet-lite2"]
PARTS = ["latency", "photos", "elpv"]


def baseline(name: str) -> Copilot:
    """The training-free baseline on backbone ``name``, as ``Copilot.load("baseline")`` builds it."""
    return Copilot(NearestPatchDetector(tower=load_backbone(name)), model_name=f"baseline-{name}")


def elpv(cps: dict[str, Copilot], kinds: list[str], shots: list[int], seeds: list[int], limit: int | None) -> dict:
    """Per backbone and ``{kind}_{k}shot``: mean image AUROC over the seeds' draws, and each draw's."""
    parts = split(seed=0)
    out: dict[str, dict] = {}
    for kind in kinds:
        for k in shots:
            for name, cp in cps.items():
                runs = [evaluate(cp, parts["test"], parts["train"], kind, k, seed, limit) for seed in seeds]
                per = [r["auroc"] for r in runs]
                out.setdefault(name, {})[f"{kind}_{k}shot"] = {
                    "auroc": round(float(np.mean(per)), 4), "auroc_per_seed": per, "n": runs[0]["n"],
                    "n_defective": runs[0]["n_defective"]}
                print(f"{name} ELPV {kind} {k}-shot: AUROC {np.mean(per):.4f} (draws {per}, n={runs[0]['n']})",
                      flush=True)
    return out


def photos(cps: dict[str, Copilot], work: Path) -> dict:
    """Per backbone: image AUROC, pixel AUROC and PRO on the bundled held-out photos, 1-shot."""
    path = ensure_bundled()
    bench = load_mmad(path, path.parent)
    items = bench.select(["HeldOut-Photos"], None, None, None)
    out = {}
    for name, cp in cps.items():
        backend = CopilotBackend("baseline", f"baseline-{name}", copilot=cp)
        m = run_detect(bench, items, backend, work / f"photos-{name}", progress=False)["metrics"]["HeldOut-Photos"]
        out[name] = {k: m[k] for k in ("auroc", "pixel_auroc", "pro", "normal", "anomalous")}
        print(f"{name} photos: {out[name]}", flush=True)
    return out


def _median_ms(fn: Callable[[], Any], n: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t))
    return round(statistics.median(times), 1)


def latency(cps: dict[str, Copilot], n: int) -> dict:
    """Per backbone: median and p90 ms per inspected pair (cached reference), the detector's share,
    and the tower's own pass on one 256 px image (plain and fused)."""
    ref = np.ascontiguousarray(data.gravel()[:256, :256])  # a real photo held out of training
    rng = np.random.default_rng(0)
    for cp in cps.values():
        cp.inspect(ref, [ref])  # warm-up, caches the reference
    times: dict[str, list[float]] = {name: [] for name in cps}
    detect: dict[str, list[float]] = {name: [] for name in cps}
    order = list(cps.items())
    for i in range(n):
        q = ref.copy()
        y, x = rng.integers(20, 200, 2)
        q[y:y + 24, x:x + 24] = 30
        for name, cp in order[:: 1 if i % 2 else -1]:  # alternate who goes first: the same machine load
            t = time.perf_counter()
            r = cp.inspect(q, [ref])
            times[name].append(1000 * (time.perf_counter() - t))
            detect[name].append(r.timings_ms["detect"])
    x = torch.rand(1, 3, 256, 256)
    out = {}
    with torch.inference_mode():
        for name, cp in cps.items():
            tower = cp.detector.tower
            fused = FusedPatchTower.from_tower(tower)
            out[name] = {
                "pair_median_ms": round(statistics.median(times[name]), 1),
                "pair_p90_ms": round(float(np.percentile(times[name], 90)), 1),
                "detect_median_ms": round(statistics.median(detect[name]), 1),
                "tower_ms": _median_ms(lambda t=tower: t.patch_features(x), 20),
                "fused_tower_ms": _median_ms(lambda f=fused: f.patch_features(x), 20),
            }
            print(f"{name} latency: {out[name]}", flush=True)
    return out


def table(results: dict, names: list[str]) -> str:
    """The measured parts as a markdown table, one column per backbone."""
    rows = []
    for key in results.get("elpv", {}).get(names[0], {}):
        cells = [results["elpv"][n][key] for n in names]
        rows.append(f"| ELPV {key.replace('_', ' ')} (draws) | " + " | ".join(
            f"{c['auroc']:.4f} ({', '.join(f'{a:.3f}' for a in c['auroc_per_seed'])})" for c in cells) + " |")
    for key, label in (("auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC"), ("pro", "PRO")):
        if "photos" in results:
            rows.append(f"| photos {label} | " + " | ".join(f"{results['photos'][n][key]:.4f}" for n in names) + " |")
    for key, label in (("pair_median_ms", "ms per pair, median"), ("pair_p90_ms", "ms per pair, p90"),
                       ("detect_median_ms", "detector ms, median"), ("tower_ms", "tower ms (stride 16)"),
                       ("fused_tower_ms", "fused tower ms")):
        if "latency" in results:
            rows.append(f"| {label} | " + " | ".join(str(results["latency"][n][key]) for n in names) + " |")
    head = "| | " + " | ".join(names) + " |\n|---|" + "---:|" * len(names)
    return "\n".join([head, *rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbones", nargs="+", default=BACKBONES)
    ap.add_argument("--shots", nargs="+", type=int, default=[1, 5])
    ap.add_argument("--kinds", nargs="+", default=["mono", "poly"])
    ap.add_argument("--limit", type=int, default=None, help="ELPV cells per type (random subset per seed)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="ELPV reference draws")
    ap.add_argument("--n", type=int, default=40, help="timed pairs per backbone")
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=PARTS, help="what to measure")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cps = {name: baseline(name) for name in args.backbones}
    results: dict[str, Any] = {}
    if "latency" in args.parts:
        results["latency"] = latency(cps, args.n)
    if "photos" in args.parts:
        with tempfile.TemporaryDirectory() as work:
            results["photos"] = photos(cps, Path(work))
    if "elpv" in args.parts:
        results["elpv"] = elpv(cps, args.kinds, args.shots, args.seeds, args.limit)
    print(table(results, list(cps)))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
