"""Curation speed: samples from 1,000 labelled images (target: 10,000+ samples in <= 2 minutes, 2 cores).

Builds (once, cached in ``--data``) an MVTec-style tree of ``--images`` images of five classes
named like MVTec's (so the object questions are asked too): 40% good, 60% with one of two
defect types and an exact mask, plus three malformed files (a mask of the wrong size, an
unreadable image, a folder of unknown layout) that must be reported and skipped. Then times a
fresh ``curate`` run (not the data building) and checks the card: all seven MMAD sub-tasks,
captions, VQA and localization present, every malformed file skipped.

Run::

    python benchmarks/bench_curate.py --images 1000 --size 512 --workers 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import cv2
import numpy as np

from adcopilot.data.curate import CurateConfig, curate
from adcopilot.data.questions import MMAD_SUBTASK

CLASSES = {"bottle": ("broken_large", "contamination"), "screw": ("scratch_head", "thread_side"),
           "tile": ("crack", "oil"), "wood": ("hole", "color"), "zipper": ("broken_teeth", "fabric_border")}


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    small = rng.random((size // 16, size // 16, 3)).astype(np.float32)
    img = cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)
    img += rng.normal(0, 0.03, img.shape).astype(np.float32)
    return (np.clip(img, 0, 1) * 200 + 20).astype(np.uint8)


def build(root: Path, n: int, size: int, seed: int = 0) -> Path:
    """An MVTec-style tree with ``n`` images (and three malformed files); cached by its marker."""
    marker = root / f".built_{n}_{size}_{seed}"
    if marker.exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(seed)
    per_class = n // len(CLASSES)
    for ci, (cls, defects) in enumerate(CLASSES.items()):
        base = root / "mvtec" / cls
        count = per_class if ci < len(CLASSES) - 1 else n - per_class * (len(CLASSES) - 1)
        for i in range(count):
            img = _texture(rng, size)
            if i % 5 < 2:
                folder = base / ("train" if i % 2 else "test") / "good"
                folder.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(folder / f"{i:04d}.png"), img)
                continue
            d = defects[i % 2]
            mask = np.zeros((size, size), np.uint8)
            x, y = (int(v) for v in rng.integers(size // 10, size * 8 // 10, 2))
            if i % 2:
                cv2.line(mask, (x, y), (x + size // 6, y + size // 12), 255, max(2, size // 100))
            else:
                cv2.circle(mask, (x, y), size // 25, 255, -1)
            img[mask > 0] = img[mask > 0] // 3
            folder = base / "test" / d
            gt = base / "ground_truth" / d
            folder.mkdir(parents=True, exist_ok=True)
            gt.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(folder / f"{i:04d}.png"), img)
            cv2.imwrite(str(gt / f"{i:04d}_mask.png"), mask)
    # Malformed input: a mask of the wrong size, an unreadable image, a folder of unknown layout.
    bad = root / "mvtec" / "bottle"
    cv2.imwrite(str(bad / "test" / "contamination" / "bad_mask.png"), _texture(rng, size))
    cv2.imwrite(str(bad / "ground_truth" / "contamination" / "bad_mask_mask.png"), np.zeros((7, 7), np.uint8))
    (bad / "test" / "contamination" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (root / "unknown").mkdir(exist_ok=True)
    (root / "unknown" / "notes.txt").write_text("not a data set")
    marker.write_text("ok")
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--data", type=Path, default=Path("/tmp/adcopilot_bench_curate/data"))
    ap.add_argument("--out", type=Path, default=Path("/tmp/adcopilot_bench_curate/out"))
    args = ap.parse_args()

    t = time.perf_counter()
    root = build(args.data, args.images, args.size)
    build_s = time.perf_counter() - t
    shutil.rmtree(args.out, ignore_errors=True)
    t = time.perf_counter()
    report = curate(CurateConfig(sources=[str(root / "mvtec"), str(root / "unknown")], out=args.out,
                                 workers=args.workers, progress=False))
    seconds = time.perf_counter() - t
    card = json.loads((args.out / "card.json").read_text())
    subtasks = {MMAD_SUBTASK[t] for t in card["by_type"]}
    result = {
        "images": args.images + 2,
        "image_size": args.size,
        "workers": args.workers,
        "images_used": report.n_images,
        "images_skipped": len(report.skipped),
        "sources_skipped": len(report.source_problems),
        "samples": report.n_samples,
        "seconds": round(seconds, 1),
        "samples_per_second": round(report.n_samples / seconds, 1),
        "tasks": report.counts["task"],
        "mmad_subtasks": len(subtasks),
        "data_build_seconds": round(build_s, 1),
    }
    print(json.dumps(result, indent=1))
    ok = (seconds <= 120 and report.n_samples >= 10_000 and len(subtasks) == 7 and len(report.skipped) == 2
          and len(report.source_problems) == 1 and {"caption", "vqa", "localization"} <= set(report.counts["task"]))
    print("target met" if ok else "TARGET MISSED")


if __name__ == "__main__":
    main()
