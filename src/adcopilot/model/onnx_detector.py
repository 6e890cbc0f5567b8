"""A :class:`Detector` that runs an exported dense path (``adcopilot export onnx``) under onnxruntime.

``Copilot.load("model.onnx")`` selects it. It computes what the nano detector computes without a
product memory: a reference is encoded once (its patch features, the graph's ``features`` output)
and cached by the caller; a query costs one run of the graph; the logits are up-sampled, smoothed and
pooled as :class:`~adcopilot.model.nano.NanoDetector` does. onnxruntime uses as many threads as torch
(``OMP_NUM_THREADS``).

Needs the optional package ``onnxruntime`` (``pip install 'adcopilot[onnx]'``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from adcopilot.errors import AdcopilotError, CheckpointError
from adcopilot.model.compare import grid_positions
from adcopilot.model.detector import Detector
from adcopilot.model.nano import FEATURE_CHANNELS, STRIDE, pooled_score
from adcopilot.model.onnx_export import INPUTS, INSTALL_HINT, METADATA_KEYS, OUTPUTS
from adcopilot.model.upsample import upsample_centered

log = logging.getLogger(__name__)

try:
    import onnxruntime as ort
except ImportError:  # optional: the error says how to install it when a file is loaded
    ort = None


class OnnxDetector(Detector):
    """The dense path of an exported nano model; references are (N, 152) float32 token arrays."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        if ort is None:
            raise AdcopilotError(f"{path}: running an ONNX model needs the optional package onnxruntime: {INSTALL_HINT}")
        self.path = Path(path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
            raise CheckpointError(f"{self.path}: not a readable ONNX model ({str(exc).splitlines()[0]})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        names = ([i.name for i in self.session.get_inputs()], [o.name for o in self.session.get_outputs()])
        if any(k not in meta for k in METADATA_KEYS) or names != (list(INPUTS), list(OUTPUTS)):
            raise CheckpointError(f"{self.path}: not an adcopilot dense-path export (make one with adcopilot export onnx)")
        try:
            self.image_size = int(meta["image_size"])
            self.threshold = float(meta["threshold"])
            self.smooth_sigma = float(meta["smooth_sigma"])
            self.topk_frac = float(meta["topk_frac"])
        except ValueError as exc:
            raise CheckpointError(f"{self.path}: malformed metadata ({exc})") from None
        self.name = meta["name"]
        n = self.image_size // STRIDE
        self._grid = n
        self._pos = grid_positions(n, n).numpy()  # (N, 2) int64, the positions of one reference

    def run(self, image: np.ndarray, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(S, S, 3) image and (M, 152) reference tokens -> ((h, w) logits, (152, h, w) features)."""
        x = np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32)  # (1, 3, S, S)
        k = max(1, tokens.shape[0] // (self._grid * self._grid))
        pos = np.tile(self._pos, (k, 1))[: tokens.shape[0]]
        logits, feats = self.session.run(list(OUTPUTS), {"image": x, "ref_tokens": tokens[None], "ref_pos": pos})
        return logits[0, 0], feats[0]

    def encode_reference(self, image: np.ndarray) -> np.ndarray:
        """(S, S, 3) image -> its (N, 152) row-major patch tokens (one zero token as the reference)."""
        _, feats = self.run(image, np.zeros((1, FEATURE_CHANNELS), np.float32))
        return np.ascontiguousarray(feats.reshape(FEATURE_CHANNELS, -1).T)

    def detect(self, query: np.ndarray, references: list[Any]) -> tuple[np.ndarray, float]:
        logits, _ = self.run(query, np.concatenate(references) if len(references) > 1 else references[0])
        up = upsample_centered(torch.from_numpy(logits)[None, None], self.image_size // logits.shape[-1])
        prob = torch.sigmoid(up)[0, 0].numpy()  # (S, S)
        if self.smooth_sigma > 0:
            prob = cv2.GaussianBlur(prob, (0, 0), self.smooth_sigma)
        return prob.astype(np.float32, copy=False), pooled_score(prob, self.topk_frac)

    def anomaly_map(self, query: np.ndarray, references: list[Any]) -> np.ndarray:
        return self.detect(query, references)[0]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "runtime": "onnxruntime", "file": str(self.path)}


def load_onnx_detector(path: str | os.PathLike) -> tuple[OnnxDetector, dict[str, Any]]:
    """(detector, metadata) for an exported .onnx file, as the model registry returns them."""
    det = OnnxDetector(path)
    return det, {"name": det.name, "threshold": det.threshold}
