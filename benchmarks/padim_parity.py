"""This project's PaDiM (model/padim.py) against anomalib's own ``PadimModel``, on the same features.

Both are fitted on the same ELPV training normals (this project's EfficientNet-Lite0 stride-8 and
stride-16 stage outputs, handed to anomalib as ``bench_peers.py`` does) with anomalib's channel
subset, and run on test cells; the largest differences of the statistics, the maps and the image
scores are printed. Needs the peers environment (anomalib installed):

    OMP_NUM_THREADS=1 /work/wt/peers/.venv/bin/python benchmarks/padim_parity.py [--normals 40] [--tests 8]
"""

from __future__ import annotations

import argparse
import json

import torch
from bench_peers import SIZE, FeatureStore, elpv_tasks
from peer_models import AVAILABLE, LAYERS, index_batch, padim_model

from adcopilot.model.padim import PadimAccumulator


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kind", default="poly", choices=["mono", "poly"])
    ap.add_argument("--normals", type=int, default=40)
    ap.add_argument("--tests", type=int, default=8)
    args = ap.parse_args()
    if not AVAILABLE:
        raise SystemExit("anomalib is not installed in this environment: run this with the peers environment")
    task = elpv_tasks(args.tests, [args.kind])[0]
    normals, tests = task.normals[: args.normals], task.tests
    store = FeatureStore(normals + tests)
    model = padim_model(store.module, store.rows(normals), SIZE, seed=0)  # anomalib's, fitted
    model.eval()
    with torch.inference_mode():
        out = model(index_batch(store.rows(tests), SIZE))

    acc = PadimAccumulator(model.idx)
    feats = store.module
    for r in store.rows(normals):
        acc.add({"s8": feats.s8[r : r + 1], "s16": feats.s16[r : r + 1]})
    ours = acc.finish()
    rows = store.rows(tests)
    scores, maps = ours.anomalib_map({"s8": feats.s8[rows], "s16": feats.s16[rows]}, SIZE)

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).abs().max() / b.abs().max())

    report = {
        "layers": list(LAYERS), "normals": len(normals), "tests": len(tests), "channels": int(model.idx.numel()),
        "mean max rel diff": rel(ours.mean, model.gaussian.mean),
        "inverse covariance max rel diff": rel(ours.inv_covariance, model.gaussian.inv_covariance),
        "map max abs diff": float((maps - out.anomaly_map).abs().max()),
        "map max rel diff": rel(maps, out.anomaly_map),
        "score max abs diff": float((scores - out.pred_score.reshape(-1)).abs().max()),
        "scores (anomalib)": [round(float(s), 4) for s in out.pred_score.reshape(-1)],
        "scores (ours)": [round(float(s), 4) for s in scores],
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
