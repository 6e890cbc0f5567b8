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
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from safetensors.torch import load_file, save_file

from adcopilot.errors import CheckpointError
from adcopilot.model.nearest import PatchIndex, exact_max_similarity
from adcopilot.model.upsample import upsample_centered

log = logging.getLogger(__name__)

MEMORY_FILE = "memory.safetensors"
SMOOTH_SIGMA = 4.0  # pixels at the detector's image size, as the training-free baseline
DEFAULT_PATCHES = 32768  # per variant


@dataclass
class VariantMemory:
    bank: torch.Tensor  # (M, C) unit-norm patch features
    low: float
    high: float
    images: int  # good images behind the bank


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
    ) -> np.ndarray:
        """Calibrated (S, S) map in [0, 1]: nearest distance of each query patch to the variant's
        bank together with the references' patches. query_tokens (N, C), reference_tokens (k*N, C);
        ``reference_distance`` (N,): the query patches' distances to the nearest reference patch, when
        the caller has them (the comparison model computes them), else computed here."""
        name = self.choose(reference_tokens[: grid[0] * grid[1]])
        v = self.variants[name]
        # The bank and the references' patches searched apart (no (M + k*N, C) copy per query).
        if reference_distance is None:
            reference_distance = (1.0 - (query_tokens @ reference_tokens.T).max(dim=1).values).clamp_min(0)
        bank_distance = (1.0 - self._index[name].max_similarity(query_tokens)).clamp_min(0)  # (N,)
        d = torch.minimum(bank_distance, reference_distance.reshape(-1)).view(1, 1, *grid)
        amap = upsample_centered(d, image_size // grid[0])[0, 0].numpy()
        amap = cv2.GaussianBlur(amap, (0, 0), SMOOTH_SIGMA)
        return np.clip((amap - v.low) / max(v.high - v.low, 1e-6), 0.0, 1.0).astype(np.float32)

    # ------------------------------------------------------------------ persistence
    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        tensors = {f"bank.{i}": v.bank.to(torch.float16).contiguous() for i, v in enumerate(self.variants.values())}
        meta = {
            "format": "pt",
            "variants": json.dumps([
                {"name": n, "low": v.low, "high": v.high, "images": v.images, "patches": int(v.bank.shape[0])}
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
                m["name"]: VariantMemory(tensors[f"bank.{i}"], float(m["low"]), float(m["high"]), int(m["images"]))
                for i, m in enumerate(meta)
            }
        except Exception as exc:  # a damaged file: say which and why, not a traceback
            raise CheckpointError(f"{path}: not a readable product memory ({exc})") from None
        return cls(variants)

    def describe(self) -> dict[str, dict[str, float | int]]:
        return {n: {"images": v.images, "patches": int(v.bank.shape[0]), "low": round(v.low, 4),
                    "high": round(v.high, 4)} for n, v in self.variants.items()}


def build_memory(
    images: Sequence[np.ndarray],
    groups: Sequence[str],
    features: Callable[[np.ndarray], torch.Tensor],
    *,
    patches: int = DEFAULT_PATCHES,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> ProductMemory:
    """A memory from good images (S, S, 3) at the detector's size and their variants.

    ``features(image)`` returns its (1, C, h, w) unit-norm patch features. Each variant needs two
    images at least (one for the bank, one to calibrate); smaller variants are left out.
    """
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
        n_cal = min(30, max(1, len(idx) // 10))
        cal, keep = order[:n_cal], order[n_cal:]
        grid: tuple[int, int] = (0, 0)
        tokens = []
        for i in keep:
            f = features(images[i])  # (1, C, h, w)
            grid = (f.shape[2], f.shape[3])
            tokens.append(f[0].flatten(1).T)  # (h*w, C)
            if progress:
                progress(1)
        bank = torch.cat(tokens)
        if bank.shape[0] > patches:
            bank = bank[torch.from_numpy(rng.choice(bank.shape[0], patches, replace=False))]
        bank = bank.to(torch.float16).float()  # what is stored is what calibrates
        size = images[0].shape[0]
        maxima, medians = [], []
        for i in cal:
            f = features(images[i])
            q = f[0].flatten(1).T
            d = (1.0 - exact_max_similarity(q, bank)).clamp_min(0).view(1, 1, *grid)  # blocked: no (N, M) product
            amap = cv2.GaussianBlur(upsample_centered(d, size // grid[0])[0, 0].numpy(), (0, 0), SMOOTH_SIGMA)
            maxima.append(float(amap.max()))
            medians.append(float(np.median(amap)))
            if progress:
                progress(1)
        low = float(np.median(medians))
        high = max(float(np.quantile(maxima, 0.95)), low + 1e-3)
        variants[name] = VariantMemory(bank, low, high, len(keep))
    return ProductMemory(variants)
