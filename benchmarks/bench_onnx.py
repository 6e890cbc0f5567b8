"""The dense path under onnxruntime and OpenVINO beside PyTorch, in the same process, alternating query by query.

The model is exported once to each runtime (``adcopilot export onnx`` and ``adcopilot export openvino``, or
``--onnx FILE`` / ``--openvino FILE.xml`` to reuse files). For each query (real held-out photos and ELPV cells of the
bundled benchmark, resized to the model's size) three things are timed for every runtime, in an order that turns
round from query to query: the dense path alone (vision tower + Comparison Encoder + dense head, the references
encoded and cached beforehand, by each runtime in its own form), the detector's map (plus up-sampling, smoothing,
pooling and the image score) and ``Copilot.inspect`` end to end (with registration and the image check). One thread
for all (torch, onnxruntime's intra-op pool, OpenVINO's inference threads). The table gives medians (ms) of the
wall-clock and of the CPU time, the ratios PyTorch / runtime, and the largest difference of the maps and scores from
PyTorch's. OpenVINO is measured when it is installed (``pip install 'adcopilot[openvino]'``; ``--no-openvino`` skips it).

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
from adcopilot.model.openvino_detector import ov
from adcopilot.model.openvino_export import export_openvino

BUNDLED = Path.home() / ".cache" / "adcopilot" / "benchmarks" / "bundled"
NAMES = {"pt": "PyTorch", "ox": "onnxruntime", "ov": "OpenVINO"}


def images(n: int) -> tuple[list[Path], list[Path]]:
    """(references, queries): normal ELPV cells of the bundled benchmark, then its test cells."""
    goods = sorted((BUNDLED / "ELPV").glob("*/test/good/*.png"))
    tests = sorted((BUNDLED / "ELPV").glob("*/test/*/*.png"))
    if len(goods) < 5 or not tests:
        raise SystemExit(f"{BUNDLED}: the bundled benchmark is missing; run adcopilot models fetch")
    rng = np.random.default_rng(0)
    return goods[:5], [tests[i] for i in rng.permutation(len(tests))[:n]]


def exported(kind: str, given: Path | None, cp: Copilot) -> Path:
    """The file of runtime ``kind`` ("ox", "ov"): ``given``, else the model exported now."""
    if given is not None:
        return given
    path = Path(tempfile.mkdtemp()) / ("model.onnx" if kind == "ox" else "model.xml")
    t = time.perf_counter()
    (export_onnx if kind == "ox" else export_openvino)(cp.detector, path)
    print(f"exported {path} in {time.perf_counter() - t:.1f} s")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--onnx", type=Path, default=None, help="an existing ONNX export of --model (default: export now)")
    ap.add_argument("--openvino", type=Path, default=None, help="an existing OpenVINO export (.xml) of --model")
    ap.add_argument("--no-openvino", action="store_true", help="measure PyTorch and onnxruntime only")
    ap.add_argument("--n", type=int, default=40, help="queries per number of shots")
    ap.add_argument("--shots", type=int, nargs="+", default=[1])
    args = ap.parse_args()
    torch.set_num_threads(1)
    pt = Copilot.load(args.model)
    kinds = ["ox"] + (["ov"] if ov is not None and not args.no_openvino else [])
    if ov is None and not args.no_openvino:
        print("OpenVINO is not installed (pip install 'adcopilot[openvino]'): measuring onnxruntime only")
    cps = {"pt": pt, **{k: Copilot.load(exported(k, args.onnx if k == "ox" else args.openvino, pt)) for k in kinds}}
    dets = {k: cp.detector for k, cp in cps.items()}
    refs, queries = images(args.n)
    size = pt.detector.image_size
    rows = []
    for k in args.shots:
        ref_arrays = [to_float_array(load_image(r), size) for r in refs[:k]]
        with torch.inference_mode():  # each runtime's encodings of the k references, one per reference
            enc = {kind: [dets[kind].encode_reference(r) for r in ref_arrays] for kind in dets}
        joined = {"pt": ReferenceInputs.concat(enc["pt"]), **{kind: OnnxReference.concat(enc[kind]) for kind in kinds}}

        def dense(kind: str, q: np.ndarray, joined: dict = joined) -> object:
            if kind == "pt":
                with torch.inference_mode():
                    return dets["pt"].model.compare_with(dets["pt"].patch_features(q), joined["pt"], with_tokens=False)
            return dets[kind].run(q, joined[kind])

        first = to_float_array(load_image(queries[0]), size)
        for kind, cp in cps.items():  # warm-up: caches the references and makes their views (PyTorch on first use)
            cp.inspect(queries[0], refs[:k])
            with torch.inference_mode():
                dets[kind].detect(first, enc[kind])
        clock = Clock()
        worst = {kind: [0.0, 0.0] for kind in kinds}  # largest map and score differences from PyTorch
        order = list(cps)
        for i, qp in enumerate(queries):
            q = to_float_array(load_image(qp), size)
            maps = {}
            for kind in order[i % len(order):] + order[: i % len(order)]:  # each runtime first in turn
                clock(f"dense {kind}", dense, kind, q)
                with torch.inference_mode():
                    maps[kind] = clock(f"map {kind}", dets[kind].detect, q, enc[kind])
                clock(f"inspect {kind}", cps[kind].inspect, qp, refs[:k])
            for kind in kinds:
                worst[kind][0] = max(worst[kind][0], float(np.abs(maps["pt"][0] - maps[kind][0]).max()))
                worst[kind][1] = max(worst[kind][1], abs(maps["pt"][1] - maps[kind][1]))
        med, cpu = clock.medians(), clock.medians(cpu=True)
        rows.append((k, med, cpu, worst))
        print(f"{k} shot(s): " + ", ".join(f"{key}={v:.1f}/{cpu[key]:.1f}" for key, v in med.items())
              + "; " + ", ".join(f"{NAMES[kind]} max map / score diff {w[0]:.1e} / {w[1]:.1e}"
                                 for kind, w in worst.items()), flush=True)
    print(f"\n{args.n} queries, one thread, medians in ms (wall clock; CPU time in brackets):\n")
    print("| shots | stage | PyTorch | " + " | ".join(f"{NAMES[kind]} | PyTorch / {NAMES[kind]}" for kind in kinds)
          + " | " + " | ".join(f"{NAMES[kind]}: max map / score difference" for kind in kinds) + " |")
    print("|---:|---|---:|" + "---:|---:|" * len(kinds) + "---:|" * len(kinds))
    for k, med, cpu, worst in rows:
        for stage in ("dense", "map", "inspect"):
            a, ca = med[f"{stage} pt"], cpu[f"{stage} pt"]
            cells = [f"{a:.1f} ({ca:.1f})"]
            for kind in kinds:
                b, cb = med[f"{stage} {kind}"], cpu[f"{stage} {kind}"]
                cells += [f"{b:.1f} ({cb:.1f})", f"{a / b:.2f} ({ca / cb:.2f})"]
            cells += [f"{worst[kind][0]:.1e} / {worst[kind][1]:.1e}" for kind in kinds]
            print(f"| {k} | {stage} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
