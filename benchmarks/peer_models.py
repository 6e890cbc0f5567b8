"""anomalib's PatchCore and PaDiM on this project's EfficientNet-Lite0 features, for bench_peers.py.

anomalib (the optional extra ``.[peers]``) is imported here only. Its own ``PatchcoreModel``,
``PadimModel`` and ``KCenterGreedy`` do all the work; the one thing replaced is the backbone:
``model.feature_extractor`` becomes :class:`StoredFeatures`, which hands the models the stride-8 and
stride-16 stage outputs of this project's tower (the layers timm calls ``blocks.2`` and ``blocks.4``
in ``efficientnet_lite0``), computed once per image. The images enter the models as an index tensor
(B, 1, S, S) whose first pixel is the image's row in the store: the models read only the batch size
and the spatial size from their input, so they see exactly what a backbone would give them.

If anomalib does not import, :data:`ANOMALIB_ERROR` says why and :data:`AVAILABLE` is False.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

LAYERS = ("blocks.2", "blocks.4")  # timm's names for the stride-8 (40 ch) and stride-16 (112 ch) stages
BACKBONE = "efficientnet_lite0"
PADIM_FEATURES = 100  # random channels PaDiM keeps of 152 (anomalib keeps 100 of resnet18's 448)

try:
    import anomalib
    from anomalib.models.image.padim.torch_model import PadimModel
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    AVAILABLE, ANOMALIB_ERROR, VERSION = True, "", str(anomalib.__version__)
except Exception as exc:  # ImportError, or a torchvision build that does not load (OSError, RuntimeError)
    AVAILABLE, ANOMALIB_ERROR, VERSION = False, f"{type(exc).__name__}: {exc}", ""


class StoredFeatures(nn.Module):
    """A stand-in backbone: rows of precomputed tower features, looked up by index.

    s8: (N, 40, S/8, S/8), s16: (N, 112, S/16, S/16), the tower's outputs for N images.
    """

    def __init__(self, s8: torch.Tensor, s16: torch.Tensor) -> None:
        super().__init__()
        self.s8, self.s16 = s8, s16

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        idx = x[:, 0, 0, 0].long()  # (B,)
        return {LAYERS[0]: self.s8[idx], LAYERS[1]: self.s16[idx]}


def index_batch(rows: Sequence[int], size: int) -> torch.Tensor:
    """(B, 1, size, size) tensor carrying the store rows to the models."""
    x = torch.zeros(len(rows), 1, size, size)
    x[:, 0, 0, 0] = torch.tensor(list(rows), dtype=torch.float32)
    return x


def _collect(model: nn.Module, rows: Sequence[int], size: int, batch: int) -> None:
    model.train()
    for i in range(0, len(rows), batch):
        model(index_batch(rows[i : i + batch], size))


def _infer(model: nn.Module, rows: Sequence[int], size: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Image scores (B,) and anomaly maps (B, S, S) of the store rows."""
    model.eval()
    scores, maps = [], []
    with torch.inference_mode():
        for i in range(0, len(rows), batch):
            out = model(index_batch(rows[i : i + batch], size))
            scores.append(out.pred_score.reshape(-1).float().numpy())
            maps.append(out.anomaly_map.reshape(-1, size, size).float().numpy())
    return np.concatenate(scores), np.concatenate(maps)


def patchcore(
    store: StoredFeatures, normal_rows: Sequence[int], test_rows: Sequence[int], size: int,
    *, memory: str, ratio: float, seed: int, batch: int = 8,
) -> tuple[np.ndarray, np.ndarray, int]:
    """anomalib PatchCore fitted on ``normal_rows``; memory "coreset" (k-center greedy) or
    "random", ``ratio`` of the normal patches. Returns scores, maps and the memory size."""
    torch.manual_seed(seed)
    model = PatchcoreModel(layers=list(LAYERS), backbone=BACKBONE, pre_trained=False)
    model.feature_extractor = store
    _collect(model, normal_rows, size, batch)
    if memory == "coreset":
        model.subsample_embedding(ratio)
    else:
        bank = torch.vstack(model.embedding_store)
        model.embedding_store.clear()
        keep = torch.randperm(bank.shape[0])[: max(1, int(bank.shape[0] * ratio))]
        model.memory_bank = bank[keep]
    n = int(model.memory_bank.shape[0])
    scores, maps = _infer(model, test_rows, size, batch)
    return scores, maps, n


def padim(
    store: StoredFeatures, normal_rows: Sequence[int], test_rows: Sequence[int], size: int,
    *, seed: int, batch: int = 8,
) -> tuple[np.ndarray, np.ndarray]:
    """anomalib PaDiM (a Gaussian per position) fitted on ``normal_rows``; raises ValueError when it
    cannot be fitted (one image gives no covariance)."""
    model = padim_model(store, normal_rows, size, seed=seed, batch=batch)
    scores, maps = _infer(model, test_rows, size, batch)
    if not np.isfinite(scores).all():
        raise ValueError(f"non-finite scores from {len(normal_rows)} image(s)")
    return scores, maps


def padim_model(store: StoredFeatures, normal_rows: Sequence[int], size: int, *, seed: int, batch: int = 8) -> nn.Module:
    """anomalib's ``PadimModel`` fitted on ``normal_rows`` (ValueError when its covariance is not invertible)."""
    torch.manual_seed(seed)  # PaDiM's random choice of channels
    model = PadimModel(layers=list(LAYERS), backbone=BACKBONE, pre_trained=False, n_features=PADIM_FEATURES)
    model.feature_extractor = store
    _collect(model, normal_rows, size, batch)
    model.fit()
    if not torch.isfinite(model.gaussian.inv_covariance).all():
        raise ValueError(f"covariance not invertible from {len(normal_rows)} image(s)")
    return model
