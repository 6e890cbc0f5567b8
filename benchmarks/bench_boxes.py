"""One box per defect: box mIoU and box-count error before and after the box rules' growing and
border-speck steps, on the same anomaly maps.

Two sets, 1-shot (MMAD-BBox's setting):

* the bundled benchmark's held-out photos (synthetic defects with exact masks; the first random
  template as the reference), defective and normal queries;
* ELPV-like large dark regions: normal cells of ELPV's test split (seed 0) with a dark rotated
  ellipse painted on (5-25 % of the cell, brightness times 0.15-0.35, soft edge), against a random
  normal training cell of the same type; the painted region's box is the truth. Never committed.

For each image the analysis runs once and boxes are read from it under both rule sets at the model's
threshold (no boxes when the verdict is normal, as ``inspect``). Metrics: mIoU of the union of the
predicted boxes with the union of the true ones (MMAD-BBox's), Acc@0.5, the mean absolute difference
between the number of predicted and true boxes, the share with the right number, and the share of
normal images with a box. Run:

    python benchmarks/bench_boxes.py [--elpv 60] [--seed 0] [--skip-photos] [--out boxes.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from adcopilot import Copilot
from adcopilot.data.elpv import split
from adcopilot.eval.bbox import gt_boxes_from_mask, union_iou
from adcopilot.eval.bundled import ensure_bundled
from adcopilot.imaging import load_image
from adcopilot.model.boxes import BoxRules

RULES = {"before": BoxRules(grow=False, border_speck_frac=0.0), "after": BoxRules()}


def dark_region(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, list[list[int]]]:
    """An (H, W, 3) uint8 image with a painted dark ellipse, and its true box."""
    h, w = image.shape[:2]
    area = rng.uniform(0.05, 0.25) * h * w
    aspect = rng.uniform(1.0, 4.0)
    ry = float(np.sqrt(area / (np.pi * aspect)))
    rx = ry * aspect
    cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
    mask = np.zeros((h, w), np.float32)
    cv2.ellipse(mask, (int(cx), int(cy)), (int(rx), int(ry)), float(rng.uniform(-20, 20)), 0, 360, 1.0, -1)
    ys, xs = np.nonzero(mask > 0)
    box = [[int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]]
    soft = cv2.GaussianBlur(mask, (0, 0), 2.0)[..., None]
    gain = rng.uniform(0.15, 0.35)
    out = image.astype(np.float32) * (1.0 - soft * (1.0 - gain))
    return np.clip(out, 0, 255).astype(np.uint8), box


def score_boxes(cp: Copilot, query, refs: list, gt: list[list[int]], rows: dict[str, list]) -> None:
    a = cp.analyze(query, refs)
    anomalous = a.score >= cp.threshold
    for name, rules in RULES.items():
        pred = [b.bbox_2d for b in cp.boxes(a, cp.threshold, rules)] if anomalous else []
        rows[name].append({"gt": gt, "pred": pred})


def summarize(rows: list[dict]) -> dict[str, float | int]:
    anom = [r for r in rows if r["gt"]]
    normal = [r for r in rows if not r["gt"]]
    ious = np.array([union_iou(r["pred"], r["gt"]) for r in anom])
    counts = np.array([len(r["pred"]) - len(r["gt"]) for r in anom])
    out: dict[str, float | int] = {
        "anomalous": len(anom),
        "mIoU": round(100 * float(ious.mean()), 2),
        "acc@0.5": round(100 * float((ious >= 0.5).mean()), 2),
        "count_error": round(float(np.abs(counts).mean()), 3),
        "right_count_%": round(100 * float((counts == 0).mean()), 2),
    }
    if normal:
        out["normal"] = len(normal)
        out["normal_with_box_%"] = round(100 * float(np.mean([bool(r["pred"]) for r in normal])), 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--elpv", type=int, default=60, help="ELPV cells with a painted dark region")
    ap.add_argument("--seed", type=int, default=0, help="draw of the ELPV cells, regions and references")
    ap.add_argument("--skip-photos", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    cp = Copilot.load(args.model)
    root = ensure_bundled().parent
    bench = json.loads((root / "mmad.json").read_text())
    results: dict[str, dict] = {}
    photos: dict[str, list] = {n: [] for n in RULES}
    photo_items = [] if args.skip_photos else [(k, v) for k, v in bench.items() if k.startswith("HeldOut-Photos/")]
    for key, entry in tqdm(photo_items, desc="photos"):
        mask = entry.get("mask_path")
        size = load_image(root / key).size
        gt = gt_boxes_from_mask(root / mask, size) if mask else []
        score_boxes(cp, str(root / key), [str(root / entry["random_templates"][0])], gt, photos)
    if photo_items:
        results["bundled photos"] = {n: summarize(r) for n, r in photos.items()}
    rng = np.random.default_rng(args.seed)
    parts = split(seed=0)
    cells: dict[str, list] = {n: [] for n in RULES}
    normals = [c for c in parts["test"] if c.probability == 0.0]
    for i in tqdm(rng.permutation(len(normals))[: args.elpv], desc="ELPV dark regions"):
        c = normals[int(i)]
        pool = [t.path for t in parts["train"] if t.kind == c.kind and t.probability == 0.0]
        image, gt = dark_region(np.asarray(load_image(c.path)), rng)
        score_boxes(cp, image, [str(pool[int(rng.integers(len(pool)))])], gt, cells)
    results["ELPV dark regions"] = {n: summarize(r) for n, r in cells.items()}
    for group, by_rules in results.items():
        for name, m in by_rules.items():
            print(f"{group:18s} {name:6s} " + "  ".join(f"{k} {v}" for k, v in m.items()))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
