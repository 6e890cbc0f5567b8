"""The global "is this the product?" check: false flags on normal images, catches on bad frames.

Normal images (must never be flagged): every normal query of the bundled benchmark against two of its
random templates, and every normal cell of ELPV's test split (seed 0) against two random normal cells
of the same type from the training split. Defective images are counted too (a flag is then a wrong
reason, not a wrong verdict). Bad frames, made from each normal query of the bundled benchmark and
checked against the same references: black, grey and white frames, a random constant colour, a 1 x 1
image, uniform and Gaussian noise, over- and under-exposure, a heavy blur (sigma 5 px at 256 px), and
another product (a bundled photo of another class against ELPV references and vice versa, and one
photo class against another's).

Each frame is checked as ``inspect`` checks it: registered onto the first reference and compared by the
detector, whose nearest-reference-patch distance map the product test reads (its 25th percentile,
``sanity.patch_distance``). Per group the table gives the flags, their reasons and the patch distance's
minimum / median / maximum, which the "not the reference product" thresholds are chosen between.
Run:

    python benchmarks/bench_sanity.py [--elpv-limit N] [--out sanity.json]
"""

from __future__ import annotations

import argparse
import collections
import json
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from adcopilot import Copilot
from adcopilot.data.elpv import split
from adcopilot.eval.bundled import ensure_bundled
from adcopilot.imaging import load_image, to_float_array
from adcopilot.model.inspection import inspect_arrays


def bad_frames(q: np.ndarray, other: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The bad frames made from one normal (S, S, 3) query, and another product's image."""
    s = q.shape[0]
    one = to_float_array(Image.new("RGB", (1, 1), tuple(int(v) for v in rng.integers(0, 256, 3))), s)
    return {
        "black": np.zeros_like(q),
        "grey": np.full_like(q, 0.5),
        "white": np.ones_like(q),
        "constant colour": np.broadcast_to(rng.random(3, dtype=np.float32), q.shape).copy(),
        "1x1": one,
        "uniform noise": rng.random(q.shape, dtype=np.float32),
        "gaussian noise": np.clip(rng.normal(0.5, 0.2, q.shape), 0, 1).astype(np.float32),
        "overexposed": np.clip(q * 2.5 + 0.3, 0, 1),
        "underexposed": q * 0.12,
        "blurred": cv2.GaussianBlur(q, (0, 0), 5),
        "other product": other,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--elpv-limit", type=int, default=None, help="ELPV test normals per type (seeded subset)")
    ap.add_argument("--out", default=None, help="write the counts and every patch distance as JSON here")
    args = ap.parse_args()
    cp = Copilot.load(args.model)
    size = cp.detector.image_size
    rng = np.random.default_rng(0)
    root = ensure_bundled().parent
    bench = json.loads((root / "mmad.json").read_text())
    arrays: dict[str, np.ndarray] = {}

    def arr(path: str | Path) -> np.ndarray:
        key = str(path)
        if key not in arrays:
            arrays[key] = to_float_array(load_image(path), size)
        return arrays[key]

    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    distances: dict[str, list[float]] = collections.defaultdict(list)
    times: list[float] = []

    def check(group: str, q: np.ndarray, refs: list[str]) -> None:
        encoded = cp._references(refs)  # cached, as inspect's references
        core = inspect_arrays(cp.detector, q, encoded, registration=cp.registration)
        t = time.perf_counter()
        reason = cp.check(q, cp.reference_profiles(refs, cp._plain_arrays(refs)), core)
        times.append(time.perf_counter() - t)
        counts[group][reason or "passed"] += 1
        distances[group].append(core.patch_dist)

    def family(key: str) -> str:  # "ELPV" or the photo class
        parts = key.split("/")
        return parts[0] if parts[0] == "ELPV" else parts[1]

    normals = [k for k in bench if "/good/" in k and "/test/" in k]
    for key, entry in tqdm(bench.items(), desc="bundled"):
        refs = [str(root / t) for t in entry["random_templates"][:2]]
        label = "normal" if "/good/" in key else "defective"
        check(f"bundled {key.split('/')[0]} {label}", arr(root / key), refs)
        if label == "normal":
            others = [k for k in normals if family(k) != family(key)]
            other = arr(root / others[int(rng.integers(len(others)))])
            for name, frame in bad_frames(arr(root / key), other, rng).items():
                check(f"bad frame: {name}", frame, refs)
    parts = split(seed=0)
    for kind in ("mono", "poly"):
        pool = [c.path for c in parts["train"] if c.kind == kind and c.probability == 0.0]
        for prob, label in ((0.0, "normal"), (1.0, "defective")):
            cells = [c.path for c in parts["test"] if c.kind == kind and c.probability == prob]
            if args.elpv_limit:
                cells = [cells[i] for i in sorted(rng.permutation(len(cells))[: args.elpv_limit])]
            for path in tqdm(cells, desc=f"ELPV {kind} {label}"):
                refs = [str(pool[i]) for i in rng.choice(len(pool), 2, replace=False)]
                check(f"ELPV test split {kind} {label}", arr(path), refs)
                arrays.pop(str(path))
    table = {g: dict(c) for g, c in sorted(counts.items())}
    for group, c in table.items():
        n = sum(c.values())
        flagged = n - c.get("passed", 0)
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(c.items()) if k != "passed")
        d = distances[group]
        print(f"{group:40s} {flagged:4d} / {n:4d} flagged ({100 * flagged / n:5.1f} %)  "
              f"distance {min(d):.3f} / {float(np.median(d)):.3f} / {max(d):.3f}  {reasons}")
    print(f"median check time {1000 * float(np.median(times)):.2f} ms after the detector (references' profiles cached)")
    if args.out:
        Path(args.out).write_text(json.dumps({"counts": table, "patch_distances": distances}, indent=1))


if __name__ == "__main__":
    main()
