"""References framed unlike the query: how a good part's score moves when its reference has another aspect ratio.

A reference saved with another crop (another camera set-up, a region of interest drawn by hand) or resized to
another aspect ratio is squeezed into the model's square its own way, so the part looks stretched against the
query; the product then compares it either squeezed or cut to the query's framing, whichever the query fits
(``model/framing.py``). Every normal query of an MMAD-format benchmark is inspected against its first random
template as stored, cut to ``--fractions`` of its width (centred: another crop), padded by the same share (edge
pixels: a wider view), and resized to that share of its width (stretched). Reported per framing: the false
alarms at the model's threshold (1 reference, no calibration), the median normal score, how many results carry
a note on a reference framed unlike the query (``framing.ASPECT_TOLERANCE``), and how many were cut.

    python benchmarks/bench_framing.py --benchmark ~/.cache/adcopilot/benchmarks/surfaces/mmad.json
    python benchmarks/bench_framing.py --benchmark bundled
"""

from __future__ import annotations

import argparse

import cv2
import numpy as np
import torch
from benchmark_items import benchmark_items
from PIL import Image
from tqdm import tqdm

from adcopilot import Copilot

NOTE = "framed as the queries are"
CUT = "cut to the query's framing"


def framed(ref: np.ndarray, fraction: float, how: str) -> np.ndarray:
    """(H, W, 3) ``ref`` cut to ``fraction`` of its width, padded by the same share of it at both sides, or
    resized to that share of its width."""
    w = ref.shape[1]
    cut = int(round(w * (1 - fraction) / 2))
    if cut == 0:
        return ref
    if how == "resized":
        return cv2.resize(ref, (w - 2 * cut, ref.shape[0]), interpolation=cv2.INTER_AREA)
    return ref[:, cut: w - cut] if how == "cut" else np.pad(ref, ((0, 0), (cut, cut), (0, 0)), mode="edge")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--benchmark", default="bundled", help="'bundled' or an MMAD-format JSON file")
    ap.add_argument("--model", default="default")
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.98, 0.95, 0.9, 0.75])
    ap.add_argument("--limit", type=int, default=None, help="a seeded subset of the normal queries")
    args = ap.parse_args()
    if any(not 0.3 <= f < 1 for f in args.fractions):
        raise SystemExit(f"--fractions: each value must be in [0.3, 1), got {args.fractions}")
    torch.set_num_threads(1)
    path, items = benchmark_items(args.benchmark, args.limit, normal_only=True)
    cp = Copilot.load(args.model)
    framings = [("as stored", 1.0, "cut")] + [(f"{how} to {f:g}", f, how) for how in ("cut", "padded", "resized")
                                              for f in args.fractions]
    found: dict[str, list[tuple[float, bool, bool, bool]]] = {name: [] for name, _, _ in framings}
    for key, entry in tqdm(items, desc="normal queries"):
        query = path.parent / key
        ref = np.asarray(Image.open(path.parent / entry["random_templates"][0]).convert("RGB"))
        for name, fraction, how in framings:
            r = cp.inspect(query, [framed(ref, fraction, how)])
            found[name].append((r.score, r.verdict == "anomalous", any(NOTE in n for n in r.notes),
                                any(CUT in n for n in r.notes)))
    print(f"{path}: {len(items)} normal queries, model {cp.model_name}, 1 reference, threshold {cp.threshold_with(1):.4f}")
    print("| reference | false alarms | median normal score | with a note | cut to the query's framing |")
    print("|---|---:|---:|---:|---:|")
    for name, rows in found.items():
        s, v, n, c = (np.asarray(x) for x in zip(*rows, strict=True))
        print(f"| {name} | {100 * v.mean():.1f} % | {np.median(s):.3f} | {100 * n.mean():.0f} % | {100 * c.mean():.0f} % |")


if __name__ == "__main__":
    main()
