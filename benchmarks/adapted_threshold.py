"""Verdicts of models at their own thresholds on ELPV test cells: false alarms and misses, not only AUROC.

For each model and cell type: the first ``--per-side`` normal and defective test cells (seed-0 split), each
inspected 1-shot through ``Copilot.inspect`` against the type's last training normal; the verdict is the
model's own (the threshold it carries for one reference). Run:

    python benchmarks/adapted_threshold.py default ADAPTED_MODEL [--per-side 60]
"""

from __future__ import annotations

import argparse

import numpy as np

from adcopilot import Copilot
from adcopilot.data.elpv import split
from adcopilot.metrics import auroc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--per-side", type=int, default=60)
    args = ap.parse_args()
    parts = split(seed=0)
    for name in args.models:
        cp = Copilot.load(name)
        threshold = cp.detector.threshold_for(1)
        for kind in ("poly", "mono"):
            test = [c for c in parts["test"] if c.kind == kind]
            normals = [c for c in test if c.probability == 0.0][: args.per_side]
            defects = [c for c in test if c.probability == 1.0][: args.per_side]
            ref = [c for c in parts["train"] if c.kind == kind and c.probability == 0.0][-1]
            good = [cp.inspect(str(c.path), [str(ref.path)]).score for c in normals]
            bad = [cp.inspect(str(c.path), [str(ref.path)]).score for c in defects]
            print(f"{name} {kind}: threshold {threshold:.4f}  false alarms {sum(s >= threshold for s in good)} / "
                  f"{len(good)}  misses {sum(s < threshold for s in bad)} / {len(bad)}  image AUROC "
                  f"{auroc(good + bad, [0] * len(good) + [1] * len(bad)):.3f}  good median {np.median(good):.3f}",
                  flush=True)


if __name__ == "__main__":
    main()
