"""Capture conditions: how far the light, the camera and the part's pose may drift from the reference's.

A line's references are taken once; the queries come later, under a lamp that ages, a camera that drifts, a
part laid down a little differently. Every query of an MMAD-format benchmark (normal and defective) is changed
by one capture condition and inspected against its first random template as stored (1 reference, the model's
threshold, no calibration). Reported per condition: image AUROC (does the ranking survive?), false alarms and
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
import io
from collections.abc import Callable

import cv2
import numpy as np
import torch
from benchmark_items import benchmark_items
from PIL import Image
from tqdm import tqdm

from adcopilot import Copilot
from adcopilot.eval.detection import auroc

Change = Callable[[np.ndarray, np.random.Generator], "np.ndarray | bytes"]


def _u8(a: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def gain(g: float) -> Change:
    return lambda a, _: _u8(a.astype(np.float32) * g)


def gamma(g: float) -> Change:
    return lambda a, _: _u8(255.0 * (a.astype(np.float32) / 255.0) ** g)


def ramp(amount: float) -> Change:
    """Brightness from 1 - amount at the left edge to 1 + amount at the right."""
    def change(a: np.ndarray, _: np.random.Generator) -> np.ndarray:
        r = np.linspace(1 - amount, 1 + amount, a.shape[1], dtype=np.float32)[None, :, None]
        return _u8(a.astype(np.float32) * r)
    return change


def noise(sigma: float) -> Change:
    return lambda a, rng: _u8(a.astype(np.float32) + rng.normal(0, sigma, a.shape))


def defocus(sigma: float, size: int) -> Change:
    """A Gaussian blur of ``sigma`` px at the model's input size ``size`` (scaled to the image's own size)."""
    return lambda a, _: cv2.GaussianBlur(a, (0, 0), sigma * max(a.shape[:2]) / size)


#: Geometric conditions compare windows of this share of each side, so that no made-up border enters the frame:
#: the reference's centred window against the query's window moved, turned or zoomed within the query.
WINDOW = 0.84


def _window(a: np.ndarray, dx: float = 0.0, dy: float = 0.0, degrees: float = 0.0, z: float = 1.0) -> np.ndarray:
    """The ``WINDOW`` share of ``a`` about its centre moved by (dx, dy) of its sides, turned and zoomed by ``z``."""
    h, w = a.shape[:2]
    cw, ch = round(w * WINDOW), round(h * WINDOW)
    m = cv2.getRotationMatrix2D((w / 2 + dx * w, h / 2 + dy * h), degrees, z)  # image -> image about the window
    m[:, 2] += [cw / 2 - (w / 2 + dx * w), ch / 2 - (h / 2 + dy * h)]  # the window's centre to the output's
    return cv2.warpAffine(a, m, (cw, ch), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def centred(a: np.ndarray, _: np.random.Generator) -> np.ndarray:
    return _window(a)


def shift(frac: float) -> Change:
    """The part moved right and down by ``frac`` of the image's side (the window moved within the query)."""
    return lambda a, _: _window(a, frac, frac)


def turn(degrees: float) -> Change:
    return lambda a, _: _window(a, degrees=degrees)


def zoom(z: float) -> Change:
    return lambda a, _: _window(a, z=z)


def jpeg(quality: int) -> Change:
    def change(a: np.ndarray, _: np.random.Generator) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, "JPEG", quality=quality)
        return buf.getvalue()
    return change


def conditions(size: int) -> dict[str, tuple[Change, Change | None]]:
    """name -> (the query's change, the reference's: None for as stored, else its centred window)."""
    light: dict[str, Change] = {
        "as stored": lambda a, _: a,
        "gain 0.8": gain(0.8), "gain 1.25": gain(1.25),
        "gamma 0.8": gamma(0.8), "gamma 1.25": gamma(1.25),
        "ramp +-15 %": ramp(0.15), "ramp +-30 %": ramp(0.3),
        "noise 3": noise(3.0), "noise 8": noise(8.0),
        "defocus 0.5 px": defocus(0.5, size), "defocus 1 px": defocus(1.0, size),
        "JPEG 75": jpeg(75),
    }
    pose: dict[str, Change] = {
        f"window {100 * WINDOW:.0f} %": centred,
        "shift 2 %": shift(0.02), "shift 5 %": shift(0.05),
        "turn 2 deg": turn(2.0), "turn 8 deg": turn(8.0),
        "zoom 1.05": zoom(1.05), "zoom 1.15": zoom(1.15),
    }
    return {**{k: (v, None) for k, v in light.items()}, **{k: (v, centred) for k, v in pose.items()}}


def _auc(scores: np.ndarray, labels: np.ndarray) -> str:
    """Image AUROC in points, "-" where only one label is present."""
    value = auroc(list(scores), list(labels))
    return "-" if value is None else f"{100 * value:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--benchmark", default="bundled", help="'bundled' or an MMAD-format JSON file")
    ap.add_argument("--model", default="default")
    ap.add_argument("--limit", type=int, default=None, help="a seeded subset of the queries")
    ap.add_argument("--conditions", nargs="*", default=None, help="only these (by name; 'as stored' always runs)")
    ap.add_argument("--by-group", action="store_true", help="also AUROC and false alarms per product")
    args = ap.parse_args()
    torch.set_num_threads(1)
    path, items = benchmark_items(args.benchmark, args.limit)
    cp = Copilot.load(args.model)
    changes = conditions(cp.detector.image_size)
    if args.conditions:
        unknown = sorted(set(args.conditions) - set(changes))
        if unknown:
            raise SystemExit(f"--conditions: unknown {unknown}; choose from {sorted(changes)}")
        changes = {k: v for k, v in changes.items() if k in args.conditions or k == "as stored"}
    rows: dict[str, list[tuple[float, bool, bool]]] = {name: [] for name in changes}
    labels, groups = [], []
    for i, (key, entry) in enumerate(tqdm(items, desc="queries")):
        query = np.asarray(Image.open(path.parent / key).convert("RGB"))
        ref = path.parent / entry["random_templates"][0]
        window = centred(np.asarray(Image.open(ref).convert("RGB")), np.random.default_rng(0))
        labels.append(int("/good/" not in key))
        groups.append("/".join(key.split("/")[:2]))
        for name, (change, ref_change) in changes.items():
            r = cp.inspect(change(query, np.random.default_rng(i)), [ref if ref_change is None else window])
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
