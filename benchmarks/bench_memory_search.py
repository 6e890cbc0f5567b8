"""The product memory's exact and approximate (FAISS) nearest-patch search, side by side in one run.

An adapted model with a memory (``adcopilot adapt``; e.g. ``benchmarks/adapt_elpv.py --steps 0
--memory-patches 32768``) inspects ELPV test cells (mono and poly alternately, defective and normal,
1-shot against a normal training cell of the same type, 256 px, registration on, one thread). Its banks
are cut to each ``--patches`` size (a seeded random subset per variant, same calibration). For each
size, both searches inspect the same queries, alternating with the default model without memory (the
1-shot latency the memory adds to). Reported per size and search: the median ``inspect`` time (wall clock and CPU) and
its ratio to the default model's, the median time of the memory's map alone, the recall of the exact
nearest distance (share of query patches whose bank similarity is the exact maximum, to 1e-5), the mean
and largest error of that similarity, the largest difference of the fused maps and of the scores, and
the image AUROC of the queries under each search.

    OMP_NUM_THREADS=1 python benchmarks/bench_memory_search.py --model MODEL --patches 8192 16384 32768 --n 60
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from clock import Clock
from sklearn.metrics import roc_auc_score

from adcopilot import Copilot
from adcopilot.data.elpv import split
from adcopilot.imaging import load_image, to_float_array
from adcopilot.model.detector import to_batch
from adcopilot.model.memory import ProductMemory, VariantMemory
from adcopilot.model.nearest import PatchIndex, exact_max_similarity

SEARCHES = ("exact", "approximate")


def cut(memory: ProductMemory, patches: int, seed: int = 0) -> ProductMemory:
    """The memory with at most ``patches`` patches per variant (seeded subset, same calibration)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, v in memory.variants.items():
        keep = torch.randperm(v.bank.shape[0], generator=g)[:patches] if v.bank.shape[0] > patches else slice(None)
        out[name] = VariantMemory(v.bank[keep].clone(), v.low, v.high, v.images, v.padim)  # PaDiM's part as it is
    return ProductMemory(out)


def queries(n: int) -> tuple[list[tuple[str, int, str]], dict[str, str]]:
    """n test cells (path, label, kind), mono and poly, defective (1.0) and normal (0.0), interleaved; a
    normal training cell per kind as its reference."""
    cells = split(seed=0)
    refs = {k: str(next(c.path for c in cells["train"] if c.kind == k and c.probability == 0.0))
            for k in ("mono", "poly")}
    pools = [[c for c in cells["test"] if c.kind == k and c.probability == p] for k in ("mono", "poly")
             for p in (1.0, 0.0)]
    rng = np.random.default_rng(0)
    for pool in pools:
        rng.shuffle(pool)
    picked = [pools[i % 4][i // 4] for i in range(n)]
    return [(str(c.path), int(c.probability == 1.0), c.kind) for c in picked], refs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="an adapted model folder with a product memory")
    ap.add_argument("--patches", type=int, nargs="+", default=[8192, 16384, 32768])
    ap.add_argument("--n", type=int, default=60, help="queries (a multiple of 4 keeps the classes balanced)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    adapted, plain = Copilot.load(args.model), Copilot.load("default")
    det = adapted.detector
    if det.memory is None:
        raise SystemExit(f"{args.model}: has no product memory")
    full = det.memory
    items, refs = queries(args.n)
    size = det.image_size
    rows = []
    for patches in args.patches:
        memories = {s: cut(full, patches) for s in SEARCHES}
        for s, m in memories.items():
            m.set_search(s)
        clock = Clock()
        scores: dict[str, list[float]] = {s: [] for s in SEARCHES}
        recall, err_mean, err_max, map_diff, score_diff = [], [], [], 0.0, 0.0
        for s in SEARCHES:  # warm-up: caches the references, builds the indexes
            det.memory = memories[s]
            for k in refs.values():
                adapted.inspect(k, [k])
        plain.inspect(refs["mono"], [refs["mono"]])
        for i, (path, _, kind) in enumerate(items):
            ref = refs[kind]
            maps = {}
            for s in (SEARCHES if i % 2 else SEARCHES[::-1]):
                det.memory = memories[s]
                r = clock(f"inspect {s}", adapted.inspect, path, [ref])
                maps[s], scores[s] = r.anomaly_map, [*scores[s], r.score]
            clock("plain", plain.inspect, path, [ref])
            # The memory stage alone, and the search's accuracy, on the registered-free query features.
            q = to_float_array(load_image(path), size)
            with torch.inference_mode():
                qt = det.patch_features(q)[0].flatten(1).T
                rt = det.encode_reference(to_float_array(load_image(ref), size)).tokens[0]
                sc = det.fused_tower.patch_features(to_batch([q])) if full.needs_scales else None  # for PaDiM
                for s in SEARCHES:
                    clock(f"memory {s}", memories[s].anomaly_map, qt, rt, (size // 8,) * 2, size, None, sc)
                variant = memories["exact"].choose(rt[: (size // 8) ** 2])
                bank = memories["exact"].variants[variant].bank
                exact = exact_max_similarity(qt, bank)
                approx = memories["approximate"]._index[variant].max_similarity(qt)
            recall.append(float((exact - approx < 1e-5).float().mean()))
            err_mean.append(float((exact - approx).mean()))
            err_max.append(float((exact - approx).max()))
            map_diff = max(map_diff, float(np.abs(maps["exact"] - maps["approximate"]).max()))
            score_diff = max(score_diff, abs(scores["exact"][-1] - scores["approximate"][-1]))
        labels = [lb for _, lb, _ in items]
        med = clock.medians()
        cpu = {f"cpu {k}": v for k, v in clock.medians(cpu=True).items()}
        uses = PatchIndex(memories["exact"].variants[variant].bank).approximate
        row = {"patches": patches, "auto": "approximate" if uses else "exact", **med, **cpu,
               "recall": float(np.mean(recall)), "err_mean": float(np.mean(err_mean)), "err_max": max(err_max),
               "map_diff": map_diff, "score_diff": score_diff,
               **{f"auroc {s}": float(roc_auc_score(labels, scores[s])) for s in SEARCHES}}
        rows.append(row)
        print(", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    print(f"\n{args.n} ELPV test cells, 1-shot, 256 px, one thread; medians in ms; default model without memory "
          "in the same run:\n")
    print("| patches per variant | search | inspect ms | / default model | CPU ms | / default model | memory map ms "
          "| recall of the exact nearest | similarity error mean / max | max map difference | max score difference "
          "| image AUROC |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|")
    for r in rows:
        for s in SEARCHES:
            acc = ("1 | 0 / 0 | 0 | 0" if s == "exact" else
                   f"{r['recall']:.3f} | {r['err_mean']:.4f} / {r['err_max']:.3f} | {r['map_diff']:.3f} | "
                   f"{r['score_diff']:.4f}")
            tag = " (auto)" if r["auto"] == s else ""
            cpu_s = r[f"cpu inspect {s}"]
            print(f"| {r['patches']} | {s}{tag} | {r[f'inspect {s}']:.1f} | {r[f'inspect {s}'] / r['plain']:.2f} | "
                  f"{cpu_s:.1f} | {cpu_s / r['cpu plain']:.2f} | {r[f'memory {s}']:.1f} | {acc} | {r[f'auroc {s}']:.3f} |")
    print("\ndefault model (no memory), wall / CPU: " + ", ".join(f"{r['plain']:.1f} / {r['cpu plain']:.1f}"
                                                              for r in rows) + " ms")


if __name__ == "__main__":
    main()
