"""Rigid or similarity registration on the bundled held-out photos: the rule's validation and its test.

``register`` fits a rigid ECC transform, then a similarity (an affine fit projected onto it); the similarity is
kept when it correlates better than the rigid fit by ``SIMILARITY_MARGIN`` (0: any gain; infinity: the rigid
fit alone). The query is registered onto the first reference; with three references or more the others are
brought into the first one's frame too ("common", the model's ``COMMON_FRAME_FROM``), or left as taken
("first"; from two references on with "common2"). Settings ``MARGIN/RULE``, and "none" (no registration at all):

* ``--part val``: each photo class's ``train/good`` images only (labels unused: all normal), the default
  model's score, lower when normal images look alike after alignment: with ``--shots 1`` every ordered pair,
  with more each image against ``--shots`` of the others (``--draws`` draws);
* ``--part test``: image AUROC on each class's test images, ``--shots`` references drawn as ``bench_peers.py``
  draws them (5 draws), the shipped scores (``--score shipped``) or the pooled map at every shot count
  (``--score map``: a copy of the checkpoint with ``multi_image_score`` "map" and ``multi_threshold`` 0.5).

    python benchmarks/registration_rule.py --part val --shots 1      # and --shots 5
    python benchmarks/registration_rule.py --part test --shots 5 --score map --settings 0/first 0/common
    python benchmarks/registration_rule.py --part test --shots 5 --data elpv-mono --settings none 0/common
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import adcopilot.model.inspection as inspection
import adcopilot.registration as registration
from adcopilot import Copilot, assets
from adcopilot.data.elpv import split
from adcopilot.eval.detection import auroc

PHOTOS = assets.home() / "benchmarks" / "bundled" / "HeldOut-Photos"
SURFACES = assets.home() / "benchmarks" / "surfaces" / "Surfaces"  # benchmarks/surfaces.py builds it
NANO = Path(__file__).resolve().parents[1] / "src" / "adcopilot" / "checkpoints" / "nano"


def draw(normals: list[Path], k: int, seed: int) -> list[Path]:
    """``bench_peers.py``'s draw: k normal images, the same for every setting."""
    rng = np.random.default_rng(1000 * seed + k)
    return [normals[i] for i in sorted(rng.choice(len(normals), k, replace=False))]


@dataclass
class Group:
    """A product's good images (references, validation) and its labelled test images."""

    name: str
    normals: list[Path]
    tests: list[Path]
    labels: list[int]


def groups(data: str, per_type: int) -> list[Group]:
    """The photo classes or the outside surfaces (``benchmarks/surfaces.py``), or one ELPV cell type (``elpv-mono``/``elpv-poly``: the seed-0 split's training
    normals and ``bench_peers.py``'s seeded subset of ``per_type`` test cells of probability 0 or 1)."""
    if data in ("photos", "surfaces"):
        root = PHOTOS if data == "photos" else SURFACES
        if not root.is_dir():
            raise SystemExit(f"{root}: missing (photos: adcopilot eval detect --benchmark bundled builds them; "
                             "surfaces: python benchmarks/surfaces.py)")
        out = []
        for cls in sorted(p for p in root.iterdir() if p.is_dir()):
            tests = sorted((cls / "test").glob("*/*.png"))
            out.append(Group(cls.name, sorted((cls / "train" / "good").glob("*.png")), tests,
                             [int(p.parent.name != "good") for p in tests]))
        return out
    kind = data.removeprefix("elpv-")
    parts = split(seed=0)
    items = [c for c in parts["test"] if c.kind == kind and c.probability in (0.0, 1.0)]
    keep = sorted(np.random.default_rng(0).permutation(len(items))[:per_type])
    items = [items[i] for i in keep]
    normals = [c.path for c in parts["train"] if c.kind == kind and c.probability == 0.0]
    return [Group(data, normals, [c.path for c in items], [int(c.probability == 1.0) for c in items])]


def map_model(folder: Path) -> Path:
    """A copy of the shipped checkpoint that pools the map at every number of references."""
    shutil.copytree(NANO, folder, dirs_exist_ok=True)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(multi_image_score="map", multi_threshold=0.5)
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("val", "test"), default="val")
    ap.add_argument("--settings", nargs="+", default=["none", "0/first", "0/common"],
                    help="MARGIN/RULE: the similarity margin, and the references after the first in its frame "
                    "from three (common, the default; common2: from two) or as taken (first); 'none': no registration")
    ap.add_argument("--shots", type=int, default=1)
    ap.add_argument("--score", choices=("shipped", "map"), default="shipped")
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--data", choices=("photos", "surfaces", "elpv-mono", "elpv-poly"), default="photos")
    ap.add_argument("--per-type", type=int, default=150, help="ELPV test cells (bench_peers.py's subset)")
    ap.add_argument("--val-normals", type=int, default=40, help="good images each validation set uses at most")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        model = str(map_model(Path(tmp) / "nano-map")) if args.score == "map" else None
        on, off = Copilot.load(model), Copilot.load(model, registration=False)
        classes = groups(args.data, args.per_type)
        for setting in args.settings:
            cp = off if setting == "none" else on
            margin, _, rule = setting.partition("/")
            if setting != "none":
                registration.SIMILARITY_MARGIN = float(margin)
                inspection.COMMON_FRAME_FROM = {"": 3, "common": 3, "common2": 2, "first": 10**9}[rule]
            per: dict[str, float] = {}
            pooled: list[float] = []
            for cls in tqdm(classes, desc=setting, leave=False):
                normals = cls.normals[: args.val_normals] if args.part == "val" else cls.normals
                if args.part == "val" and args.shots == 1:
                    s = [cp.analyze(a, [b]).score for a, b in itertools.permutations(normals, 2)]
                    pooled += s
                    per[cls.name] = float(np.mean(s))
                elif args.part == "val":  # each normal against `shots` of the others, `draws` draws
                    s = [cp.analyze(a, draw([b for b in normals if b != a], args.shots, seed)).score
                         for a in normals for seed in range(args.draws)]
                    pooled += s
                    per[cls.name] = float(np.mean(s))
                else:
                    per[cls.name] = float(np.mean([
                        auroc([cp.analyze(q, draw(normals, args.shots, seed)).score for q in cls.tests], cls.labels)
                        for seed in range(args.draws)]))
            cells = "  ".join(f"{k} {v:.4f}" for k, v in per.items())
            if args.part == "val":
                s = np.asarray(pooled)
                print(f"{setting:12s} normal pairs: mean score {s.mean():.4f}, p90 {np.quantile(s, 0.9):.4f}, "
                      f"above 0.5 {np.mean(s > 0.5):.3f}  |  {cells}", flush=True)
            else:
                print(f"{setting:12s} {args.shots}-shot {args.score}: AUROC {np.mean(list(per.values())):.4f}  |  {cells}",
                      flush=True)


if __name__ == "__main__":
    main()
