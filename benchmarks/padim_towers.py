"""PaDiM and a nearest-patch memory with all training normals on EfficientNet-Lite0 against Lite2 features.

Is the adapted model's remaining gap to anomalib's PaDiM on ELPV poly cells a matter of the frozen tower?
For each tower, PaDiM (this project's reproduction of anomalib's, ``model/padim.py``: 100 random channels of
the stride-8 and stride-16 stage outputs) is fitted on every training normal of a cell type and scores the
test cells by its own image score; a nearest-patch memory (a random ``--memory`` share, 10 % by default, of
the normals' joint unit-norm patch features, at stride 8 or pooled to ``--stride 16``; the mean of each test
image's 3 largest nearest-patch distances) is scored beside it, and
the two robust z-scores added. Image AUROC of probability 1 against 0 on the whole seed-0 test split and on
``bench_peers.py``'s 150-cell subset. Run (Lite2 needs ``pip install -e '.[lite2]'``):

    python benchmarks/padim_towers.py --split test
    python benchmarks/padim_towers.py --split val      # the training split's last fifth of each type as queries,
                                                       # fitted on the rest (no subset column there)
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from adcopilot.data.elpv import split
from adcopilot.eval.detection import auroc
from adcopilot.imaging import load_image, to_float_array
from adcopilot.model.backbone import load_backbone
from adcopilot.model.detector import to_batch
from adcopilot.model.padim import PadimAccumulator, channel_subset
from adcopilot.model.vision import FusedPatchTower, joint_patch_features

SIZE = 256
BATCH = 32
TOWERS = ("efficientnet-lite0", "efficientnet-lite2")  # --towers: any backbone name (e.g. efficientnet-lite1)


def features(tower: FusedPatchTower, paths: list, desc: str) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Raw stage outputs (half precision) and joint unit-norm patch features (N, P, C) of the images."""
    scales: dict[str, list[torch.Tensor]] = {"s8": [], "s16": []}
    joint = []
    with torch.inference_mode():
        for s in tqdm(range(0, len(paths), BATCH), desc=desc):
            x = to_batch([to_float_array(load_image(p), SIZE) for p in paths[s : s + BATCH]])
            f = tower.patch_features(x)
            for k, v in f.items():
                scales[k].append(v.half())
            joint.append(joint_patch_features(f).flatten(2).transpose(1, 2).contiguous())
    return {k: torch.cat(v) for k, v in scales.items()}, torch.cat(joint)


def pooled(joint: torch.Tensor) -> torch.Tensor:
    """(N, P, C) unit-norm features on a square grid -> (N, P / 4, C): each 2 x 2 block's renormalised mean."""
    n, p, c = joint.shape
    side = int(round(p**0.5))
    grid = F.avg_pool2d(joint.transpose(1, 2).reshape(n, c, side, side).float(), 2)  # (N, C, side/2, side/2)
    return F.normalize(grid, dim=1).flatten(2).transpose(1, 2).contiguous()


def robust_z(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    med = np.median(ref)
    return (x - med) / (1.4826 * np.median(np.abs(ref - med)) + 1e-12)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", default="test", choices=("test", "val", "val-all"),
                    help="val-all: val's held-out normals against every defective training cell (none is fitted)")
    ap.add_argument("--kinds", nargs="+", default=["poly", "mono"])
    ap.add_argument("--memory", type=float, nargs="+", default=[0.1], help="shares of the normals' patches in the memory")
    ap.add_argument("--stride", type=int, default=8, choices=(8, 16),
                    help="16: the joint features average-pooled 2 x 2 (and renormalised) for the memory and its queries")
    ap.add_argument("--towers", nargs="+", default=list(TOWERS), help="backbone names, each measured in turn")
    args = ap.parse_args()
    torch.set_num_threads(1)
    parts = split(seed=0)
    for kind in args.kinds:
        normals = [c.path for c in parts["train"] if c.kind == kind and c.probability == 0.0]
        if args.split.startswith("val"):
            train = [c for c in parts["train"] if c.kind == kind]
            cut = len(train) * 4 // 5
            normals = [c.path for c in train[:cut] if c.probability == 0.0]
            items = [c for c in train[cut:] if c.probability in (0.0, 1.0)]
            if args.split == "val-all":
                items = [c for c in train[cut:] if c.probability == 0.0] + [c for c in train if c.probability == 1.0]
        else:
            items = [c for c in parts["test"] if c.kind == kind and c.probability in (0.0, 1.0)]
        labels = np.array([int(c.probability == 1.0) for c in items])
        sub = np.sort(np.random.default_rng(0).permutation(len(items))[:150])
        print(f"ELPV {kind} {args.split}: {len(normals)} normals, {len(items)} queries", flush=True)
        for name in args.towers:
            tower = FusedPatchTower.from_tower(load_backbone(name))
            nraw, njoint = features(tower, normals, f"{name} normals")
            qraw, qjoint = features(tower, [c.path for c in items], f"{name} queries")
            acc = PadimAccumulator(channel_subset(nraw["s8"].shape[1] + nraw["s16"].shape[1]))
            for s in range(0, len(normals), BATCH):
                acc.add({k: v[s : s + BATCH].float() for k, v in nraw.items()})
            stats = acc.finish()
            pad = torch.cat([stats.anomalib_map({k: v[s : s + BATCH].float() for k, v in qraw.items()}, SIZE)[0]
                             for s in range(0, len(items), BATCH)]).numpy()
            if args.stride == 16:
                njoint, qjoint = pooled(njoint), pooled(qjoint)
            for share in args.memory:
                bank = njoint.reshape(-1, njoint.shape[-1])
                keep = torch.randperm(len(bank), generator=torch.Generator().manual_seed(0))[: int(len(bank) * share)]
                bank = bank[keep]
                near = []
                with torch.inference_mode():
                    for q in tqdm(qjoint, desc=f"{name} nearest"):
                        d = 1 - (q @ bank.T).amax(1)  # (P,)
                        near.append(d.topk(3).values.mean().item())
                near = np.array(near)
                fused = robust_z(pad, pad) + robust_z(near, near)
                rows = (("PaDiM", pad), ("nearest patch", near), ("both, z added", fused))
                for label, sc in rows if share == args.memory[0] else rows[1:]:
                    full = auroc(sc, labels.tolist())
                    part = f"  150-cell subset {auroc(sc[sub], labels[sub].tolist()):.4f}" if args.split == "test" else ""
                    tag = "" if label == "PaDiM" else f" (stride {args.stride}, memory {share:.0%})"
                    print(f"  {name} {label + tag:40s} all {full:.4f}{part}", flush=True)

if __name__ == "__main__":
    main()
