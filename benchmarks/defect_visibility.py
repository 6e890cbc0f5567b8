"""Detection and localization on the bundled held-out photos, by how visible each defect is.

The bundle's synthetic defects range from plain to nearly invisible: ``defects.json`` records each
one's *contrast*, the mean over its mask of the largest per-channel change (0-1; 0.1 is a change
of about 25 grey levels). This script splits the defective photos into contrast bands and reports,
per band, against all the normal photos: image AUROC, the share flagged at the run's threshold,
pixel AUROC and PRO, and box IoU (the run's own boxes if a ``mmad-bbox`` run is given; and, as an
upper bound that ignores the verdict, the strongest box of the map at half its peak).

    adcopilot eval detect --benchmark bundled --backend nano --out runs/detect
    adcopilot eval mmad-bbox --benchmark bundled --backend nano --out runs/bbox
    python benchmarks/defect_visibility.py --detect runs/detect --bbox runs/bbox
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
from PIL import Image

from adcopilot.eval.bbox import BBoxRecord, gt_boxes_from_mask, union_iou
from adcopilot.eval.bundled import PHOTOS_DATASET, ensure_bundled
from adcopilot.eval.detection import auroc, pixel_metrics
from adcopilot.eval.mmad import load_mmad
from adcopilot.model.boxes import boxes_from_map


def _map(run: Path, key: str) -> np.ndarray:
    # The detect run stores each map under a hash of the image key (adcopilot.eval.runner).
    return np.load(run / "maps" / (hashlib.sha1(key.encode()).hexdigest()[:20] + ".npy"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--detect", required=True, type=Path, help="folder of an `eval detect` run on the bundle")
    ap.add_argument("--bbox", type=Path, default=None, help="folder of an `eval mmad-bbox` run on the bundle")
    ap.add_argument("--bands", nargs="+", type=float, default=[0.1, 0.2], help="contrast band edges")
    ap.add_argument("--out", type=Path, default=None, help="write the table as JSON here")
    args = ap.parse_args()

    for run, name in ((args.detect, "scores.jsonl"), (args.bbox, "boxes.jsonl")):
        if run is not None and not (run / name).is_file():
            raise SystemExit(f"error: {run}: no {name}; give the folder of an `adcopilot eval` run on the bundle")
    path = ensure_bundled(progress=False)
    bench = load_mmad(path)
    records = json.loads((path.parent / "defects.json").read_text())
    rows = [json.loads(x) for x in (args.detect / "scores.jsonl").read_text().splitlines() if x.strip()]
    scores = {r["image"]: r for r in rows if r["image"].startswith(PHOTOS_DATASET) and r.get("error") is None}
    by_key = {i.key: i for i in bench.items}
    items = {k: i for k, i in by_key.items() if k in scores}
    normals = [k for k, i in items.items() if i.mask_path is None]
    defective = [k for k, i in items.items() if i.mask_path is not None]
    threshold = float(rows[0]["threshold"])
    run_iou: dict[str, float] = {}
    if args.bbox is not None:
        for line in (args.bbox / "boxes.jsonl").read_text().splitlines():
            r = json.loads(line)
            if r["image"] not in records:
                continue
            item = by_key[r["image"]]
            size = Image.open(bench.query(item)).size
            gt = gt_boxes_from_mask(bench.mask(item), size)
            rec = BBoxRecord(image=r["image"], reply=r.get("reply", ""), gt=gt, image_size=size,
                             coords=r.get("coords") or "pixel", error=r.get("error")).evaluate()
            run_iou[r["image"]] = float(rec.iou or 0.0)

    def masks(keys: list[str]) -> list[np.ndarray]:
        out = []
        for k in keys:
            if items[k].mask_path is None:
                w, h = Image.open(bench.query(items[k])).size
                out.append(np.zeros((h, w), bool))
            else:
                out.append(np.asarray(Image.open(bench.mask(items[k]))) > 0)
        return out

    edges = [0.0, *sorted(args.bands), np.inf]
    table = []
    normal_scores = [scores[k]["score"] for k in normals]
    for lo, hi in [*zip(edges[:-1], edges[1:], strict=True), (0.0, np.inf)]:
        keys = [k for k in defective if lo <= records[k]["contrast"] < hi]
        if not keys:
            continue
        s = [scores[k]["score"] for k in keys]
        pix = pixel_metrics([_map(args.detect, k) for k in normals + keys], masks(normals + keys))
        upper = []
        for k in keys:
            amap = _map(args.detect, k)
            gt = gt_boxes_from_mask(bench.mask(items[k]), (amap.shape[1], amap.shape[0]))
            top = boxes_from_map(amap, 0.5 * float(amap.max()))[:1]
            upper.append(union_iou([b for b, _ in top], gt))
        row = {
            "contrast": f"{lo:.2f}-{hi:.2f}" if np.isfinite(hi) else (f">= {lo:.2f}" if lo > 0 else "all"),
            "defects": len(keys),
            "image_auroc": round(100 * auroc(normal_scores + s, [0] * len(normals) + [1] * len(s)), 1),
            "flagged_pct": round(100 * float(np.mean(np.array(s) >= threshold)), 1),
            "pixel_auroc": round(100 * pix["pixel_auroc"], 1),
            "pro": round(100 * pix["pro"], 1),
            "top_box_miou_any_verdict": round(100 * float(np.mean(upper)), 1),
        }
        if run_iou:
            row["run_box_miou"] = round(100 * float(np.mean([run_iou.get(k, 0.0) for k in keys])), 1)
        table.append(row)
    cols = list(table[0])
    print(f"{len(normals)} normal and {len(defective)} defective photos; threshold {threshold}")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for row in table:
        print("| " + " | ".join(str(row[c]) for c in cols) + " |")
    if args.out:
        args.out.write_text(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
