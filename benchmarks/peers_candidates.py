"""Candidates for the adapted model's product memory, measured on a validation split of ELPV's training cells.

The test split is never read. Per cell type, the training split's normal cells are split (seed 0)
into a memory part (80 %) and held-out normals; the validation queries are those held-out normals
and a seeded sample of the training split's defective cells (label 1), which a memory-only adapted
model never sees. Each query is inspected 1-shot against a normal of the memory part (seeded),
registered as ``inspect`` does, with the default model's comparison and a product memory built
from the memory part exactly as ``adapt --steps 0`` builds it.

Candidates (fused map = 0.25 comparison + 0.75 memory side, score = the model's top-1 % pooling):

* ``memory``: the product memory's nearest-patch map (what ``adapt`` builds, at its default size);
* ``position``: a PaDiM-like Gaussian per position (mean and covariance of the memory part's
  features at each of the 32 x 32 positions, in ``--dims`` random orthonormal directions of the
  152 channels), its Mahalanobis map calibrated like the memory's;
* ``memory+position``: the mean of the two calibrated maps;
* ``--candidates memory``: other memories of the same patches, calibrated on the same held-out
  normals (10 % of the memory part): a random 8,192 (the earlier default), a random 32,768, and (``--coreset``)
  a greedy k-center coreset of 8,192 (PatchCore's selection, on a 32-direction random projection),
  (``--all-patches``) every patch of the memory part, searched exactly,
  each at memory weights 0.75, 0.9 and 1;
* ``--candidates padim``: anomalib's PaDiM exactly (:mod:`adcopilot.model.padim`: raw stride-8 and
  stride-16 features, 100 seeded random channels, a Gaussian per position) fitted on the memory part,
  its own image score (the map's maximum) on the query as it is and on the registered query; its
  distance map calibrated like the memory's, alone and as the mean with the memory's map, with the
  comparison at weight 0 and 0.25. Each with the training split's defective cells as the anomalies
  (``real``) and with synthetic defects on the held-out normals (``synthetic``, what ``adapt``
  validates on when it is given no defective images), and the count of queries registration moved.

    OMP_NUM_THREADS=1 nice python benchmarks/peers_candidates.py [--queries 60] [--candidates position memory]
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import cv2
import numpy as np
import torch

from adcopilot import Copilot
from adcopilot.data import synth
from adcopilot.data.elpv import split
from adcopilot.eval.detection import auroc
from adcopilot.imaging import load_image, to_float_array
from adcopilot.model.detector import to_batch
from adcopilot.model.memory import SMOOTH_SIGMA, ProductMemory, VariantMemory, build_memory
from adcopilot.model.nano import NanoDetector
from adcopilot.model.nearest import exact_max_similarity
from adcopilot.model.padim import PadimAccumulator, PadimStats, channel_subset
from adcopilot.model.score import pooled_score
from adcopilot.model.upsample import upsample_centered
from adcopilot.registration import register, warp

log = logging.getLogger("peers_candidates")
SIZE = 256


class PositionGaussian:
    """Per-position mean and inverse covariance of unit-norm patch features in ``dims`` directions."""

    def __init__(self, feats: torch.Tensor, dims: int, seed: int = 0, eps: float = 0.01) -> None:
        # feats: (n, C, h, w) of normal images
        n, c, h, w = feats.shape
        g = torch.Generator().manual_seed(seed)
        self.proj = torch.linalg.qr(torch.randn(c, dims, generator=g))[0]  # (C, d), orthonormal columns
        z = torch.einsum("nchw,cd->hwnd", feats, self.proj).reshape(h * w, n, dims)  # (P, n, d)
        self.mean = z.mean(dim=1)  # (P, d)
        zc = z - self.mean[:, None]
        cov = zc.transpose(1, 2) @ zc / max(n - 1, 1)  # (P, d, d)
        # Regularise on the features' own scale: unit-norm patches have a small spread per direction.
        scale = cov.diagonal(dim1=1, dim2=2).mean(dim=1).clamp_min(1e-8)  # (P,)
        cov = cov + eps * scale[:, None, None] * torch.eye(dims)
        self.inv = torch.linalg.inv(cov)  # (P, d, d)
        self.grid = (h, w)

    def distance_map(self, feats: torch.Tensor) -> np.ndarray:
        """(1, C, h, w) -> smoothed (S, S) Mahalanobis distance map."""
        z = torch.einsum("chw,cd->hwd", feats[0], self.proj).reshape(-1, self.proj.shape[1]) - self.mean  # (P, d)
        d = torch.einsum("pd,pde,pe->p", z, self.inv, z).clamp_min(0).sqrt().view(1, 1, *self.grid)
        amap = upsample_centered(d, SIZE // self.grid[0])[0, 0].numpy()
        return cv2.GaussianBlur(amap, (0, 0), SMOOTH_SIGMA)


def greedy_coreset(bank: torch.Tensor, size: int, dims: int = 32, seed: int = 0) -> torch.Tensor:
    """Indices of a k-center greedy coreset of ``bank`` (N, C), on a random projection to ``dims``."""
    g = torch.Generator().manual_seed(seed)
    z = bank @ torch.randn(bank.shape[1], dims, generator=g) / dims**0.5  # (N, dims)
    chosen = [int(torch.randint(len(z), (1,), generator=g))]
    dist = ((z - z[chosen[0]]) ** 2).sum(dim=1)  # (N,) squared distance to the nearest chosen
    for _ in range(size - 1):
        i = int(dist.argmax())
        chosen.append(i)
        dist = torch.minimum(dist, ((z - z[i]) ** 2).sum(dim=1))
    return torch.tensor(chosen)


def nn_map(tokens: torch.Tensor, bank: torch.Tensor, grid: tuple[int, int]) -> np.ndarray:
    """Smoothed (S, S) nearest-patch cosine distance map, as the product memory computes it."""
    d = (1.0 - exact_max_similarity(tokens, bank)).clamp_min(0).view(1, 1, *grid)
    return cv2.GaussianBlur(upsample_centered(d, SIZE // grid[0])[0, 0].numpy(), (0, 0), SMOOTH_SIGMA)


def memories(feats: torch.Tensor, n_cal: int, kind: str, coreset: bool, every: bool = False) -> dict[str, ProductMemory]:
    """Candidate memories of the patches of ``feats[n_cal:]`` (n, C, h, w), calibrated on ``feats[:n_cal]``."""
    grid = (feats.shape[2], feats.shape[3])
    tokens = feats.flatten(2).transpose(1, 2)  # (n, h*w, C)
    full = tokens[n_cal:].reshape(-1, feats.shape[1])  # (N, C)
    rng = np.random.default_rng(0)
    banks = {
        "random 8192": full[torch.from_numpy(rng.choice(len(full), 8192, replace=False))],
        "random 32768": full[torch.from_numpy(rng.choice(len(full), 32768, replace=False))],
    }
    if coreset:  # 8,192 passes over all patches: an hour on a loaded core
        banks["coreset 8192"] = full[greedy_coreset(full, 8192)]
    if every:
        banks[f"all {len(full)}"] = full
    out = {}
    for name, bank in banks.items():
        bank = bank.half().float()
        low, high = calibrate([nn_map(tokens[i], bank, grid) for i in range(n_cal)])
        out[name] = ProductMemory({kind: VariantMemory(bank, low, high, len(feats) - n_cal)})
        if name.startswith("all"):  # an inverted index of every patch would take long to build
            out[name].set_search("exact")
    return out


def padim_map(stats: PadimStats, scales: dict[str, torch.Tensor]) -> np.ndarray:
    """Smoothed (S, S) PaDiM distance map, up-sampled and blurred as the product memory's map."""
    d = stats.distance(scales)  # (1, 1, h, w)
    return cv2.GaussianBlur(upsample_centered(d, SIZE // stats.grid[0])[0, 0].numpy(), (0, 0), SMOOTH_SIGMA)


def padim_candidates(det: NanoDetector, kind: str, images: list[np.ndarray], n_cal: int, held: list[Path],
                     bad: list[Path], rng: np.random.Generator) -> dict:
    """The ``padim`` candidates of one cell type (see the module's docstring)."""
    def scales(im: np.ndarray) -> dict[str, torch.Tensor]:
        return det.fused_tower.patch_features(to_batch([im]))

    acc = PadimAccumulator(channel_subset(152))
    with torch.inference_mode():
        for im in images[n_cal:]:
            acc.add(scales(im))
        stats = acc.finish()
        low, high = calibrate([padim_map(stats, scales(im)) for im in images[:n_cal]])
    synthetic = [synth.add_defect((255 * to_float_array(load_image(p), SIZE)).round().astype(np.uint8), rng).image
                 for p in held]
    queries = [to_float_array(load_image(p), SIZE) for p in held + bad] + [s.astype(np.float32) / 255 for s in synthetic]
    source = ["normal"] * len(held) + ["real"] * len(bad) + ["synthetic"] * len(synthetic)
    scores: dict[str, list[float]] = {}
    moved = 0
    pool = det.model.cfg.topk_frac
    for j, q in enumerate(queries):
        ref = images[int(rng.integers(len(images)))]
        reg = register(q, ref)
        moved += reg.method != "identity"
        qr = warp(q, reg.matrix) if reg.method != "identity" else q
        with torch.inference_mode():
            prob, mem, _ = det.maps(qr, [det.encode_reference(ref)])
            raw, raw_r = scales(q), scales(qr)
            pos = np.clip((padim_map(stats, raw_r) - low) / (high - low), 0.0, 1.0)
            mix = 0.5 * (mem + pos)
            cands = {
                "padim, anomalib's score (max), query as is": float(stats.anomalib_map(raw, SIZE)[0][0]),
                "padim, anomalib's score (max), registered query": float(stats.anomalib_map(raw_r, SIZE)[0][0]),
                "comparison only": pooled_score(prob, pool),
                "memory alone": pooled_score(mem, pool),
                "padim calibrated alone": pooled_score(pos.astype(np.float32), pool),
                "padim calibrated alone, query as is": pooled_score(np.clip(
                    (padim_map(stats, raw) - low) / (high - low), 0, 1).astype(np.float32), pool),
                "mean of memory and padim": pooled_score(mix.astype(np.float32), pool),
                "memory, comparison 0.25": pooled_score((0.25 * prob + 0.75 * mem).astype(np.float32), pool),
                "mean of memory and padim, comparison 0.25": pooled_score(
                    (0.25 * prob + 0.75 * mix).astype(np.float32), pool),
            }
        for name, v in cands.items():
            scores.setdefault(name, []).append(v)
        if j % 20 == 0:
            log.info("%s %d/%d", kind, j, len(queries))
    out: dict = {}
    for anomalies in ("real", "synthetic"):
        keep = [i for i, s in enumerate(source) if s in ("normal", anomalies)]
        labels = [int(source[i] == anomalies) for i in keep]
        out[anomalies] = {name: round(float(auroc([v[i] for i in keep], labels)), 4) for name, v in scores.items()}
    out["queries"] = {"normal": len(held), "real": len(bad), "synthetic": len(synthetic), "registration moved": moved,
                      "memory_images": len(images), "padim_images": stats.images}
    return out


def calibrate(maps: list[np.ndarray]) -> tuple[float, float]:
    """The memory's calibration: median of the median, 95th percentile of the maximum."""
    low = float(np.median([np.median(m) for m in maps]))
    return low, max(float(np.quantile([m.max() for m in maps], 0.95)), low + 1e-3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=60, help="held-out normals and defectives per type, each")
    ap.add_argument("--dims", nargs="+", type=int, default=[32, 64])
    ap.add_argument("--kinds", nargs="+", default=["mono", "poly"], choices=["mono", "poly"])
    ap.add_argument("--coreset", action="store_true", help="with --candidates memory: also a greedy coreset")
    ap.add_argument("--all-patches", action="store_true", help="with --candidates memory: also every patch (exact)")
    ap.add_argument("--candidates", nargs="+", default=["position"], choices=["position", "memory", "padim"])
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    det = Copilot.load("default").detector
    assert isinstance(det, NanoDetector)
    train = split(seed=0)["train"]
    results: dict = {}
    for kind in args.kinds:
        rng = np.random.default_rng(0)
        normals = [c.path for c in train if c.kind == kind and c.probability == 0.0]
        bad = [c.path for c in train if c.kind == kind and c.probability == 1.0]
        order = rng.permutation(len(normals))
        n_val = max(args.queries, len(normals) // 5)
        held = [normals[i] for i in order[:n_val]][: args.queries]
        mem_paths = [normals[i] for i in sorted(order[n_val:])]
        bad = [bad[i] for i in sorted(rng.choice(len(bad), min(args.queries, len(bad)), replace=False))]
        images = [to_float_array(load_image(p), SIZE) for p in mem_paths]
        memory = build_memory(images, [kind] * len(images), det.patch_features, seed=0)
        det.memory = memory
        n_cal = max(1, len(images) // 10)  # calibration images held out of the statistics
        if args.candidates == ["padim"]:
            results[kind] = padim_candidates(det, kind, images, n_cal, held, bad, rng)
            log.info("%s: %s", kind, results[kind])
            continue
        feats = torch.cat([det.patch_features(im) for im in images])  # (n, 152, h, w)
        gauss = {d: PositionGaussian(feats[n_cal:], d) for d in args.dims} if "position" in args.candidates else {}
        mems = memories(feats, n_cal, kind, args.coreset, args.all_patches) if "memory" in args.candidates else {}
        cal = {d: calibrate([g.distance_map(feats[i : i + 1]) for i in range(n_cal)]) for d, g in gauss.items()}
        del feats
        queries, labels = held + bad, [0] * len(held) + [1] * len(bad)
        scores: dict[str, list[float]] = {}
        for j, q_path in enumerate(queries):
            ref = images[int(rng.integers(len(images)))]
            q = to_float_array(load_image(q_path), SIZE)
            reg = register(q, ref)
            q = warp(q, reg.matrix) if reg.method != "identity" else q
            prob, mem, _ = det.maps(q, [det.encode_reference(ref)])
            qf = det.patch_features(q)
            candidates = {"comparison only": prob, "memory": mem}
            for d, g in gauss.items():
                low, high = cal[d]
                pos = np.clip((g.distance_map(qf) - low) / (high - low), 0.0, 1.0)
                candidates[f"position d={d}"] = pos
                candidates[f"memory+position d={d}"] = 0.5 * (mem + pos)
            for name, side in candidates.items():
                fused = side if name == "comparison only" else 0.25 * prob + 0.75 * side
                scores.setdefault(name, []).append(pooled_score(fused.astype(np.float32), det.model.cfg.topk_frac))
            tokens = qf[0].flatten(1).T  # (h*w, C)
            ref_tokens = det.encode_reference(ref).tokens[0] if mems else None
            for name, m in mems.items():
                side = m.anomaly_map(tokens, ref_tokens, qf.shape[2:], SIZE)
                for w in (0.75, 0.9, 1.0):
                    fused = (1 - w) * prob + w * side
                    scores.setdefault(f"{name}, weight {w}", []).append(
                        pooled_score(fused.astype(np.float32), det.model.cfg.topk_frac))
            if j % 20 == 0:
                log.info("%s %d/%d", kind, j, len(queries))
        results[kind] = {name: round(float(auroc(s, labels)), 4) for name, s in scores.items()}
        results[kind]["queries"] = {"normal": len(held), "defective": len(bad), "memory_images": len(mem_paths)}
        log.info("%s: %s", kind, results[kind])
    print(json.dumps(results, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
