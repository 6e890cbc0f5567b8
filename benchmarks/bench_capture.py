"""Capture conditions: how far the light, the camera and the part's pose may drift from the reference's.

A line's references are taken once; the queries come later, under a lamp that ages, a camera that drifts, a
part laid down a little differently. Every query of an MMAD-format benchmark (normal and defective) is changed
by one capture condition and inspected against its first random template as stored (1 reference, the model's
threshold, no calibration); the conditions are ``adcopilot.line.capture``'s, which ``adcopilot tolerance`` runs on
a line's own images. Reported per condition: image AUROC (does the ranking survive?), false alarms and
misses at the threshold, the median normal score, and the share of queries the image check calls "not the
product" (with any reason). The table is the line's tolerance sheet: a condition whose false alarms rise is one
to hold steady, or to cover with references taken under it.

Conditions (on the query as stored, 8-bit): gain (exposure), gamma, a left-to-right illumination ramp, sensor
noise (Gaussian, grey levels), defocus (Gaussian sigma in pixels of the model's input), a JPEG round trip (given
as the file's bytes, so the product reads its quality); and the pose: a shift, a turn of the part, a zoom (the
camera closer). Pose conditions compare windows of 84 % of each side, so no made-up border enters the frame:
the reference's centred window (the row "window 84 %" is the query's centred window, their baseline) against
the query's window moved, turned or zoomed within the query.

    python benchmarks/bench_capture.py --benchmark ~/.cache/adcopilot/benchmarks/surfaces/mmad.json
    python benchmarks/bench_capture.py --benchmark bundled
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from benchmark_items import benchmark_items
from PIL import Image
from tqdm import tqdm

from adcopilot import Copilot
from adcopilot.errors import AdcopilotError
from adcopilot.eval.detection import auroc
from adcopilot.line.capture import window
from adcopilot.line.tolerance import choose_conditions


def _auc(scores: np.ndarray, labels: np.ndarray) -> str:
    """Image AUROC in points, "-" where only one label is present."""
    value = auroc(list(scores), list(labels))
    return "-" if value is None else f"{100 * value:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--benchmark", default="bundled", help="'bundled' or an MMAD-format JSON file")
    ap.add_argument("--model", default="default")
    ap.add_argument("--limit", type=int, default=None, help="a seeded subset of the queries")
    ap.add_argument("--conditions", nargs="*", default=None, help="only these (by name; their baselines always run)")
    ap.add_argument("--by-group", action="store_true", help="also AUROC and false alarms per product")
    args = ap.parse_args()
    torch.set_num_threads(1)
    path, items = benchmark_items(args.benchmark, args.limit)
    cp = Copilot.load(args.model)
    try:  # the conditions asked for and their baselines
        changes = choose_conditions(cp.detector.image_size, args.conditions)
    except AdcopilotError as exc:
        raise SystemExit(f"--conditions: {exc}") from None
    rows: dict[str, list[tuple[float, bool, bool]]] = {name: [] for name in changes}
    labels, groups = [], []
    for i, (key, entry) in enumerate(tqdm(items, desc="queries")):
        query = np.asarray(Image.open(path.parent / key).convert("RGB"))
        ref = path.parent / entry["random_templates"][0]
        ref_window = window(np.asarray(Image.open(ref).convert("RGB")))
        labels.append(int("/good/" not in key))
        groups.append("/".join(key.split("/")[:2]))
        for name, cond in changes.items():
            r = cp.inspect(cond.change(query, np.random.default_rng(i)), [ref_window if cond.pose else ref])
            rows[name].append((r.score, r.verdict == "anomalous", r.image_check is not None))
    y, g = np.asarray(labels), np.asarray(groups)
    print(f"{path}: {len(y)} queries ({int(y.sum())} defective), model {cp.model_name}, 1 reference, "
          f"threshold {cp.threshold_with(1):.4f}")
    print("| condition | image AUROC | false alarms | misses | median normal score | not the product |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, found in rows.items():
        s, v, c = (np.asarray(x) for x in zip(*found, strict=True))
        print(f"| {name} | {_auc(s, y)} | {100 * v[y == 0].mean():.1f} % | "
              f"{100 * (~v[y == 1]).mean():.1f} % | {np.median(s[y == 0]):.3f} | {100 * c.mean():.0f} % |")
    if args.by_group:
        print("| condition | " + " | ".join(sorted(set(groups))) + " |")
        print("|---|" + "---:|" * len(set(groups)))
        for name, found in rows.items():
            s, v, _ = (np.asarray(x) for x in zip(*found, strict=True))
            cells = [f"{_auc(s[g == grp], y[g == grp])}; {100 * v[(g == grp) & (y == 0)].mean():.0f} %"
                     for grp in sorted(set(groups))]
            print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
