"""Where lot-level scoring should draw the line between a copy of a picture and a distinct part.

``MutualRecipe.twin_ratio`` leaves out of an image's comparisons any other image whose mean nearest-patch
distance to it is below that share of its median over the others. Two measurements decide the share:

1. **Altered copies** (``--copies``): for 120 cells per ELPV type (seed 0) and the four bundled photo lots,
   copies of some images, altered as a camera or a file system would (the same file, brightness, JPEG,
   a shift, noise, another exposure), are added to the lot and their ratio to the original printed, beside
   the smallest ratio of any pair of distinct images in the same lot.
2. **Distinct pairs of whole lots** (``--cached``): the smallest ratio over every pair of distinct images of
   the lots whose distances ``benchmarks/lot_trim.py`` cached (ELPV training and test splits, the photo
   lots), and how many pairs a given share would leave out.

    python benchmarks/lot_copies.py --copies
    python benchmarks/lot_copies.py --cached --ratio 0.05 0.1
    python benchmarks/lot_copies.py --copies --cached --stretch   # on stretched grey levels, as batch --mutual reads

With ``--stretch`` every image (copies included) has its grey levels stretched before its features, as
``batch --mutual`` reads a lot (``MutualRecipe.stretch``), and ``--cached`` reads the lots cached by
``lot_trim.py --stretch``.
"""

from __future__ import annotations

import argparse
import glob
import io
from collections.abc import Callable, Iterator

import cv2
import numpy as np
import torch
from PIL import Image

from adcopilot import Copilot
from adcopilot.assets import home
from adcopilot.data.elpv import load_cells
from adcopilot.eval.bundled import ensure_bundled
from adcopilot.imaging import load_image, to_float_array
from adcopilot.line.lot import lot_tower
from adcopilot.model.mutual import copies, lot_features, pair_ratios, view_distances
from adcopilot.model.padim import stretch_grey

CACHE = home() / "benchmarks" / "lot_trim"


def _alterations(size: int, rng: np.random.Generator) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    def jpeg(a: np.ndarray, quality: int) -> np.ndarray:
        buf = io.BytesIO()
        Image.fromarray((a * 255).round().astype(np.uint8)).save(buf, "JPEG", quality=quality)
        return np.asarray(Image.open(buf).convert("RGB"), np.float32) / 255

    def warp(a: np.ndarray, angle: float, dx: float, dy: float) -> np.ndarray:
        m = cv2.getRotationMatrix2D((size / 2, size / 2), angle, 1.0)
        m[:, 2] += (dx, dy)
        return cv2.warpAffine(a, m, (size, size), borderMode=cv2.BORDER_REPLICATE)

    def noise(a: np.ndarray, sigma: float) -> np.ndarray:
        return np.clip(a + rng.normal(0, sigma, a.shape), 0, 1).astype(np.float32)

    def exposure(a: np.ndarray) -> np.ndarray:
        moved = warp(a, rng.uniform(-1.5, 1.5), *rng.uniform(-4, 4, 2)) * rng.uniform(0.93, 1.07)
        return noise(moved, 0.01)

    return {
        "same file": lambda a: a.copy(), "brightness x 0.95": lambda a: a * 0.95,
        "JPEG 90": lambda a: jpeg(a, 90), "JPEG 70": lambda a: jpeg(a, 70),
        "shift 1 px": lambda a: warp(a, 0, 1, 0), "shift 3 px": lambda a: warp(a, 0, 3, 0),
        "noise 0.005": lambda a: noise(a, 0.005), "noise 0.02": lambda a: noise(a, 0.02),
        "another exposure": exposure,
    }


def _lots(rng: np.random.Generator) -> Iterator[tuple[str, list[str]]]:
    cells = load_cells()
    for kind in ("mono", "poly"):
        of_kind = [c for c in cells if c.kind == kind]
        yield f"elpv-{kind}", [str(of_kind[i].path) for i in rng.choice(len(of_kind), 120, replace=False)]
    photos = ensure_bundled(progress=False).parent / "HeldOut-Photos"
    for cls in ("coffee_cup", "coins", "flower", "gravel"):
        yield cls, sorted(glob.glob(f"{photos}/{cls}/train/good/*")) + sorted(glob.glob(f"{photos}/{cls}/test/*/*"))


def altered_copies(per_kind: int = 5, stretch: bool = False) -> None:
    rng = np.random.default_rng(0)
    copilot = Copilot.load()
    tower, size = lot_tower(copilot), copilot.detector.image_size
    found: dict[str, list[float]] = {}
    for name, paths in _lots(rng):
        images = [to_float_array(load_image(p), size) for p in paths]
        n = len(images)
        alter = _alterations(size, rng)
        extra = [(kind, i) for kind in alter for i in range(per_kind)]  # (alteration, original)
        lot = images + [alter[kind](images[i]) for kind, i in extra]
        if stretch:
            lot = [stretch_grey(a) for a in lot]
        views = lot_features(tower, torch.from_numpy(np.stack(lot)).permute(0, 3, 1, 2))
        r = pair_ratios(view_distances(views.views[0], list(range(len(lot)))))
        distinct = float(r[:n, :n].min())
        for k, (kind, i) in enumerate(extra):
            found.setdefault(kind, []).append(float(r[n + k, i]))
        print(f"{name}: {n} images, smallest ratio of two distinct ones {distinct:.3f}", flush=True)
    print("\n| altered copy | ratio to its original, min-max over the lots |\n|---|---:|")
    for kind, values in found.items():
        print(f"| {kind} | {min(values):.3f}-{max(values):.3f} |")


def cached_lots(shares: list[float], stretch: bool = False) -> None:
    files = sorted(CACHE.glob("*-stretch.npz" if stretch else "*-w15.npz"))
    if not files:
        print(f"no cached lots in {CACHE}: run benchmarks/lot_trim.py first")
        return
    for f in files:
        d = torch.from_numpy(np.load(f)["dist"].astype(np.float32))  # (N, N, P), a large value for itself
        d[d > 1000] = torch.inf
        r = pair_ratios(d)
        left = ", ".join(f"{s}: {int(copies(d, s).sum())}" for s in shares)
        print(f"{f.name}: {len(d)} images, smallest ratio {float(r.min()):.3f}; pairs left out at {left}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", action="store_true", help="altered copies added to ELPV and photo lots")
    ap.add_argument("--cached", action="store_true", help="distinct pairs of the lots lot_trim.py cached")
    ap.add_argument("--ratio", type=float, nargs="+", default=[0.05, 0.1])
    ap.add_argument("--stretch", action="store_true", help="grey levels stretched before the features (the default lot)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.copies:
        altered_copies(stretch=args.stretch)
    if args.cached:
        cached_lots(args.ratio, args.stretch)


if __name__ == "__main__":
    main()
