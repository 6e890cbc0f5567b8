"""JPEG compression: how the default model's scores move when the images are saved as JPEG.

Cameras and phones save JPEG; references are often kept lossless. Every query of an MMAD-format benchmark
(the bundled one, or ``benchmarks/surfaces.py``'s outside surfaces) is inspected against its first random
template (``--shots``: templates) at each ``--quality`` (Pillow's encoder, 4:2:0), in set-ups (``--setups``):
the query alone compressed and given as pixels (the reference as stored, lossless: the product cannot tell it
was a JPEG), query and reference compressed alike (pixels), the reference alone compressed (pixels), and each
of these with the compressed images given as their JPEG files' bytes ("as a file": the product reads their
quality and, below 90 on either side, smooths both sides, ``imaging.deblock_sigma``). ``--smooth S ...`` adds,
per sigma, the compressed side as pixels with both images smoothed by a Gaussian of sigma S, and the compressed
query alone smoothed. Reported per
set-up and quality: image AUROC, the false alarms and misses at the model's own threshold (1 reference, no
calibration), and the median score of the normal queries. "png" is the images as stored.

    python benchmarks/bench_jpeg.py --benchmark ~/.cache/adcopilot/benchmarks/surfaces/mmad.json
    python benchmarks/bench_jpeg.py --benchmark bundled --limit 200
"""

from __future__ import annotations

import argparse
import io

import cv2
import numpy as np
import torch
from benchmark_items import benchmark_items
from PIL import Image
from tqdm import tqdm

from adcopilot import Copilot
from adcopilot.eval.detection import auroc


def jpeg_bytes(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def compressed(img: Image.Image, quality: int | None) -> np.ndarray:
    """The (H, W, 3) uint8 image after a JPEG round trip at ``quality`` (None: as it is), as pixels only (the
    product does not know it was a JPEG)."""
    if quality is None:
        return np.asarray(img)
    return np.asarray(Image.open(io.BytesIO(jpeg_bytes(img, quality))).convert("RGB"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--benchmark", default="bundled", help="'bundled' or an MMAD-format JSON file")
    ap.add_argument("--model", default="default")
    ap.add_argument("--quality", type=int, nargs="+", default=[90, 75, 50, 40])
    ap.add_argument("--limit", type=int, default=None, help="a seeded subset of the queries")
    ap.add_argument("--shots", type=int, default=1, help="references per query: the first random templates")
    ap.add_argument("--smooth", type=float, nargs="*", default=[],
                    help="also: the query alone compressed, then query and reference blurred alike (Gaussian sigma, px)")
    ap.add_argument("--setups", nargs="*", default=None, help="only these set-ups (by name; 'query only' always runs)")
    args = ap.parse_args()
    if any(not 1 <= q <= 95 for q in args.quality):
        raise SystemExit(f"--quality: each value must be 1-95 (Pillow's JPEG range), got {args.quality}")
    torch.set_num_threads(1)
    path, items = benchmark_items(args.benchmark, args.limit)
    root = path.parent
    cp = Copilot.load(args.model)
    qualities: list[int | None] = [None, *args.quality]
    # Each set-up: (query compressed, references compressed, how): "pixels" gives the images as arrays (the
    # product cannot tell they were JPEGs), "file" gives the compressed ones as their JPEG bytes (the product reads
    # their quality and smooths both sides, the default), a sigma > 0 blurs both (pixels), < 0 the query alone.
    setups: dict[str, tuple[bool, bool, str | float]] = {
        "query only": (True, False, "pixels"), "query and reference": (True, True, "pixels"),
        "query only, as a file": (True, False, "file"),
        "query and reference, as files": (True, True, "file"),
        "reference only": (False, True, "pixels"), "reference only, as a file": (False, True, "file"),
    }
    setups.update({f"query only, both smoothed {s:g}": (True, False, s) for s in args.smooth})
    setups.update({f"query only, it alone smoothed {s:g}": (True, False, -s) for s in args.smooth})
    setups.update({f"reference only, both smoothed {s:g}": (False, True, s) for s in args.smooth})
    if args.setups:
        unknown = sorted(set(args.setups) - set(setups))
        if unknown:
            raise SystemExit(f"--setups: unknown {unknown}; choose from {sorted(setups)}")
        setups = {k: v for k, v in setups.items() if k in args.setups or k == "query only"}
    # The images as stored once ("png"), under the first set-up's name.
    scores = {(s, q): [] for s in setups for q in qualities if q is not None or s == "query only"}
    labels, verdicts = [], {k: [] for k in scores}
    for key, entry in tqdm(items, desc="queries"):
        query = Image.open(root / key).convert("RGB")
        refs = [Image.open(root / t).convert("RGB") for t in entry["random_templates"][: args.shots]]
        labels.append(int("/good/" not in key))
        for (setup, q) in scores:
            query_c, refs_c, how = setups[setup]
            if how == "file":
                qa = jpeg_bytes(query, q) if query_c and q is not None else np.asarray(query)
                ras = [jpeg_bytes(x, q) if refs_c and q is not None else np.asarray(x) for x in refs]
            else:
                qa = compressed(query, q if query_c else None)
                ras = [compressed(x, q if refs_c else None) for x in refs]
                if isinstance(how, float) and how > 0:
                    qa, ras = cv2.GaussianBlur(qa, (0, 0), how), [cv2.GaussianBlur(a, (0, 0), how) for a in ras]
                elif isinstance(how, float) and how < 0 and q is not None:  # the compressed query alone smoothed
                    qa = cv2.GaussianBlur(qa, (0, 0), -how)
            r = cp.inspect(qa, ras)
            scores[(setup, q)].append(r.score)
            verdicts[(setup, q)].append(r.verdict == "anomalous")
    y = np.asarray(labels)
    print(f"{path}: {len(y)} queries ({int(y.sum())} defective), model {cp.model_name}, {args.shots} reference(s), "
          f"threshold {cp.threshold_with(args.shots):.4f}")
    print("| set-up | quality | image AUROC | false alarms | misses | median normal score |")
    print("|---|---|---:|---:|---:|---:|")
    for (setup, q), s in scores.items():
        v, s = np.asarray(verdicts[(setup, q)]), np.asarray(s)
        print(f"| {setup if q is not None else 'as stored'} | {q or 'png'} | {100 * auroc(list(s), list(y)):.1f} | "
              f"{100 * v[y == 0].mean():.1f} % | {100 * (~v[y == 1]).mean():.1f} % | {np.median(s[y == 0]):.3f} |")


if __name__ == "__main__":
    main()
