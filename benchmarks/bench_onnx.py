"""The dense path under onnxruntime beside PyTorch, in the same process, alternating query by query.

The model is exported once (``adcopilot export onnx``, or ``--onnx FILE`` to reuse a file). For each
query (real held-out photos and ELPV cells of the bundled benchmark, resized to the model's size) three
things are timed for both runtimes, in alternating order: the dense path alone (vision tower +
Comparison Encoder + dense head, the references encoded and cached beforehand, by each runtime
in its own form), the detector's map
(plus up-sampling, smoothing and pooling) and ``Copilot.inspect`` end to end (with registration).
One thread for both (torch and onnxruntime's intra-op pool). The table gives medians (ms) of the
wall-clock and of the CPU time, the ratios PyTorch / onnxruntime, and the largest difference of the maps.

    OMP_NUM_THREADS=1 python benchmarks/bench_onnx.py --n 40 --shots 1 5
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from clock import Clock

from adcopilot import Copilot
from adcopilot.imaging import load_image, to_float_array
from adcopilot.model.nano import ReferenceInputs
from adcopilot.model.onnx_detector import OnnxReference
from adcopilot.model.onnx_export import export_onnx

BUNDLED = Path.home() / ".cache" / "adcopilot" / "benchmarks" / "bundled"


def images(n: int) -> tuple[list[Path], list[Path]]:
    """(references, queries): normal ELPV cells of the bundled benchmark, then its test cells."""
    goods = sorted((BUNDLED / "ELPV").glob("*/test/good/*.png"))
    tests = sorted((BUNDLED / "ELPV").glob("*/test/*/*.png"))
    if len(goods) < 5 or not tests:
        raise SystemExit(f"{BUNDLED}: the bundled benchmark is missing; run adcopilot models fetch")
    rng = np.random.default_rng(0)
    return goods[:5], [tests[i] for i in rng.permutation(len(tests))[:n]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--onnx", type=Path, default=None, help="an existing export of --model (default: export now)")
    ap.add_argument("--n", type=int, default=40, help="queries per number of shots")
    ap.add_argument("--shots", type=int, nargs="+", default=[1])
    args = ap.parse_args()
    torch.set_num_threads(1)
    pt = Copilot.load(args.model)
    path = args.onnx
    if path is None:
        path = Path(tempfile.mkdtemp()) / "model.onnx"
        t = time.perf_counter()
        export_onnx(pt.detector, path)
        print(f"exported {path} in {time.perf_counter() - t:.1f} s")
    ox = Copilot.load(path)
    det, odet = pt.detector, ox.detector
    refs, queries = images(args.n)
    size = det.image_size
    rows = []
    for k in args.shots:
        ref_arrays = [to_float_array(load_image(r), size) for r in refs[:k]]
        with torch.inference_mode():
            enc = ReferenceInputs.concat([det.encode_reference(r) for r in ref_arrays])
        oref = OnnxReference.concat([odet.encode_reference(r) for r in ref_arrays])

        def dense_pt(q: np.ndarray, enc: ReferenceInputs = enc) -> dict:
            return det.model.compare_with(det.patch_features(q), enc, with_tokens=False)

        for cp in (pt, ox):  # warm-up, caches the references
            cp.inspect(queries[0], refs[:k])
        clock = Clock()
        worst = 0.0
        for i, qp in enumerate(queries):
            q = to_float_array(load_image(qp), size)
            for rt in ("pt", "ox")[:: 1 if i % 2 else -1]:
                if rt == "pt":
                    with torch.inference_mode():
                        clock("dense pt", dense_pt, q)
                    pm, _ = clock("map pt", det.detect, q, [enc])
                    clock("inspect pt", pt.inspect, qp, refs[:k])
                else:
                    clock("dense ox", odet.run, q, oref)
                    om, _ = clock("map ox", odet.detect, q, [oref])
                    clock("inspect ox", ox.inspect, qp, refs[:k])
            worst = max(worst, float(np.abs(pm - om).max()))
        med, cpu = clock.medians(), clock.medians(cpu=True)
        rows.append((k, med, cpu, worst))
        print(f"{k} shot(s): " + ", ".join(f"{key}={v:.1f}/{cpu[key]:.1f}" for key, v in med.items())
              + f", max map diff {worst:.1e}", flush=True)
    print(f"\n{args.n} queries, one thread, medians in ms (wall clock; CPU time):\n")
    print("| shots | stage | PyTorch | onnxruntime | PyTorch / onnxruntime | CPU: PyTorch | onnxruntime | ratio |"
          " max abs map difference |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for k, med, cpu, worst in rows:
        for stage in ("dense", "map", "inspect"):
            a, b, ca, cb = med[f"{stage} pt"], med[f"{stage} ox"], cpu[f"{stage} pt"], cpu[f"{stage} ox"]
            print(f"| {k} | {stage} | {a:.1f} | {b:.1f} | {a / b:.2f} | {ca:.1f} | {cb:.1f} | {ca / cb:.2f} | {worst:.1e} |")


if __name__ == "__main__":
    main()
