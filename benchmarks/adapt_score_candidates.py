"""Image scores for the adapted model's memory + PaDiM, measured on ``adapt``'s own validation split only.

``adapt --steps 0`` on ELPV's training normals (the folder bench_peers builds: one sub-folder per cell
type) holds out the same images as ``adapt`` (``validation_split``, seed 0), builds the same validation
memory (nearest patches + PaDiM statistics of the training normals, ``build_memory``) and inspects the
held-out normals and the same synthetic defects against the same drawn references (``validate``'s
seeded draws, replayed), registered as inspection registers. The test split is never read. Beside the
synthetic defects, the training split's labelled defective cells (``--defects``, all of them, and the
20 % ``adapt --defects`` would hold out) are inspected too, each against a drawn training normal.

Per query the raw parts are kept (``--cache``, so candidates can be scored again without the tower):
the comparison model's map, the nearest-patch distance grid (registered frame), PaDiM's distance grid
(the query as taken) and registration's matrix; and per variant the same grids of the memory's own
calibration images. Candidates (each at PaDiM shares 0-1, memory weight 1 and 0.75):

* ``map``: the product's score today: top-1 % pooling of the mixed map of both parts, each calibrated
  ``clip((d - low) / (high - low), 0, 1)`` on the calibration images;
* ``map, unclipped``: the same without the clip at 1 (a defect's strength beyond the 95th percentile
  of normal maxima kept);
* ``score, PaDiM max``: a score-level mix: the nearest-patch part's pooled calibrated map and PaDiM's
  own image score (its map's maximum, query as taken) on its calibration scale (``(max - low) / (high -
  low)``; 1: the 95th percentile of normal maxima), clipped / unclipped;
* ``score, z``: both parts' image scores (pooled nearest-patch map, PaDiM's maximum) z-normalised on the
  calibration images' image scores, then mixed;
* the nearest-patch map's blur (sigma 2, 4, 8) and pooling (top 1 %, 0.1 %);
* ``--padim CHANNELS:REG``: PaDiM fitted again on the same images with other channels and regularisation;
* ``--local``: the nearest-patch part with PatchCore's 3 x 3 local averaging of the features, beside the same
  part without it (both on the query as taken, without the reference's patches).

    OMP_NUM_THREADS=1 nice python benchmarks/adapt_score_candidates.py \\
        --normals ~/.cache/adcopilot/data/peers-elpv-normals --defects ~/.cache/adcopilot/data/peers2-elpv-defects \\
        --cache /tmp/adapt_score_parts.npz --out benchmarks/results/adapt_score_candidates.json
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from adcopilot import Copilot
from adcopilot.data import synth
from adcopilot.data.folders import load_folder_entries
from adcopilot.model.detector import to_batch
from adcopilot.model.memory import PADIM_TOTAL, build_memory
from adcopilot.model.nano import NanoDetector
from adcopilot.model.nearest import exact_max_similarity
from adcopilot.model.padim import SIGMA, PadimAccumulator, channel_subset, gaussian_blur
from adcopilot.model.score import pooled_score
from adcopilot.model.upsample import upsample_centered
from adcopilot.model.vision import joint_patch_features
from adcopilot.registration import register, warp
from adcopilot.train.validation import MIN_REAL_DEFECTS, validation_split

log = logging.getLogger("adapt_score_candidates")
SIZE = 256
SHARES = (0.0, 0.25, 0.5, 0.75, 1.0)


# ---------------------------------------------------------------- collection (tower, memory, registration)
def collect(normals: Path, defects: Path | None, seed: int = 0) -> dict[str, np.ndarray]:
    """Every validation query's raw parts and the calibration images' grids, per variant, as flat arrays."""
    det = Copilot.load("default").detector
    assert isinstance(det, NanoDetector) and det.memory is None
    good, groups, _, _ = load_folder_entries(normals, SIZE)
    bad, bad_groups = (load_folder_entries(defects, SIZE)[:2] if defects is not None else ([], []))
    held_good, held_bad = validation_split(groups, bad_groups, 0.2, seed)
    train = [i for i, h in enumerate(held_good) if not h]

    def scales(image: np.ndarray) -> dict[str, torch.Tensor]:
        return det.fused_tower.patch_features(to_batch([image.astype(np.float32) / 255.0]))

    calls: list[dict[str, torch.Tensor]] = []  # build_memory's tower passes, in order: per variant bank, then calibration

    def recorded(image: np.ndarray) -> dict[str, torch.Tensor]:
        calls.append(s := scales(image))
        return s

    with torch.inference_mode():
        tg = [groups[i] for i in train]
        memory = build_memory([good[i] for i in train], tg, lambda im: joint_patch_features(scales(im)), seed=seed,
                              scales=recorded, padim=dict.fromkeys(tg, 0.0))
    out: dict[str, np.ndarray] = {}
    at = 0
    for name in sorted(set(tg)):
        n = tg.count(name)
        n_cal = min(30, max(1, n // 10))
        v = memory.variants[name]
        assert v.padim is not None
        near, pos = [], []
        with torch.inference_mode():
            for s in calls[at + n - n_cal : at + n]:
                q = joint_patch_features(s)[0].flatten(1).T
                near.append((1.0 - exact_max_similarity(q, v.bank)).clamp_min(0).view(32, 32).numpy())
                pos.append(v.padim.stats.distance(s)[0, 0].numpy())
        for part in ("s8", "s16"):  # the raw outputs, to fit PaDiM again with other settings (--padim)
            out[f"{name}/train_{part}"] = torch.cat([s[part] for s in calls[at : at + n - n_cal]]).numpy()
            out[f"{name}/cal_{part}"] = torch.cat([s[part] for s in calls[at + n - n_cal : at + n]]).numpy()
        at += n
        out[f"{name}/cal_near"], out[f"{name}/cal_pos"] = np.stack(near), np.stack(pos)
        out[f"{name}/memory_cal"] = np.array([v.low, v.high, v.padim.low, v.padim.high])
    calls.clear()  # the tower outputs are not needed any more

    def parts(query: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, ...]:
        q, r = query.astype(np.float32) / 255.0, reference.astype(np.float32) / 255.0
        reg = register(q, r)  # as inspection does
        moved = reg.method != "identity"
        compared = warp(q, reg.matrix) if moved else q
        ref = det.encode_reference(r)
        prob, _, _ = det.maps(compared, [ref])
        qf = det.patch_features(compared)
        name = memory.choose(ref.tokens[0])
        near = memory.nearest_distance(name, qf[0].flatten(1).T, ref.tokens[0]).view(32, 32).numpy()
        stats = memory.variants[name].padim.stats  # type: ignore[union-attr]
        own = scales(query)  # the query as taken
        pos = stats.distance(own)[0, 0].numpy()
        matrix = reg.matrix.astype(np.float32) if moved else np.eye(2, 3, dtype=np.float32)
        return prob.astype(np.float16), near, pos, matrix, own["s8"][0].numpy(), own["s16"][0].numpy()

    # validate()'s draws replayed: one generator over the variants in order, synthetic defects on the goods.
    rng = np.random.default_rng([seed, 2])
    real_rng = np.random.default_rng([seed, 3])
    for name in sorted({g for g, h in zip(groups, held_good, strict=True) if h}):
        goods = [im for im, g, h in zip(good, groups, held_good, strict=True) if h and g == name]
        refs = [im for im, g, h in zip(good, groups, held_good, strict=True) if not h and g == name]
        synthetic = [synth.add_defect(g, rng).image for g in goods]
        real = [im for im, g in zip(bad, bad_groups, strict=True) if g == name]
        real_held = [h for h, g in zip(held_bad, bad_groups, strict=True) if g == name]
        kinds = ["normal"] * len(goods) + ["synthetic"] * len(synthetic) + ["real"] * len(real)
        rows = []
        with torch.inference_mode():
            for j, q in enumerate([*goods, *synthetic, *real]):
                draw = rng if kinds[j] != "real" else real_rng
                rows.append(parts(q, refs[int(draw.integers(len(refs)))]))
                if j % 25 == 0:
                    log.info("%s %d/%d", name, j, len(kinds))
        for key, arr in zip(("prob", "near", "pos", "matrix", "s8", "s16"), zip(*rows, strict=True), strict=True):
            out[f"{name}/{key}"] = np.stack(arr)
        out[f"{name}/kind"] = np.array(kinds)
        out[f"{name}/real_held"] = np.array([False] * (len(goods) * 2) + real_held)
    return out


# ---------------------------------------------------------------- scoring (no tower)
def smooth(grid: np.ndarray, sigma: float) -> np.ndarray:
    """(32, 32) distance grid -> (S, S) map, as the product memory smooths it (at ``sigma``)."""
    up = upsample_centered(torch.from_numpy(np.ascontiguousarray(grid, dtype=np.float32))[None, None], SIZE // 32)
    m = up[0, 0].numpy()
    return cv2.GaussianBlur(m, (0, 0), sigma) if sigma > 0 else m


def anomalib_max(grid: np.ndarray) -> float:
    """anomalib's image score of a PaDiM distance grid: bilinear up-sampling, blur of sigma 4, maximum."""
    d = F.interpolate(torch.from_numpy(grid.astype(np.float32))[None, None], size=(SIZE, SIZE), mode="bilinear",
                      align_corners=False)
    return float(gaussian_blur(d, SIGMA).max())


def calibration(maps: list[np.ndarray]) -> tuple[float, float]:
    """The memory's calibration (low: median of medians, high: 95th percentile of maxima)."""
    low = float(np.median([np.median(m) for m in maps]))
    return low, max(float(np.quantile([m.max() for m in maps], 0.95)), low + 1e-3)


def refit(p: dict[str, np.ndarray], name: str, channels: int, regularisation: float) -> dict[str, np.ndarray]:
    """``p`` with variant ``name``'s PaDiM grids (queries and calibration images) from statistics fitted again on
    the same training images with ``channels`` of the 152 and ``regularisation`` on the covariances' diagonal."""
    acc = PadimAccumulator(channel_subset(PADIM_TOTAL, channels))

    def batches(prefix: str):
        s8, s16 = p[f"{name}/{prefix}s8"], p[f"{name}/{prefix}s16"]
        for i in range(0, len(s8), 32):
            yield {"s8": torch.from_numpy(s8[i : i + 32]), "s16": torch.from_numpy(s16[i : i + 32])}

    for b in batches("train_"):
        acc.add(b)
    stats = acc.finish(regularisation)
    out = dict(p)
    for key, prefix in (("pos", ""), ("cal_pos", "cal_")):
        out[f"{name}/{key}"] = torch.cat([stats.distance(b)[:, 0] for b in batches(prefix)]).numpy()
    out[f"{name}/memory_cal"] = np.array([*p[f"{name}/memory_cal"][:2],
                                          *calibration([smooth(g, 4.0) for g in out[f"{name}/cal_pos"]])])
    return out


def variant_scores(p: dict[str, np.ndarray], name: str, sigmas: tuple[float, ...] = (2.0, 4.0, 8.0)
                   ) -> dict[str, np.ndarray]:
    """Every candidate's image score of every query of one variant (the nearest-patch map blurred at ``sigmas``)."""
    kinds = p[f"{name}/kind"]
    n = len(kinds)
    out: dict[str, list[float]] = {}

    def put(key: str, v: float) -> None:
        out.setdefault(key, []).append(float(v))

    for sigma in sigmas:
        cal_near = [smooth(g, sigma) for g in p[f"{name}/cal_near"]]
        cal_pos = [smooth(g, 4.0) for g in p[f"{name}/cal_pos"]]
        lo, hi = calibration(cal_near)
        plo, phi = calibration(cal_pos)
        if sigma == 4.0:  # the product's own calibration, recomputed: a check of the replay
            assert np.allclose([lo, hi, plo, phi], p[f"{name}/memory_cal"], rtol=1e-4, atol=1e-5), (
                [lo, hi, plo, phi], p[f"{name}/memory_cal"])
        cal_pool = np.array([pooled_score((m - lo) / (hi - lo), 0.01) for m in cal_near])
        cal_max = np.array([anomalib_max(g) for g in p[f"{name}/cal_pos"]])
        z = (cal_pool.mean(), cal_pool.std() + 1e-9, cal_max.mean(), cal_max.std() + 1e-9)
        for i in range(n):
            prob = p[f"{name}/prob"][i].astype(np.float32)
            near = (smooth(p[f"{name}/near"][i], sigma) - lo) / (hi - lo)  # calibrated, unclipped
            pos_own = smooth(p[f"{name}/pos"][i], 4.0)
            pos = (warp(pos_own, p[f"{name}/matrix"][i]) - plo) / (phi - plo)  # into the registered frame
            pmax = (anomalib_max(p[f"{name}/pos"][i]) - plo) / (phi - plo)
            near_c, pos_c = np.clip(near, 0, 1), np.clip(pos, 0, 1)
            near_pool = {f: pooled_score(near.astype(np.float32), f) for f in (0.01, 0.001)}
            for s in SHARES:
                for w in (1.0, 0.75):
                    tag = f"sigma {sigma:g}, share {s}, weight {w}"
                    mixed = (1 - w) * prob + w * ((1 - s) * near_c + s * pos_c)
                    put(f"map, {tag}", pooled_score(mixed.astype(np.float32), 0.01))
                    mixed = (1 - w) * prob + w * ((1 - s) * np.maximum(near, 0) + s * np.maximum(pos, 0))
                    put(f"map, unclipped, {tag}", pooled_score(mixed.astype(np.float32), 0.01))
                    near_part = pooled_score(((1 - w) * prob + w * (1 - s) * near_c).astype(np.float32), 0.01)
                    put(f"score, PaDiM max clipped, {tag}", near_part + w * s * min(max(pmax, 0.0), 1.0))
                    put(f"score, PaDiM max, {tag}", near_part + w * s * pmax)
                    if w == 1.0:
                        put(f"score, PaDiM max, near unclipped, {tag}", (1 - s) * near_pool[0.01] + s * pmax)
                        put(f"score, PaDiM max, near top 0.1 %, {tag}", (1 - s) * near_pool[0.001] + s * pmax)
                        put(f"score, z, {tag}", (1 - s) * (near_pool[0.01] - z[0]) / z[1] + s * (pmax * (phi - plo)
                                                                                                   + plo - z[2]) / z[3])
    return {k: np.asarray(v) for k, v in out.items()}


def aurocs(p: dict[str, np.ndarray], name: str, sigmas: tuple[float, ...] = (2.0, 4.0, 8.0)
           ) -> dict[str, dict[str, float]]:
    """AUROC of every candidate against each kind of anomalous query."""
    kinds, held = p[f"{name}/kind"], p[f"{name}/real_held"]
    scores = variant_scores(p, name, sigmas)
    sets: dict[str, np.ndarray] = {"synthetic": kinds != "real", "real": kinds != "synthetic",
                                   "real, adapt's 20 %": (kinds == "normal") | held}
    out: dict[str, dict[str, float]] = {}
    for label, keep in sets.items():
        y = (kinds[keep] != "normal").astype(int)
        if y.sum() < MIN_REAL_DEFECTS:
            continue
        out[label] = {k: round(float(roc_auc_score(y, v[keep])), 4) for k, v in scores.items()}
    out["queries"] = {k: int((kinds == k).sum()) for k in ("normal", "synthetic", "real")} | {
        "real held": int(held.sum())}
    return out


def local_features(s8: np.ndarray, s16: np.ndarray, local: bool) -> torch.Tensor:
    """(B, 1024, 152) unit-norm patch features of raw stage outputs; ``local``: each stage averaged over its
    3 x 3 neighbourhood first (PatchCore's locally aware patch features)."""
    sc = {"s8": torch.from_numpy(s8), "s16": torch.from_numpy(s16)}
    if local:
        sc = {k: F.avg_pool2d(v, 3, stride=1, padding=1) for k, v in sc.items()}
    return joint_patch_features(sc).flatten(2).transpose(1, 2)


def local_candidates(p: dict[str, np.ndarray], name: str, patches: int = 32768) -> dict[str, dict[str, float]]:
    """The nearest-patch part with and without PatchCore's 3 x 3 local averaging, both measured the same way:
    the query as taken against a seeded random bank of the training images' patches (no reference patches),
    calibrated on the calibration images; alone and beside PaDiM's peak (share 0.5, weight 1)."""
    kinds, held = p[f"{name}/kind"], p[f"{name}/real_held"]
    plo, phi = p[f"{name}/memory_cal"][2:]
    peaks = np.array([(anomalib_max(g) - plo) / (phi - plo) for g in p[f"{name}/pos"]])
    scores: dict[str, np.ndarray] = {}
    for local in (False, True):
        train = local_features(p[f"{name}/train_s8"], p[f"{name}/train_s16"], local).reshape(-1, 152)
        bank = train[torch.from_numpy(np.random.default_rng(0).choice(len(train), patches, replace=False))]
        bank = bank.half().float()

        def maps(prefix: str, local: bool, bank: torch.Tensor) -> list[np.ndarray]:
            f = local_features(p[f"{name}/{prefix}s8"], p[f"{name}/{prefix}s16"], local)
            return [smooth((1.0 - exact_max_similarity(q, bank)).clamp_min(0).view(32, 32).numpy(), 4.0) for q in f]

        lo, hi = calibration(maps("cal_", local, bank))
        near = np.array([pooled_score(np.clip((m - lo) / (hi - lo), 0, 1).astype(np.float32), 0.01)
                         for m in maps("", local, bank)])
        tag = "3x3 local" if local else "plain"
        scores[f"nearest alone, {tag}"] = near
        scores[f"nearest + peak 0.5, {tag}"] = 0.5 * near + 0.5 * peaks
    out: dict[str, dict[str, float]] = {}
    for label, keep in {"synthetic": kinds != "real", "real": kinds != "synthetic",
                        "real, adapt's 20 %": (kinds == "normal") | held}.items():
        y = (kinds[keep] != "normal").astype(int)
        out[label] = {k: round(float(roc_auc_score(y, v[keep])), 4) for k, v in scores.items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--normals", type=Path, required=True, help="good images, one sub-folder per variant")
    ap.add_argument("--defects", type=Path, default=None, help="labelled defective images, same sub-folders")
    ap.add_argument("--cache", type=Path, required=True, help="the raw parts (.npz): made once, then read")
    ap.add_argument("--padim", nargs="*", default=[], metavar="CHANNELS:REG",
                    help="also PaDiM fitted again with these channels and regularisation, e.g. 152:0.01")
    ap.add_argument("--local", action="store_true", help="only the nearest-patch part with and without PatchCore's "
                    "3 x 3 local averaging (the query as taken, no reference patches)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--show", nargs="*", default=None, help="print only candidates containing these words")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if not args.cache.exists():
        np.savez_compressed(args.cache, **collect(args.normals, args.defects))
    p = dict(np.load(args.cache))
    names = sorted({k.split("/")[0] for k in p})
    if args.local:
        results = {name: local_candidates(p, name) for name in names}
        print(json.dumps(results, indent=1))
        if args.out:
            args.out.write_text(json.dumps(results, indent=1))
        return
    results = {name: aurocs(p, name) for name in names}
    for setting in args.padim:  # PaDiM fitted again: "CHANNELS:REGULARISATION"
        channels, reg = setting.split(":")
        for name in names:
            results[f"{name}, PaDiM {channels} channels, regularisation {reg}"] = aurocs(
                refit(p, name, int(channels), float(reg)), name, (4.0,))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    show: Callable[[str], bool] = lambda k: not args.show or all(w in k for w in args.show)  # noqa: E731
    for name, r in results.items():
        sets = [s for s in r if s != "queries"]
        print(f"\n{name} {r['queries']}\n| candidate | " + " | ".join(sets) + " |")
        for k in r[sets[0]]:
            if show(k):
                print(f"| {k} | " + " | ".join(f"{r[s][k]:.3f}" for s in sets) + " |")


if __name__ == "__main__":
    main()
