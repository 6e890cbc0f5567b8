"""PaDiM with the tower's stride-4 stage in its embedding: ELPV, all training normals, the whole test split.

anomalib's recipe (model/padim.py) on the stride-8 and stride-16 stages, against the same with the stride-4
stage (24 channels, average- or max-pooled to the stride-8 grid) concatenated: 100 random channels as anomalib
keeps them, or all. The image score is the blurred map's maximum, as anomalib's. Results: benchmarks/RESULTS.md.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/padim_stages.py poly   # or mono
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from adcopilot.data.elpv import split
from adcopilot.imaging import load_image, to_float_array
from adcopilot.metrics import auroc
from adcopilot.model.padim import PadimAccumulator, channel_subset, gaussian_blur
from adcopilot.model.vision import load_vision_tower

S4_BLOCK = 2  # the last block of the stride-4 stage (24 channels)
SIZE = 256
#: variant -> (embedding source, channels kept)
VARIANTS = {
    "stride 8 + 16, 100 of 152 (anomalib)": ("plain", channel_subset(152)),
    "stride 8 + 16, all 152": ("plain", torch.arange(152)),
    "with stride 4 averaged, 100 of 176": ("s4avg", channel_subset(176)),
    "with stride 4 averaged, all 176": ("s4avg", torch.arange(176)),
    "with stride 4 max-pooled, 100 of 176": ("s4max", channel_subset(176)),
}


@torch.inference_mode()
def embeddings(tower, path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """The raw stage outputs of one cell, as PaDiM's ``{"s8", "s16"}`` inputs for each embedding source."""
    x = torch.from_numpy(to_float_array(load_image(path, name=str(path)), SIZE)).permute(2, 0, 1)[None].float()
    h = tower.stem(x)
    out: dict[str, torch.Tensor] = {}
    for i, block in enumerate(tower._blocks[: tower.s16_block + 1]):
        h = block(h)
        if i == S4_BLOCK:
            out["s4"] = h  # (1, 24, S/4, S/4)
        if i == tower.s8_block:
            out["s8"] = h  # (1, 40, S/8, S/8)
    s16 = h  # (1, 112, S/16, S/16)
    return {
        "plain": {"s8": out["s8"], "s16": s16},
        "s4avg": {"s8": torch.cat([F.avg_pool2d(out["s4"], 2), out["s8"]], 1), "s16": s16},
        "s4max": {"s8": torch.cat([F.max_pool2d(out["s4"], 2), out["s8"]], 1), "s16": s16},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kind", choices=["mono", "poly"])
    args = ap.parse_args()
    torch.set_num_threads(1)
    tower = load_vision_tower().eval()
    parts = split(seed=0)
    train = [c for c in parts["train"] if c.kind == args.kind and c.probability == 0.0]
    test = [c for c in parts["test"] if c.kind == args.kind and c.probability in (0.0, 1.0)]
    acc = {name: PadimAccumulator(idx) for name, (_, idx) in VARIANTS.items()}
    t0 = time.perf_counter()
    for cell in tqdm(train, desc=f"fit {args.kind}"):
        emb = embeddings(tower, cell.path)
        for name, (source, _) in VARIANTS.items():
            acc[name].add(emb[source])
    stats = {name: a.finish() for name, a in acc.items()}
    print(f"{args.kind}: fitted on {len(train)} good cells in {time.perf_counter() - t0:.0f} s", flush=True)
    scores: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for cell in tqdm(test, desc=f"test {args.kind}"):
        emb = embeddings(tower, cell.path)
        for name, (source, _) in VARIANTS.items():
            d = stats[name].distance(emb[source])  # (1, 1, h, w)
            up = F.interpolate(d, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
            scores[name].append(float(gaussian_blur(up, 4).max()))
    y = np.array([int(c.probability == 1.0) for c in test])
    for name, s in scores.items():
        print(f"{args.kind} {name:>40}: image AUROC {auroc(np.array(s), y):.4f} ({len(y)} cells, {y.sum()} defective)")


if __name__ == "__main__":
    main()
