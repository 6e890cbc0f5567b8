"""An outside benchmark of surfaces: GIMP's texture patterns with defects painted by another library.

Neither the surfaces nor the defects are the project's own: the surfaces are the texture patterns that
Debian's ``gimp-data`` and ``gimp-data-extras`` ship (GPL; read at build time from the packages, for
evaluation only, never committed nor trained on), and the defects come from the ``defect-synthesis``
package (Apache-2.0: scratches, cracks, stains, pitting, burns, warping, with exact masks), not from
``adcopilot.data.synth``, which paints the default model's training defects and the bundled photos'.

Each surface is one product class. A pattern tile is enlarged to at least ``MIN_TILE`` px on its shorter
side and tiled; every image is a 256 px crop of that tiling at a random offset with a little lighting
and sensor noise (another "shot" of the surface). Per class: 8 template shots, ``--normal`` normal and
``--defective`` defective queries (the six kinds of defect in turn). The folder is an MMAD-format benchmark
(``mmad.json`` with an Anomaly Detection question per query, masks, templates), so the product's own
runners score it::

    pip install --no-deps defect-synthesis==0.1.0     # its opencv-python would shadow the headless one
    python benchmarks/surfaces.py --out ~/.cache/adcopilot/benchmarks/surfaces
    adcopilot eval detect --benchmark ~/.cache/adcopilot/benchmarks/surfaces/mmad.json --backend nano --k-shot 1

The patterns are taken from the Debian packages (``apt-get download`` + ``dpkg-deb -x`` into
``--patterns``) when that folder does not hold them yet.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import struct
import subprocess
import tempfile
import zlib
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

try:
    from defect_synthesis.generators import (
        BurnGenerator,
        CrackGenerator,
        PittingGenerator,
        ScratchGenerator,
        StainGenerator,
        TextureWarpGenerator,
    )
except ImportError:  # said clearly in main()
    ScratchGenerator = None  # type: ignore[assignment,misc]

DATASET = "Surfaces"
SIZE = 256
MIN_TILE = 128  # a tile's shorter side after enlarging: about two periods per image, not a wallpaper
N_TEMPLATES = 8
N_REFS = 4
PACKAGES = ("gimp-data", "gimp-data-extras")
#: surface -> pattern file under the packages' ``usr/share/gimp/2.0/patterns``
SURFACES = {
    "woven_textile": "greyweave.pat",
    "burlap": "Fabric/burlap.pat",
    "leather": "Animal/leather.pat",
    "wood": "Wood/wood1.pat",
    "stone": "Stone/stone33.pat",
    "metal": "bluemetal.pat",
    "paper": "Paper/crinklepaper.pat",
    "cork": "Wood/corkboard.pat",
    "circuit_board": "circuit.pat",
}
KINDS = ("scratch", "crack", "stain", "pit", "burn", "warp")


def read_pattern(path: Path) -> np.ndarray:
    """A GIMP ``.pat`` file -> (H, W, 3) uint8. Header (big-endian u32): header size, version, width,
    height, bytes per pixel; then ``GPAT`` and the name; then the pixels row by row."""
    raw = path.read_bytes()
    header, _version, w, h, depth = struct.unpack(">5I", raw[:20])
    if raw[20:24] != b"GPAT":
        raise SystemExit(f"{path}: not a GIMP pattern")
    px = np.frombuffer(raw[header : header + w * h * depth], np.uint8).reshape(h, w, depth)
    if depth in (1, 2):
        px = np.repeat(px[..., :1], 3, axis=2)
    return np.ascontiguousarray(px[..., :3])


def ensure_patterns(folder: Path) -> Path:
    """The packages' pattern folder, extracted from the Debian packages when missing."""
    root = folder / "usr/share/gimp/2.0/patterns"
    if all((root / p).exists() for p in SURFACES.values()):
        return root
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for pkg in PACKAGES:
                subprocess.run(["apt-get", "download", pkg], cwd=tmp, check=True, capture_output=True)
            for deb in sorted(Path(tmp).glob("*.deb")):
                subprocess.run(["dpkg-deb", "-x", str(deb), str(folder)], check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            raise SystemExit(f"{folder}: the patterns of {' and '.join(PACKAGES)} could not be taken from Debian's "
                             f"packages ({exc}); extract them there by hand (dpkg-deb -x)") from None
    missing = [p for p in SURFACES.values() if not (root / p).exists()]
    if missing:
        raise SystemExit(f"{root}: no {', '.join(missing)}")
    return root


def surface_canvas(tile: np.ndarray) -> np.ndarray:
    """The tile enlarged (shorter side at least MIN_TILE) and tiled to cover 2 x SIZE."""
    scale = max(1.0, MIN_TILE / min(tile.shape[:2]))
    t = cv2.resize(tile, (round(tile.shape[1] * scale), round(tile.shape[0] * scale)), interpolation=cv2.INTER_CUBIC)
    reps = (int(np.ceil(2 * SIZE / t.shape[0])), int(np.ceil(2 * SIZE / t.shape[1])), 1)
    return np.tile(t, reps)


def shot(canvas: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A 256 px crop at a random offset, with its own gain, offset and sensor noise."""
    y, x = (int(rng.integers(0, canvas.shape[i] - SIZE)) for i in (0, 1))
    crop = canvas[y : y + SIZE, x : x + SIZE].astype(np.float32)
    crop = crop * rng.uniform(0.92, 1.08) + rng.uniform(-8, 8) + rng.normal(0, 2.0, crop.shape)
    return np.clip(crop, 0, 255).astype(np.uint8)


def generators() -> dict[str, object]:
    return {"scratch": ScratchGenerator(), "crack": CrackGenerator(), "stain": StainGenerator(),
            "pit": PittingGenerator(), "burn": BurnGenerator(), "warp": TextureWarpGenerator()}


def _save(root: Path, rel: str, arr: np.ndarray) -> None:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(root / rel, format="PNG")


def _question(bad: bool, rng: np.random.Generator) -> dict:
    yes_first = bool(rng.integers(0, 2))  # answer letters balanced
    options = {"A": "Yes.", "B": "No."} if yes_first else {"A": "No.", "B": "Yes."}
    answer = ("A" if yes_first else "B") if bad else ("B" if yes_first else "A")
    return {"Question": "Is there any anomaly in the query image?", "Answer": answer, "Options": options,
            "type": "Anomaly Detection", "annotation": True}


def build(out: Path, patterns: Path, n_normal: int, n_defective: int) -> dict:
    root_patterns = ensure_patterns(patterns)
    if out.exists():  # only a folder this script built is replaced
        if not (out / "surfaces.json").is_file():
            raise SystemExit(f"{out}: exists and is not a surfaces benchmark; name another --out")
        shutil.rmtree(out)
    data: dict[str, dict] = {}
    gens = generators()
    for name, pat in SURFACES.items():
        seed = zlib.crc32(name.encode())
        rng = np.random.default_rng(seed)
        random.seed(seed)  # defect-synthesis draws from Python's and numpy's global generators
        np.random.seed(seed % 2**32)
        canvas = surface_canvas(read_pattern(root_patterns / pat))
        pool = []
        for i in range(N_TEMPLATES):
            rel = f"{DATASET}/{name}/train/good/{i:03d}.png"
            _save(out, rel, shot(canvas, rng))
            pool.append(rel)
        for i in range(n_normal + n_defective):
            bad = i >= n_normal
            img = shot(canvas, rng)
            entry: dict = {}
            if bad:
                kind = KINDS[(i - n_normal) % len(KINDS)]
                for _ in range(20):  # a defect that left no mark is drawn again
                    res = gens[kind].apply(img.copy())
                    if res.has_defect:
                        break
                else:
                    raise SystemExit(f"{name}: defect-synthesis left no {kind} on 20 tries")
                img, mask = res.image, (res.anomaly_mask > 0).astype(np.uint8) * 255
                rel = f"{DATASET}/{name}/test/{kind}/{i:03d}.png"
                mask_rel = f"{DATASET}/{name}/ground_truth/{kind}/{i:03d}_mask.png"
                _save(out, mask_rel, mask)
                entry["mask_path"] = "/".join(mask_rel.split("/")[2:])
            else:
                rel = f"{DATASET}/{name}/test/good/{i:03d}.png"
            _save(out, rel, img)
            templates = [pool[int(j)] for j in rng.choice(len(pool), N_REFS, replace=False)]
            data[rel] = {"image_path": "/".join(rel.split("/")[2:]), **entry, "similar_templates": templates,
                         "random_templates": templates, "conversation": [_question(bad, rng)]}
    (out / "mmad.json").write_text(json.dumps(data, indent=1))
    summary = {"dataset": DATASET, "surfaces": SURFACES, "packages": list(PACKAGES), "min_tile": MIN_TILE,
               "normal": n_normal, "defective": n_defective, "templates": N_TEMPLATES, "kinds": list(KINDS),
               "licence": "patterns: GPL (gimp-data, gimp-data-extras), evaluation only; defects: defect-synthesis"}
    (out / "surfaces.json").write_text(json.dumps(summary, indent=1))
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path.home() / ".cache/adcopilot/benchmarks/surfaces")
    ap.add_argument("--patterns", type=Path, default=Path.home() / ".cache/adcopilot/data/gimp-patterns")
    ap.add_argument("--normal", type=int, default=15)
    ap.add_argument("--defective", type=int, default=18)
    args = ap.parse_args()
    if args.normal < 1 or args.defective < 1:
        ap.error("--normal and --defective must be at least 1")
    if ScratchGenerator is None:
        raise SystemExit("defect-synthesis is not installed: pip install --no-deps defect-synthesis==0.1.0")
    summary = build(args.out, args.patterns, args.normal, args.defective)
    n = len(summary["surfaces"]) * (args.normal + args.defective)
    print(f"{n} queries on {len(summary['surfaces'])} surfaces: {args.out / 'mmad.json'}")


if __name__ == "__main__":
    main()
