"""Where one ``inspect`` spends its time: a stage-by-stage profile on real files, one thread.

Each stage of ``Copilot.inspect`` is timed with ``time.perf_counter`` on the library's own pieces,
in the order ``inspect`` runs them: decoding the query file, registration (ECC + warp), the vision
tower, the nearest-reference-patch distance, the input projection and Comparison Encoder, the dense
head with its up-sampling and smoothing, the product memory (adapted models only), the map's warp
back to the query's pixels, the brightness deviation from the references (the boxes grow along it),
the global image check and the boxes. The stages' map and image check are checked against ``inspect``'s
own (the maps must agree to 1e-5), and ``inspect`` end to end is timed on the same queries, alternating, so the sum
of the stages can be compared with the whole.

Images: ELPV cells from files (300 px PNG, decoded each time): a normal mono cell of the training split
as the cached reference, ``--n`` test-split mono cells as queries. 256 px, one thread.

``--src`` runs the profile once per source tree (``label=path/to/src``; default: this checkout's
``src``), each in its own process, alternating over ``--rounds`` so that all trees see the same load;
the table gives per stage the median over rounds of each process's median, and the ratio of the last
tree to the first. ``label=path@mode`` sets the product memory's search (``exact``, ``approximate``,
``auto``: :mod:`adcopilot.model.nearest`) of a tree that has the choice. To compare with an earlier commit:

    git archive COMMIT src | tar -x -C /tmp/before
    OMP_NUM_THREADS=1 python benchmarks/bench_profile.py --src before=/tmp/before/src after=src --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

STAGES = ("decode", "register", "tower", "distance", "encoder", "head+blur", "memory", "score", "map back", "deviation",
          "check", "boxes")


def profile_child(model: str, n: int, search: str) -> dict:
    """Per-stage and end-to-end medians (ms) of ``n`` inspections with the tree on ``sys.path``."""
    import cv2
    import numpy as np
    import torch

    from adcopilot import Copilot
    from adcopilot.data.elpv import split
    from adcopilot.imaging import load_image, to_float_array
    from adcopilot.model.boxes import boxes_from_map, deviation_map
    from adcopilot.model.inspection import CoreOutput
    from adcopilot.model.nano import ReferenceInputs
    from adcopilot.model.score import pooled_score
    from adcopilot.model.upsample import upsample_centered
    from adcopilot.registration import onto_reference, register, warp

    try:  # a tree whose image check reads the detector's patch distances
        from adcopilot.model.sanity import patch_distance
    except ImportError:  # an earlier tree: the check runs its own tower pass
        patch_distance = None

    torch.set_num_threads(1)
    cp = Copilot.load(model)
    det = cp.detector
    if search != "default":
        det.memory.set_search(search)
    cells = split(seed=0)
    ref_path = next(c.path for c in cells["train"] if c.kind == "mono" and c.probability == 0.0)
    queries = [c.path for c in cells["test"] if c.kind == "mono"][:n]
    size = det.image_size
    ref_arr, ref_inputs = cp._reference(ref_path, "reference")
    times: dict[str, list[float]] = {s: [] for s in (*STAGES, "sum", "inspect")}

    def staged(path: Path) -> tuple[np.ndarray, str | None, float]:
        t = [time.perf_counter()]
        img = load_image(path, name=str(path))
        q = to_float_array(img, size)
        t.append(time.perf_counter())
        reg = register(q, ref_arr)
        q_own = q
        q = onto_reference(q, ref_arr, reg.matrix) if reg.method != "identity" else q  # the border from the reference
        t.append(time.perf_counter())
        with torch.inference_mode():
            qf = det.patch_features(q)  # (1, 152, h, w)
            t.append(time.perf_counter())
            # With the views and self-distance the image score reads (made once with the cached reference).
            refs = det._scored_inputs([ref_inputs]) if hasattr(det, "_scored_inputs") else \
                ReferenceInputs.concat([ref_inputs])
            m = det.model
            b, c, h, w = qf.shape
            q_tokens = qf.flatten(2).transpose(1, 2)
            sim = torch.bmm(q_tokens, refs.tokens.transpose(1, 2))
            distance = (1.0 - sim.max(dim=2).values).clamp_min(0).view(b, 1, h, w)
            t.append(time.perf_counter())
            pos = refs.pos[: h * w]
            cur, _ = m.compare.encode(m.input_proj(q_tokens), refs.prev, pos, refs.pos, prev_queries=refs.queries)
            t.append(time.perf_counter())
            logits = m.head(cur.transpose(1, 2).reshape(b, -1, h, w), distance)
            prob = torch.sigmoid(upsample_centered(logits, size // w))[0, 0].numpy()
            if m.cfg.smooth_sigma > 0:
                prob = cv2.GaussianBlur(prob, (0, 0), m.cfg.smooth_sigma)
            t.append(time.perf_counter())
            if det.memory is not None:
                variant = det.memory.choose(refs.tokens[0][: h * w])
                mem = det.memory.anomaly_map(qf[0].flatten(1).T, refs.tokens[0], (h, w), size)
                wt = det.weight_for(variant)
                prob = (1.0 - wt) * prob + wt * mem
            t.append(time.perf_counter())
            # The detector's own image score (the pooled map with a memory; one reference: the blend).
            score = pooled_score(prob, m.cfg.topk_frac) if det.memory is not None or not hasattr(det, "_score") \
                else det._score(prob, {"distance": distance}, qf, refs)
            t.append(time.perf_counter())
        amap = warp(prob, reg.inverse, border="constant") if reg.method != "identity" else prob
        amap = cv2.resize(amap, img.size, interpolation=cv2.INTER_LINEAR).astype(np.float32)
        t.append(time.perf_counter())
        dev = deviation_map(q, [ref_arr])
        dev = warp(dev, reg.inverse, border="constant") if reg.method != "identity" else dev
        dev = cv2.resize(dev, img.size, interpolation=cv2.INTER_LINEAR)
        t.append(time.perf_counter())
        if patch_distance is not None:
            up = upsample_centered(distance, size // w)[0, 0].numpy()
            core = CoreOutput(amap=prob, score=score, registration=reg, patch_dist=patch_distance(up))
            reason = cp.check(q_own, cp.reference_profiles([ref_path], [ref_arr]), core)
        else:
            reason = cp.check(q_own, [ref_path], [ref_arr])
        t.append(time.perf_counter())
        if score >= cp.threshold:
            boxes_from_map(amap, cp.threshold, cp.box_rules, dev)
        t.append(time.perf_counter())
        for stage, a, b_ in zip(STAGES, t[:-1], t[1:], strict=True):
            times[stage].append(1e3 * (b_ - a))
        times["sum"].append(1e3 * (t[-1] - t[0]))
        return amap, reason, score

    for p in queries[:3]:  # warm-up
        staged(p)
        cp.inspect(p, [ref_path])
    for i, p in enumerate(queries):
        for which in ("staged", "inspect")[:: 1 if i % 2 else -1]:
            if which == "staged":
                amap, reason, score = staged(p)
            else:
                t0 = time.perf_counter()
                r = cp.inspect(p, [ref_path])
                times["inspect"].append(1e3 * (time.perf_counter() - t0))
        if not np.allclose(amap, r.anomaly_map, atol=1e-5):
            raise SystemExit(f"{p}: the staged map differs from inspect's (max {np.abs(amap - r.anomaly_map).max()})")
        if abs(score - r.score) > 1e-5:
            raise SystemExit(f"{p}: the staged score {score} differs from inspect's {r.score}")
        if reason != r.image_check:
            raise SystemExit(f"{p}: the staged image check says {reason!r}, inspect's {r.image_check!r}")
    if det.memory is None:
        times.pop("memory")
    else:
        times.pop("score")  # pooled with the memory's map, inside its stage
    return {k: statistics.median(v) for k, v in times.items()}


def run_child(src: str, model: str, n: int) -> dict:
    src, _, search = src.partition("@")
    env = {**os.environ, "PYTHONPATH": str(Path(src).resolve()), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, __file__, "--child", "--model", model, "--n", str(n),
                          "--search", search or "default"],
                         capture_output=True, text=True, env=env)
    if out.returncode:
        raise SystemExit(f"{src}: the profile failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default", help="model to profile (default, or an adapted folder)")
    ap.add_argument("--n", type=int, default=30, help="queries per process")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--src", nargs="+", default=[f"current={Path(__file__).resolve().parent.parent / 'src'}"],
                    help="label=path of each source tree to profile")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--search", default="default", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(profile_child(args.model, args.n, args.search)))
        return
    trees = [s.split("=", 1) if "=" in s else (s, s) for s in args.src]
    results: dict[str, list[dict]] = {label: [] for label, _ in trees}
    for i in range(args.rounds):
        for label, src in trees:
            results[label].append(run_child(src, args.model, args.n))
            print(f"round {i + 1} {label}: " + ", ".join(f"{k}={v:.2f}" for k, v in results[label][-1].items()),
                  flush=True)
    labels = [label for label, _ in trees]
    rows = [k for k in (*STAGES, "sum", "inspect") if k in results[labels[0]][0]]
    med = {lb: {k: statistics.median(r[k] for r in results[lb]) for k in rows} for lb in labels}
    ratio = len(labels) > 1
    print(f"\nmodel {args.model}, {args.n} queries x {args.rounds} rounds, medians in ms, one thread:\n")
    print("| stage | " + " | ".join(labels) + (f" | {labels[-1]} / {labels[0]} |" if ratio else " |"))
    print("|---|" + "---:|" * (len(labels) + ratio))
    for k in rows:
        cells = " | ".join(f"{med[lb][k]:.2f}" for lb in labels)
        extra = f" | {med[labels[-1]][k] / max(med[labels[0]][k], 1e-9):.2f}" if ratio else ""
        print(f"| {k} | {cells}{extra} |")


if __name__ == "__main__":
    main()
