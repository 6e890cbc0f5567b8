"""Training-free baseline: nearest reference patch distance on frozen EfficientNet-Lite features.

For every query patch (stride 8) the cosine distance to its nearest patch among all reference
patches is its anomaly value (the PatchCore idea with the references as the memory bank). The
(S/8, S/8) map is up-sampled bilinearly and smoothed with a Gaussian (sigma 4 px); the image
score is the maximum of the smoothed map. It needs no training and stays selectable as the
baseline of every learned model (``--model baseline``, on the default EfficientNet-Lite0 tower; any
:class:`~adcopilot.model.vision.EfficientNetLite` tower can be passed in).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from adcopilot.model.detector import Detection, Detector, OwnFrame, to_batch
from adcopilot.model.upsample import upsample_centered
from adcopilot.model.vision import EfficientNetLite, PatchTower, joint_patch_features, load_vision_tower


def normalized_patch_features(tower: PatchTower, x: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) -> (B, C, S/8, S/8) (Lite0: C = 152), each scale's vectors L2-normalised, joint norm 1."""
    return joint_patch_features(tower.patch_features(x))


class NearestPatchDetector(Detector):
    name = "baseline"
    patch_distances = True

    def __init__(
        self, tower: EfficientNetLite | None = None, image_size: int = 256, threshold: float = 0.35
    ) -> None:
        self.tower = tower if tower is not None else load_vision_tower()
        self.image_size = image_size
        self.threshold = threshold

    @torch.inference_mode()
    def encode_reference(self, image: np.ndarray) -> torch.Tensor:
        feats = normalized_patch_features(self.tower, to_batch([image]))  # (1, C, h, w)
        return feats[0].flatten(1).T.contiguous()  # (h*w, C)

    @torch.inference_mode()
    def detection(
        self, query: np.ndarray, references: list[torch.Tensor], with_tokens: bool = False,
        own_frame: OwnFrame | None = None,
    ) -> Detection:
        """The smoothed map, its maximum and the (S, S) nearest-reference-patch distance before
        smoothing (``own_frame``: unused, the references are compared in the registered frame)."""
        feats = normalized_patch_features(self.tower, to_batch([query]))[0]  # (C, h, w)
        distance = self._distance(feats, references)  # (1, 1, h, w)
        up = upsample_centered(distance, self.image_size // feats.shape[-1])[0, 0].numpy()  # (S, S)
        amap = cv2.GaussianBlur(up, (0, 0), 4).astype(np.float32)
        return Detection(amap, self.pool_score(amap), distance=up)

    def reference_tokens(self, reference: torch.Tensor) -> torch.Tensor:
        return reference  # (h*w, C), as encoded

    def detect(self, query: np.ndarray, references: list[torch.Tensor]) -> tuple[np.ndarray, float]:
        d = self.detection(query, references)
        return d.amap, d.score

    def anomaly_map(self, query: np.ndarray, references: list[torch.Tensor]) -> np.ndarray:
        return self.detection(query, references).amap

    @staticmethod
    def _distance(feats: torch.Tensor, references: list[torch.Tensor]) -> torch.Tensor:
        """(C, h, w) query features against the references' (h*w, C) -> (1, 1, h, w) nearest-patch distance."""
        c, h, w = feats.shape
        q = feats.flatten(1).T  # (h*w, C)
        bank = torch.cat(references, dim=0)  # (k*h*w, C)
        # Unit vectors: squared distance = 2 - 2 cos; report 1 - cos (0 = identical).
        sim = q @ bank.T  # (h*w, k*h*w)
        return (1.0 - sim.max(dim=1).values).clamp_min(0).reshape(1, 1, h, w)
