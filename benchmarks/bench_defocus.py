"""A query out of focus: the default model's false alarms and misses with and without the references softened
to match (``model/focus.py``, ``Copilot.refocus``).

Every query of an MMAD-format benchmark (the bundled one, or ``benchmarks/surfaces.py``'s outside surfaces) is
inspected against its first random template (``--shots``: the first templates) as stored, and blurred by a
Gaussian of sigma 1 and 1.5 px *of the model's input* (so sigma x the image's side / the model's size in its own
pixels: a defocus the model sees alike on every image size), with the refocusing on and off. Reported: image
AUROC, false alarms and misses at the model's own threshold, the share of queries whose references were
softened and of those the image check called blurred (``--rho``: instead, the content-independent trigger
the RESULTS section names as a lead). Run:

    python benchmarks/bench_defocus.py --benchmark ~/.cache/adcopilot/benchmarks/surfaces/mmad.json
    python benchmarks/bench_defocus.py --benchmark bundled --limit 200
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import torch
from benchmark_items import benchmark_items
from PIL import Image
from tqdm import tqdm

from adcopilot import Copilot
from adcopilot.eval.detection import auroc
from adcopilot.imaging import to_float_array
from adcopilot.model.focus import sharpness, soften


def rho(image: np.ndarray) -> float:
    """Sharpness after a sigma-1 blur over sharpness: near 1 for an image already soft, lower for a sharp one."""
    return sharpness(soften(image, 1.0)) / max(sharpness(image), 1e-6)


def print_rho(items: list, root: Path, size: int, sigmas: list[float]) -> None:
    """Per class, percentiles of rho(normal query, defocused by each sigma) / rho(its first template)."""
    by_class: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for key, entry in items:
        if "/good/" in key:
            pair = tuple(to_float_array(Image.open(root / k).convert("RGB"), size)
                         for k in (key, entry["random_templates"][0]))
            by_class.setdefault("/".join(key.split("/")[:2]), []).append(pair)  # type: ignore[arg-type]
    for name, pairs in sorted(by_class.items()):
        for s in sigmas:
            v = np.array([rho(soften(q, s)) / rho(r) for q, r in pairs])
            print(f"{name} ({len(v)} normal queries), defocus {s:g}: rho ratio p1 / p5 / p50 / p95 "
                  + " / ".join(f"{x:.2f}" for x in np.percentile(v, [1, 5, 50, 95])))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--benchmark", default="bundled", help="'bundled' or an MMAD-format JSON file")
    ap.add_argument("--model", default="default")
    ap.add_argument("--sigmas", type=float, nargs="+", default=[0.0, 1.0, 1.5], help="defocus, model pixels")
    ap.add_argument("--shots", type=int, default=1)
    ap.add_argument("--limit", type=int, default=None, help="a seeded subset of the queries")
    ap.add_argument("--rho", action="store_true",
                    help="instead: per class, the normal queries' rho over their reference's (a trigger lead, see RESULTS)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    path, items = benchmark_items(args.benchmark, args.limit)
    root = path.parent
    cp = Copilot.load(args.model)
    size = cp.detector.image_size
    if args.rho:
        print_rho(items, root, size, args.sigmas)
        return
    rows = {(s, on): {"score": [], "flag": [], "soft": 0, "blurred": 0} for s in args.sigmas for on in (False, True)}
    labels, classes = [], []
    for key, entry in tqdm(items, desc="queries"):
        query = np.asarray(Image.open(root / key).convert("RGB"))
        refs = [np.asarray(Image.open(root / t).convert("RGB")) for t in entry["random_templates"][: args.shots]]
        labels.append(int("/good/" not in key))
        classes.append("/".join(key.split("/")[:2]))
        for (s, on), row in rows.items():
            q = cv2.GaussianBlur(query, (0, 0), s * query.shape[1] / size) if s else query
            cp.refocus = on
            r = cp.inspect(q, refs)
            row["score"].append(r.score)
            row["flag"].append(r.verdict == "anomalous")
            row["soft"] += any("softer than its references" in n for n in r.notes)
            row["blurred"] += r.image_check is not None and "blur" in r.image_check
    y = np.asarray(labels)
    print(f"{path}: {len(y)} queries ({int(y.sum())} defective), model {cp.model_name}, {args.shots} reference(s), "
          f"threshold {cp.threshold_with(args.shots):.4f}")
    print("| defocus (sigma, model px) | refocus | image AUROC | false alarms | misses | softened | called blurred |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for (s, on), row in rows.items():
        sc, fl = np.asarray(row["score"]), np.asarray(row["flag"])
        print(f"| {s:g} | {'on' if on else 'off'} | {100 * auroc(list(sc), list(y)):.1f} | {100 * fl[y == 0].mean():.1f} % | "
              f"{100 * (~fl[y == 1]).mean():.1f} % | {100 * row['soft'] / len(y):.0f} % | {100 * row['blurred'] / len(y):.0f} % |")
    c = np.asarray(classes)
    for name in sorted(set(classes)):
        m = c == name
        if len(set(y[m])) < 2:
            continue
        cells = [f"{s:g} {'on' if on else 'off'} {100 * auroc(list(np.asarray(row['score'])[m]), list(y[m])):.1f}"
                 for (s, on), row in rows.items()]
        print(f"{name}: image AUROC " + ", ".join(cells))


if __name__ == "__main__":
    main()
