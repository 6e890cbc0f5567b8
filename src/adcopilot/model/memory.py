"""Product memory: the normal patches of a product's good images, kept beside an adapted model.

A comparison with one or five references only knows the normal variation those references show.
A product memory (the PatchCore idea, Roth et al. 2022) keeps patch features of *many* good images
of the product, so at inspection a query patch counts as normal if it resembles a patch of any of
them: the crystal grain of a polycrystalline cell, or the play of a part's position, is then
covered by the memory instead of being flagged. ``adcopilot adapt`` builds it from the good images
it is given (``memory.safetensors`` in the adapted checkpoint folder).

* Features: the detector's own unit-norm patch features (stride 8, 152 channels) at its image size.
* One bank per *variant* (sub-folder of the good images). At inspection the variant whose bank
  lies nearest to the first reference's patches is used, and the references' own patches join it.
* Size: a seeded random subset of the patches (``patches`` per variant, :data:`DEFAULT_PATCHES` =
  32,768 by default, stored as float16: 10 MB per variant). On ELPV's validation cells (training split
  only) 32,768 random patches beat 8,192 on both cell types; with FAISS installed a bank this large is
  searched approximately, so it costs about what 8,192 cost exactly (benchmarks/RESULTS.md). Greedy
  coreset selection would cover the space better for its size, but took too long on 300,000 patches.
* Calibration: images held out of the bank (10 %, at most 30 per variant) give the distance scale:
  ``low`` is the median patch distance of a normal image and ``high`` the 95th percentile of normal
  images' largest (smoothed) distance. A distance map becomes ``clip((d - low) / (high - low), 0, 1)``,
  comparable with the comparison model's probability map, with which the detector fuses it.
* PaDiM (optional, per variant): for aligned products a Gaussian per position of the bank images' raw
  features (:mod:`adcopilot.model.padim`), its Mahalanobis map calibrated the same way on the same
  held-out images. The memory's map is then ``(1 - share) * nearest-patch map + share * PaDiM map``
  (``share`` 0: the nearest-patch map alone, 1: PaDiM alone); ``adapt`` chooses the share per variant on
  its validation images. The image score takes PaDiM's own (its map's maximum, calibrated, not clipped) by
  the same share beside the pooled nearest-patch map (:class:`PadimPart`). The detector hands the query's
  raw stage outputs (``scales``) for it; ``adapt`` fits PaDiM on grey-level-stretched images
  (:func:`adcopilot.model.padim.stretch_grey`), and the detector then stretches the query alike; both read
  each position's features averaged over its 3 x 3 neighbours (``PadimPart.neighbourhood``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from safetensors.torch import load_file, save_file

from adcopilot.errors import CheckpointError
from adcopilot.model.nearest import PatchIndex, exact_max_similarity
from adcopilot.model.padim import (
    PadimAccumulator,
    PadimStats,
    channel_subset,
    check_neighbourhood,
    neighbourhood_means,
    stretch_grey,
)
from adcopilot.model.upsample import upsample_centered
from adcopilot.model.vision import joint_patch_features
from adcopilot.registration import warp

log = logging.getLogger(__name__)

MEMORY_FILE = "memory.safetensors"
SMOOTH_SIGMA = 4.0  # pixels at the detector's image size, as the training-free baseline
DEFAULT_PATCHES = 32768  # per variant
PADIM_TOTAL = 152  # the raw stage outputs' channels (40 + 112), of which PaDiM keeps a random subset


Scales = dict[str, torch.Tensor]  # the tower's raw stage outputs: {"s8": (B, 40, h, w), "s16": (B, 112, h/2, w/2)}


PADIM_SCORES = ("map", "peak")  # how a PaDiM part enters the image score (see PadimPart)


@dataclass
class PadimPart:
    """A variant's PaDiM statistics, their calibration and their share in the memory's map and score.

    ``score`` "peak" (what ``build_memory`` makes): the image score takes PaDiM's own image score, the
    maximum of its map on its calibration scale (``(max - low) / (high - low)``, not clipped), by its share
    beside the pooled nearest-patch map; "map" (memories written before): PaDiM's clipped map is mixed
    into the memory's map and pooled with it. The map shown is the mixed map either way.
    """

    stats: PadimStats
    low: float
    high: float
    share: float  # in [0, 1]
    score: str = "peak"
    # Whether the statistics were fitted on grey-level-stretched images (model/padim.py ``stretch_grey``), so
    # the query is stretched the same way before its tower pass for PaDiM (memories written before: False).
    stretch: bool = False
    # Each position's features averaged over this square of neighbours before PaDiM reads them, fitting and scoring
    # alike (model/padim.py ``neighbourhood_means``; memories written before: 1, each position alone).
    neighbourhood: int = 1

    def peak(self, padim_map: np.ndarray) -> float:
        """PaDiM's own image score: the maximum of its (S, S) uncalibrated map, on its calibration scale."""
        return (float(padim_map.max()) - self.low) / max(self.high - self.low, 1e-6)


@dataclass
class MemoryMaps:
    """The memory's parts for one query, before they are mixed."""

    near: np.ndarray  # (S, S) calibrated nearest-patch map
    padim: np.ndarray | None  # (S, S) calibrated PaDiM map in the query tokens' frame (None: no PaDiM part)
    peak: float | None  # PaDiM's own image score: its map's maximum in the query's own frame, calibrated
    variant: str

    def mixed(self, share: float) -> np.ndarray:
        """(S, S) map: ``(1 - share) * near + share * padim`` (the nearest-patch map alone without PaDiM)."""
        if self.padim is None or share == 0:
            return self.near
        return ((1.0 - share) * self.near + share * self.padim).astype(np.float32)

    def scored(self, share: float, score: str) -> tuple[np.ndarray, float]:
        """The memory's side of the image score: (the map pooled with the comparison's, the value added
        after pooling); the fused score is ``pool((1 - w) * comparison + w * map) + w * added``. With a
        "peak" PaDiM part: the nearest-patch map by ``1 - share`` and PaDiM's peak by ``share``."""
        if score == "peak" and self.padim is not None and share > 0 and self.peak is not None:
            return ((1.0 - share) * self.near).astype(np.float32), share * self.peak
        return self.mixed(share), 0.0


@dataclass
class VariantMemory:
    bank: torch.Tensor  # (M, C) unit-norm patch features
    low: float
    high: float
    images: int  # good images behind the bank
    padim: PadimPart | None = None
    # The calibration images' image scores where the memory alone scores, each against a bank without it
    # (build_memory with ``pool``; not stored): good images' scores for a threshold on the memory's scale.
    normal_scores: list[float] = field(default_factory=list)


@dataclass
class ProductMemory:
    """Per-variant banks of normal patch features and their distance calibration."""

    variants: dict[str, VariantMemory]

    def __post_init__(self) -> None:
        # Stored as float16; computed in float32 (converted once, not per query).
        for v in self.variants.values():
            v.bank = v.bank.float()
        self._chosen: tuple[int, tuple[int, ...], float, str] | None = None
        self.set_search("auto")

    def set_search(self, mode: str) -> None:
        """How the banks are searched: "auto" (approximate for large banks when FAISS is installed),
        "exact" or "approximate" (see :mod:`adcopilot.model.nearest`)."""
        self._index = {name: PatchIndex(v.bank, mode) for name, v in self.variants.items()}

    @property
    def needs_scales(self) -> bool:
        """Whether a variant's map uses PaDiM, which needs the query's raw stage outputs."""
        return any(v.padim is not None and v.padim.share > 0 for v in self.variants.values())

    @property
    def padim_stretch(self) -> bool:
        """Whether PaDiM reads the query with its grey levels stretched (:func:`stretch_grey`): a memory is
        built one way for all its variants."""
        return any(v.padim is not None and v.padim.share > 0 and v.padim.stretch for v in self.variants.values())

    # ------------------------------------------------------------------ inspection
    def choose(self, reference_tokens: torch.Tensor) -> str:
        """The variant whose bank explains ``reference_tokens`` (N, C) best (smallest mean distance).

        Every 8th reference patch decides (an eighth of the cost, the same choice on ELPV's two
        variants); the answer is kept for the last reference seen, which a lot's queries share.
        """
        if len(self.variants) == 1:
            return next(iter(self.variants))
        # Address, shape and a fingerprint: a freed reference's address may be reused by another.
        key = (reference_tokens.data_ptr(), tuple(reference_tokens.shape), float(reference_tokens[::97].sum()))
        if self._chosen is not None and self._chosen[:3] == key:
            return self._chosen[3]
        sample = reference_tokens[::8]
        best, best_d = "", float("inf")
        for name in self.variants:
            d = float((1 - self._index[name].max_similarity(sample)).mean())
            if d < best_d:
                best, best_d = name, d
        self._chosen = (*key, best)
        return best

    def anomaly_map(
        self,
        query_tokens: torch.Tensor,
        reference_tokens: torch.Tensor,
        grid: tuple[int, int],
        image_size: int,
        reference_distance: torch.Tensor | None = None,
        scales: Scales | None = None,
        padim_warp: np.ndarray | None = None,
    ) -> np.ndarray:
        """Calibrated (S, S) map in [0, 1]: nearest distance of each query patch to the variant's
        bank together with the references' patches, mixed with the variant's PaDiM map by its share.
        Arguments as :meth:`maps`."""
        m = self.maps(query_tokens, reference_tokens, grid, image_size, reference_distance, scales, padim_warp)
        part = self.variants[m.variant].padim
        return m.mixed(0.0 if part is None else part.share)

    def fuse(self, comparison: np.ndarray, m: MemoryMaps, weight: float,
             pool: Callable[[np.ndarray], float]) -> tuple[np.ndarray, float]:
        """The fused (S, S) map ``(1 - weight) * comparison + weight * memory map`` and its image score
        (``pool`` of the fused map, or with a "peak" PaDiM part, see :meth:`MemoryMaps.scored`)."""
        part = self.variants[m.variant].padim
        share, score = (0.0, "map") if part is None else (part.share, part.score)
        mixed = m.mixed(share)
        fused = ((1.0 - weight) * comparison + weight * mixed).astype(np.float32)
        side, added = m.scored(share, score)
        if side is mixed:  # the image score is the fused map's own
            return fused, pool(fused)
        return fused, pool(((1.0 - weight) * comparison + weight * side).astype(np.float32)) + weight * added

    def maps(
        self,
        query_tokens: torch.Tensor,
        reference_tokens: torch.Tensor,
        grid: tuple[int, int],
        image_size: int,
        reference_distance: torch.Tensor | None = None,
        scales: Scales | None = None,
        padim_warp: np.ndarray | None = None,
    ) -> MemoryMaps:
        """The memory's parts for a query: query_tokens (N, C), reference_tokens (k*N, C);
        ``reference_distance`` (N,): the query patches' distances to the nearest reference patch, when the
        caller has them (the comparison model computes them), else computed here; ``scales``: the query's raw
        stage outputs (needed when :attr:`needs_scales`), in the frame the good images were taken in, and
        ``padim_warp`` the 2x3 matrix from that frame into the query tokens' (registration's; None: the same
        frame). Without ``scales`` the PaDiM part is left out (an error where its share is above 0)."""
        name = self.choose(reference_tokens[: grid[0] * grid[1]])
        v = self.variants[name]
        d = self.nearest_distance(name, query_tokens, reference_tokens, reference_distance).view(1, 1, *grid)
        near = _calibrated(_smoothed(d, image_size), v.low, v.high)
        if v.padim is None or scales is None:
            if v.padim is not None and v.padim.share > 0:
                raise ValueError(f"variant {name!r} mixes in PaDiM: the query's raw stage outputs are needed")
            return MemoryMaps(near, None, None, name)
        read = neighbourhood_means(scales, v.padim.neighbourhood)
        pos = _smoothed(v.padim.stats.distance(read), image_size)  # (S, S) in the good images' frame
        # PaDiM's own image score: the maximum where its statistics hold, on its calibration scale.
        peak = v.padim.peak(pos)
        if padim_warp is not None:
            pos = warp(pos, padim_warp)  # into the query tokens' frame, as registration moved the query
        return MemoryMaps(near, _calibrated(pos, v.padim.low, v.padim.high), peak, name)

    def nearest_distance(
        self, name: str, query_tokens: torch.Tensor, reference_tokens: torch.Tensor,
        reference_distance: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(N,) cosine distance of each query patch (N, C) to its nearest patch in variant ``name``'s bank
        or among the references' patches (k*N, C) (``reference_distance``: the latter, when known)."""
        # The bank and the references' patches searched apart (no (M + k*N, C) copy per query).
        if reference_distance is None:
            reference_distance = (1.0 - (query_tokens @ reference_tokens.T).max(dim=1).values).clamp_min(0)
        bank_distance = (1.0 - self._index[name].max_similarity(query_tokens)).clamp_min(0)  # (N,)
        return torch.minimum(bank_distance, reference_distance.reshape(-1))

    # ------------------------------------------------------------------ persistence
    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        tensors = {f"bank.{i}": v.bank.to(torch.float16).contiguous() for i, v in enumerate(self.variants.values())}
        for i, v in enumerate(self.variants.values()):
            if v.padim is not None:  # float32: the inverse covariances of raw features need its precision
                tensors.update({f"padim.idx.{i}": v.padim.stats.idx.contiguous(),
                                f"padim.mean.{i}": v.padim.stats.mean.contiguous(),
                                f"padim.inv_covariance.{i}": v.padim.stats.inv_covariance.contiguous()})
        meta = {
            "format": "pt",
            "variants": json.dumps([
                {"name": n, "low": v.low, "high": v.high, "images": v.images, "patches": int(v.bank.shape[0])}
                | ({} if v.padim is None else {"padim": {
                    "low": v.padim.low, "high": v.padim.high, "share": v.padim.share, "grid": list(v.padim.stats.grid),
                    "images": v.padim.stats.images, "score": v.padim.score, "stretch": v.padim.stretch,
                    "neighbourhood": v.padim.neighbourhood}})
                for n, v in self.variants.items()
            ]),
        }
        path = folder / MEMORY_FILE
        save_file(tensors, str(path), metadata=meta)
        return path

    @classmethod
    def load(cls, folder: str | Path) -> ProductMemory | None:
        """The memory of a checkpoint folder, or None when it has none."""
        path = Path(folder) / MEMORY_FILE
        if not path.exists():
            return None
        try:
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                meta = json.loads((f.metadata() or {})["variants"])
            tensors = load_file(str(path))
            variants = {
                m["name"]: VariantMemory(tensors[f"bank.{i}"], float(m["low"]), float(m["high"]), int(m["images"]),
                                         _load_padim(m.get("padim"), tensors, i))
                for i, m in enumerate(meta)
            }
        except Exception as exc:  # a damaged file: say which and why, not a traceback
            raise CheckpointError(f"{path}: not a readable product memory ({exc})") from None
        return cls(variants)

    def describe(self) -> dict[str, dict[str, float | int]]:
        return {n: {"images": v.images, "patches": int(v.bank.shape[0]), "low": round(v.low, 4),
                    "high": round(v.high, 4)}
                | ({} if v.padim is None else {"padim_share": v.padim.share, "padim_score": v.padim.score,
                                               "padim_stretch": v.padim.stretch,
                                               "padim_neighbourhood": v.padim.neighbourhood})
                for n, v in self.variants.items()}


def _load_padim(meta: dict | None, tensors: dict[str, torch.Tensor], i: int) -> PadimPart | None:
    """A variant's PaDiM part from the memory file (KeyError, ValueError: a damaged file)."""
    if meta is None:
        return None
    share = float(meta["share"])
    if not 0.0 <= share <= 1.0 or not np.isfinite([meta["low"], meta["high"]]).all():
        raise ValueError(f"PaDiM share {share} or calibration out of range")
    score = meta.get("score", "map")  # memories written before the peak score mixed PaDiM's map
    if score not in PADIM_SCORES:
        raise ValueError(f"PaDiM score {score!r} is not one of {', '.join(PADIM_SCORES)}")
    stretch = meta.get("stretch", False)  # memories written before read images as they are
    if not isinstance(stretch, bool):
        raise ValueError(f"PaDiM stretch {stretch!r} is not true or false")
    width = check_neighbourhood(meta.get("neighbourhood", 1))  # memories written before read each position alone
    stats = PadimStats(tensors[f"padim.idx.{i}"], tensors[f"padim.mean.{i}"], tensors[f"padim.inv_covariance.{i}"],
                       tuple(meta["grid"]), int(meta["images"]))
    return PadimPart(stats, float(meta["low"]), float(meta["high"]), share, score, stretch, width)


def _smoothed(d: torch.Tensor, size: int) -> np.ndarray:
    """A (1, 1, h, w) distance grid -> (S, S) map, up-sampled centre-correct and blurred."""
    return cv2.GaussianBlur(upsample_centered(d, size // d.shape[-1])[0, 0].numpy(), (0, 0), SMOOTH_SIGMA)


def _calibrated(amap: np.ndarray, low: float, high: float) -> np.ndarray:
    return np.clip((amap - low) / max(high - low, 1e-6), 0.0, 1.0).astype(np.float32)


def _calibration(maps: list[np.ndarray]) -> tuple[float, float]:
    """(low, high): the median of normal maps' medians, the 95th percentile of their maxima."""
    low = float(np.median([np.median(m) for m in maps]))
    return low, max(float(np.quantile([m.max() for m in maps], 0.95)), low + 1e-3)


#: Good images per variant whose maps calibrate its memory, each held out of the bank it is measured against.
CALIBRATION_IMAGES = 30


def calibration_folds(n: int) -> list[list[int]]:
    """Positions (of a variant's n shuffled good images) held out together to calibrate: folds of a tenth of
    the images (one at least) until ``CALIBRATION_IMAGES`` or all images are covered. One image held out
    of a dozen would set the scale alone (its maximum the "95th percentile"), and every good part
    brighter than that one would be called anomalous; each fold is measured against the others instead."""
    size = min(CALIBRATION_IMAGES, max(1, n // 10))
    wanted = min(n, CALIBRATION_IMAGES)
    return [list(range(start, min(start + size, wanted))) for start in range(0, wanted, size)]


def _bank(tokens: torch.Tensor, patches: int, rng: np.random.Generator) -> torch.Tensor:
    """(M, C) patches -> at most ``patches`` of them, drawn without replacement, as stored (float16)."""
    if tokens.shape[0] > patches:
        tokens = tokens[torch.from_numpy(rng.choice(tokens.shape[0], patches, replace=False))]
    return tokens.to(torch.float16).float()  # what is stored is what calibrates


def _normal_scores(near_maps: list[np.ndarray], padim_maps: list[np.ndarray], low: float, high: float,
                   part: PadimPart | None, pool: Callable[[np.ndarray], float]) -> list[float]:
    """The memory-alone image score of each calibration image (as :meth:`MemoryMaps.scored` with its "peak")."""
    if part is None or part.share == 0 or len(padim_maps) != len(near_maps):
        return [pool(_calibrated(m, low, high)) for m in near_maps]
    return [pool((1.0 - part.share) * _calibrated(m, low, high)) + part.share * part.peak(pm)
            for m, pm in zip(near_maps, padim_maps, strict=True)]


def _refit(raw: dict[int, Scales], images: Sequence[int], seed: int) -> PadimStats:
    """PaDiM statistics of these images' raw stage outputs."""
    fit = PadimAccumulator(channel_subset(PADIM_TOTAL, seed=seed))
    for i in images:
        fit.add(raw[i])
    return fit.finish()


def build_memory(
    images: Sequence[np.ndarray],
    groups: Sequence[str],
    features: Callable[[np.ndarray], torch.Tensor],
    *,
    patches: int = DEFAULT_PATCHES,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
    scales: Callable[[np.ndarray], Scales] | None = None,
    padim: dict[str, float] | None = None,
    pool: Callable[[np.ndarray], float] | None = None,
    padim_stretch: bool = False,
    padim_neighbourhood: int = 1,
) -> ProductMemory:
    """A memory from good images (S, S, 3) at the detector's size and their variants.

    ``features(image)`` returns its (1, C, h, w) unit-norm patch features. Each variant needs two
    images at least (one for the bank, one to calibrate); smaller variants are left out. ``padim``
    names the variants that also get PaDiM statistics (of the bank's images, calibrated on the same
    held-out ones) and their share; it needs ``scales(image)``, the raw stage outputs whose joint
    normalisation ``features`` is (then one tower pass per image serves both). With ``pool`` (the
    detector's pooling of a map into an image score) each variant also keeps its calibration images' scores
    as the memory alone would give them (:attr:`VariantMemory.normal_scores`). With ``padim_stretch`` PaDiM
    reads each image with its grey levels stretched (:func:`stretch_grey`; one more tower pass per image), and
    with ``padim_neighbourhood`` above 1 each position's features averaged over that square of neighbours.
    """
    padim = padim or {}
    if padim and scales is None:
        raise ValueError("PaDiM statistics need the images' raw stage outputs (scales)")
    check_neighbourhood(padim_neighbourhood)  # before any tower pass

    def both(image: np.ndarray, fit: PadimAccumulator | None, for_padim: bool) -> tuple[torch.Tensor, Scales | None]:
        """The image's joint features and, for a variant with PaDiM, what PaDiM reads of it (its raw stage
        outputs: those of the same pass, or of the stretched image's)."""
        if scales is None:
            return features(image), None
        s = scales(image)
        p = scales(stretch_grey(image)) if padim_stretch and for_padim else s
        if for_padim and padim_neighbourhood != 1:  # a width of 1 reads each position as it is
            p = neighbourhood_means(p, padim_neighbourhood)
        if fit is not None:
            fit.add(p)
        return joint_patch_features(s), p

    rng = np.random.default_rng(seed)
    by_group: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        by_group.setdefault(g, []).append(i)
    variants: dict[str, VariantMemory] = {}
    for name, idx in sorted(by_group.items()):
        if len(idx) < 2:
            log.warning("variant %r has one good image: no product memory for it", name or ".")
            if progress:
                progress(len(idx))
            continue
        order = [idx[int(i)] for i in rng.permutation(len(idx))]
        folds = calibration_folds(len(order))  # positions in ``order``; the first fold is left out of the bank
        extra = len(folds) > 1  # small variants: more folds, each against the others, so enough images calibrate
        tokens: dict[int, torch.Tensor] = {}  # image -> (h*w, C)
        raw: dict[int, Scales] = {}  # image -> raw stage outputs, kept only where more folds refit PaDiM
        fit = PadimAccumulator(channel_subset(PADIM_TOTAL, seed=seed)) if name in padim else None
        grid: tuple[int, int] = (0, 0)
        keep = order[len(folds[0]):]
        for i in keep:
            f, s = both(images[i], fit, name in padim)  # (1, C, h, w)
            grid = (f.shape[2], f.shape[3])
            tokens[i] = f[0].flatten(1).T  # (h*w, C)
            if extra and s is not None and name in padim:
                raw[i] = s
            if progress:
                progress(1)
        bank = _bank(torch.cat([tokens[i] for i in keep]), patches, rng)
        stats = fit.finish() if fit is not None and fit.n >= 2 else None
        size = images[0].shape[0]
        near_maps, padim_maps = [], []
        for k, fold in enumerate(folds):
            held = [order[j] for j in fold]
            if k > 0:  # a bank (and PaDiM statistics) of every image but this fold's
                others = [i for i in order if i not in held]  # held: a tenth of at most 300 images
                fold_bank = _bank(torch.cat([tokens[i] for i in others]), patches, rng)
                fold_stats = _refit(raw, others, seed) if stats is not None else None
            else:
                fold_bank, fold_stats = bank, stats
            for i in held:
                if k == 0:  # first seen here
                    f, s = both(images[i], None, name in padim)
                    grid = (f.shape[2], f.shape[3])
                    tokens[i] = f[0].flatten(1).T
                    if extra and s is not None and name in padim:
                        raw[i] = s
                q, s = tokens[i], raw.get(i) if k > 0 else s
                d = (1.0 - exact_max_similarity(q, fold_bank)).clamp_min(0).view(1, 1, *grid)  # blocked: no (N, M) product
                near_maps.append(_smoothed(d, size))
                if fold_stats is not None and s is not None:
                    padim_maps.append(_smoothed(fold_stats.distance(s), size))
                if progress and k == 0:
                    progress(1)
        low, high = _calibration(near_maps)
        part = (PadimPart(stats, *_calibration(padim_maps), padim[name], stretch=padim_stretch,
                          neighbourhood=padim_neighbourhood)
                if stats is not None else None)
        scores = [] if pool is None else _normal_scores(near_maps, padim_maps, low, high, part, pool)
        variants[name] = VariantMemory(bank, low, high, len(keep), part, scores)
    return ProductMemory(variants)
