"""PaDiM (and a nearest-patch memory) on ELPV cells read as taken or photometrically normalised.

Every image (fitted and scored alike) is read as taken, with its grey levels' 1st-99th percentiles stretched to
0-1 (``model/padim.py`` ``stretch_grey``, what ``adapt`` now fits PaDiM on), brought to a median grey of 0.5, or
to a fixed mean and standard deviation. PaDiM is anomalib's recipe (model/padim.py: 100 of the 152 channels,
the blurred map's maximum as the image score).

* ``--split test``: all training normals fit; the whole test split (probability 0 or 1) is scored.
* ``--split val``: the training split only: 80 % of its normals fit (seeded), the other 20 % and every defective
  training cell (probability 1) are scored; a nearest-patch memory (32,768 random patches of the fitted images'
  joint features, its smoothed map's maximum) and the sum of the two scores z-normalised on the good ones too.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/padim_stretch.py --split val --kind poly
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from adcopilot.data.elpv import Cell, split
from adcopilot.imaging import load_image, to_float_array
from adcopilot.metrics import auroc
from adcopilot.model.padim import (
    PadimAccumulator,
    channel_subset,
    gaussian_blur,
    neighbourhood_means,
    stretch_grey,
)
from adcopilot.model.vision import joint_patch_features, load_vision_tower

SIZE = 256
PATCHES = 32768


def median_matched(x: np.ndarray) -> np.ndarray:
    return np.clip(x * (0.5 / max(float(np.median(x.mean(-1))), 1e-3)), 0, 1).astype(np.float32)


def z_matched(x: np.ndarray) -> np.ndarray:
    return np.clip(0.5 + (x - x.mean()) / max(float(x.std()), 1e-3) * 0.18, 0, 1).astype(np.float32)


READINGS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "as taken": lambda x: x, "stretched": stretch_grey, "median-matched": median_matched, "mean-std-matched": z_matched}


def sets(kind: str, which: str) -> tuple[list[Cell], list[tuple[Cell, int]]]:
    """(cells to fit, [(cell to score, label)]) for one cell type."""
    parts = split(seed=0)
    normals = [c for c in parts["train"] if c.kind == kind and c.probability == 0.0]
    if which == "test":
        test = [c for c in parts["test"] if c.kind == kind and c.probability in (0.0, 1.0)]
        return normals, [(c, int(c.probability == 1.0)) for c in test]
    order = np.random.default_rng(0).permutation(len(normals))
    cut = int(0.8 * len(normals))
    bad = [c for c in parts["train"] if c.kind == kind and c.probability == 1.0]
    return [normals[i] for i in order[:cut]], [(normals[i], 0) for i in order[cut:]] + [(c, 1) for c in bad]


def peak(d: torch.Tensor) -> float:
    """The maximum of a (1, 1, h, w) distance grid up-sampled to the image and blurred (anomalib's score)."""
    return float(gaussian_blur(F.interpolate(d, size=(SIZE, SIZE), mode="bilinear", align_corners=False), 4).max())


@torch.inference_mode()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", choices=["test", "val"], default="val")
    ap.add_argument("--kind", choices=["mono", "poly"], default="poly")
    ap.add_argument("--readings", nargs="+", default=list(READINGS), choices=list(READINGS))
    ap.add_argument("--neighbourhood", type=int, default=1, help="each position's features averaged over this "
                    "square of positions first (the lot PaDiM's neighbourhood means; 1: as they are)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    tower = load_vision_tower().eval()
    fit, scored = sets(args.kind, args.split)
    memory = args.split == "val"

    def scales(cell: Cell, read: Callable[[np.ndarray], np.ndarray]) -> dict[str, torch.Tensor]:
        x = read(to_float_array(load_image(cell.path, name=str(cell.path)), SIZE))
        out = tower.patch_features(torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)[None].float())
        return neighbourhood_means(out, args.neighbourhood)

    y = np.array([label for _, label in scored])
    for name in args.readings:
        read = READINGS[name]
        acc, bank = PadimAccumulator(channel_subset(152)), []
        for c in tqdm(fit, desc=f"{name}: fit"):
            s = scales(c, read)
            acc.add(s)
            if memory:
                bank.append(joint_patch_features(s)[0].flatten(1).T)  # (h*w, 152)
        stats = acc.finish()
        if memory:
            pool = torch.cat(bank)
            pool = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(0))[:PATCHES]]
        padim, near = [], []
        for c, _ in tqdm(scored, desc=f"{name}: score"):
            s = scales(c, read)
            padim.append(peak(stats.distance(s)))
            if memory:
                q = joint_patch_features(s)[0].flatten(1).T
                side = s["s8"].shape[-1]
                near.append(peak((1 - (q @ pool.T).max(1).values).clamp_min(0).view(1, 1, side, side)))
        line = f"{args.kind} {args.split} {name:>16} (neighbourhood {args.neighbourhood}): PaDiM {auroc(np.array(padim), y):.4f}"
        if memory:
            p, n = np.array(padim), np.array(near)
            z = (p - p[y == 0].mean()) / p[y == 0].std() + (n - n[y == 0].mean()) / n[y == 0].std()
            line += f"  nearest-patch {auroc(n, y):.4f}  z-sum {auroc(z, y):.4f}"
        print(line + f"  ({(y == 0).sum()} good, {(y == 1).sum()} defective)", flush=True)


if __name__ == "__main__":
    main()
