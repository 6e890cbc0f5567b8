"""A :class:`Detector` that runs an exported dense path (``adcopilot export onnx``) under onnxruntime.

``Copilot.load("model.onnx")`` selects it. It computes what the nano detector computes without a
product memory, split as the PyTorch detector splits it: a reference is encoded once (its patch
features, their input projection and the first cross-attention's queries: an :class:`OnnxReference`)
and cached by the caller; a query costs one run of the comparison; the logits are up-sampled,
smoothed and pooled as :class:`~adcopilot.model.nano.NanoDetector` does. The file holds one graph;
the two halves are cut out of it at load time (``onnx.utils.Extractor``), so neither run computes
what only the other needs. A query's nearest-reference patch distance is computed from its features (an output of
the graph), as the image check reads it: a blank frame or another product is refused as with the PyTorch model.
onnxruntime uses as many threads as torch (``OMP_NUM_THREADS``); the runtime's two hooks (:meth:`OnnxDetector._read_graph`,
:meth:`OnnxDetector._open`) are what :class:`~adcopilot.model.openvino_detector.OpenvinoDetector` replaces.

Needs the optional packages ``onnx`` and ``onnxruntime`` (``pip install 'adcopilot[onnx]'``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from adcopilot.errors import AdcopilotError, CheckpointError
from adcopilot.model.compare import grid_positions
from adcopilot.model.detector import Detection, Detector, OwnFrame
from adcopilot.model.nano import (
    IMAGE_SCORES,
    STRIDE,
    NanoConfig,
    blend_problem,
    check_threshold_table,
    threshold_by_count,
    valid_self_gate,
    valid_spread_weight,
    valid_twin_quantile,
)
from adcopilot.model.onnx_export import INPUTS, INSTALL_HINT, METADATA_KEYS, OUTPUTS
from adcopilot.model.score import (
    FUSED_SCORES,
    SELF_SCORES,
    dihedral_views,
    image_score,
    nearest_distance,
    self_distance,
)
from adcopilot.model.upsample import upsample_centered

log = logging.getLogger(__name__)

try:
    import onnx
    import onnxruntime as ort
    from onnx.utils import Extractor
except ImportError:  # optional: the error says how to install it when a file is loaded
    onnx = ort = Extractor = None

#: The graph's outputs for a reference (its comparison inputs) and for a query.
REFERENCE_OUTPUTS = ("features", "prev", "queries")
QUERY_OUTPUT = "pixel_logits"


@dataclass
class OnnxReference:
    """One or more encoded references, float32 arrays per patch (M = k * N patches)."""

    tokens: np.ndarray  # (M, 152) unit-norm patch features, row-major per reference
    prev: np.ndarray  # (M, C) their input projection
    queries: np.ndarray  # (H, M, D) the first cross-attention's queries
    views: np.ndarray | None = None  # (7 * M, 152) the references' other dihedral views' patches (fused score)
    own: np.ndarray | None = None  # (N,) the smallest of the references' own self-distances per position (fused-self)

    @classmethod
    def concat(cls, parts: Sequence[OnnxReference]) -> OnnxReference:
        if len(parts) == 1:
            return parts[0]
        views = None if any(p.views is None for p in parts) else np.concatenate([p.views for p in parts])
        own = None if any(p.own is None for p in parts) else np.min([p.own for p in parts], axis=0)
        return cls(np.concatenate([p.tokens for p in parts]), np.concatenate([p.prev for p in parts]),
                   np.concatenate([p.queries for p in parts], axis=1), views, own)


class OnnxDetector(Detector):
    """The dense path of an exported nano model; references are :class:`OnnxReference`."""

    patch_distances = True  # its detections carry the nearest-reference distance: Copilot runs the image check

    #: The runtime's name, as ``describe()`` reports it and errors name it.
    runtime = "onnxruntime"

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        self.path = Path(path)
        meta, names = self._read_graph()
        if any(k not in meta for k in METADATA_KEYS) or names != (list(INPUTS), list(OUTPUTS)):
            raise CheckpointError(f"{self.path}: not an adcopilot dense-path export of this version (make one with "
                                  f"adcopilot export {'onnx' if self.runtime == 'onnxruntime' else self.runtime})")
        self._configure(meta)
        # The query's features: its nearest-reference distance (the image check's) and the fused score's search.
        fused = any(s in FUSED_SCORES for s in self.scores)
        self._outputs = [QUERY_OUTPUT, "features"]
        try:
            self.session = self._open(list(INPUTS), self._outputs, threads)
            self.encoder = self._open(["image"], list(REFERENCE_OUTPUTS), threads)
            self.view_encoder = self._open(["image"], ["features"], threads) if fused else None
        except Exception as exc:  # each runtime raises its own exception types for broken graphs
            raise CheckpointError(f"{self.path}: not a runnable model for {self.runtime} "
                                  f"({str(exc).strip().splitlines()[0]})") from None
        n = self.image_size // STRIDE
        self._pos = grid_positions(n, n).numpy()  # (N, 2) int64, the positions of one reference

    def _read_graph(self) -> tuple[dict[str, str], tuple[list[str], list[str]]]:
        """The file's metadata and its graph's (input names, output names); the graph is kept for :meth:`_open`."""
        if ort is None:
            raise AdcopilotError(f"{self.path}: running an ONNX model needs the optional packages onnx and "
                                 f"onnxruntime: {INSTALL_HINT}")
        try:
            proto = onnx.load(str(self.path))
        except Exception as exc:  # protobuf's decode errors, among others, for a file that is not ONNX
            raise CheckpointError(f"{self.path}: not a readable ONNX model ({str(exc).splitlines()[0]})") from None
        self._cut = Extractor(proto)
        meta = {p.key: p.value for p in proto.metadata_props}
        return meta, ([i.name for i in proto.graph.input], [o.name for o in proto.graph.output])

    def _open(self, inputs: list[str], outputs: list[str], threads: int | None) -> Any:
        """A runnable part of the graph, ``inputs`` -> ``outputs``, with ``run(outputs, feeds)`` -> arrays."""
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        part = self._cut.extract_model(inputs, outputs)
        return ort.InferenceSession(part.SerializeToString(), opts, providers=["CPUExecutionProvider"])

    def _configure(self, meta: dict[str, str]) -> None:
        """The model's thresholds, smoothing, pooling and image scores from the file's metadata, checked."""
        try:
            self.image_size = int(meta["image_size"])
            self.threshold = float(meta["threshold"])
            self.smooth_sigma = float(meta["smooth_sigma"])
            self.topk_frac = float(meta["topk_frac"])
            # Files exported before the fused score: the pooled map with any number of references.
            self.scores = (meta.get("image_score", "map"), meta.get("multi_image_score", "map"))
            self.fused_weight = float(meta.get("fused_weight", "0.05"))
            self.self_gate = float(meta.get("self_gate", "0.3"))
            # Files exported before it: the checkpoint's default, as the PyTorch path reads such a config.
            self.twin_quantile = float(meta.get("twin_quantile", repr(NanoConfig.twin_quantile)))
            self.blend = (float(meta.get("blend_weight", repr(NanoConfig.blend_weight))),
                          float(meta.get("blend_map_scale", repr(NanoConfig.blend_map_scale))),
                          float(meta.get("blend_self_scale", repr(NanoConfig.blend_self_scale))))
            # Files exported before it have no "fused-spread" score to read it.
            self.spread_weight = float(meta.get("spread_weight", repr(NanoConfig.spread_weight)))
            multi = meta.get("multi_threshold")
            self.multi_threshold = float(multi) if multi is not None else None
            self.multi_thresholds = check_threshold_table(json.loads(meta.get("multi_thresholds", "{}")))
        except ValueError as exc:  # json's errors are ValueErrors too
            raise CheckpointError(f"{self.path}: malformed metadata ({exc})") from None
        finite = [self.threshold, self.fused_weight, self.self_gate] + ([self.multi_threshold] if self.multi_threshold is not None else [])
        if any(s not in IMAGE_SCORES for s in self.scores) or not all(np.isfinite(finite)) \
                or not valid_self_gate(self.self_gate) or not valid_twin_quantile(self.twin_quantile) \
                or not valid_spread_weight(self.spread_weight):
            raise CheckpointError(f"{self.path}: malformed metadata (image scores {self.scores}, thresholds, "
                                  "fused weight, self gate (in (0, 2]), twin quantile (in (0, 1]) and spread weight "
                                  "(in [0, 1]) must be known scores and finite numbers)")
        blend = blend_problem(*self.blend)
        if blend:
            raise CheckpointError(f"{self.path}: malformed metadata ({blend})")
        self.name = meta["name"]

    @staticmethod
    def _image(image: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32)  # (1, 3, S, S)

    def image_score_for(self, references: int) -> str:
        """The image score ("map", "fused", "fused-self", "blend" or "fused-spread") with this many references, as
        the exported model's config says."""
        return self.scores[1] if references >= 2 else self.scores[0]

    def threshold_for(self, references: int) -> float:
        return threshold_by_count(references, self.threshold, self.multi_threshold, self.multi_thresholds)

    def _run(self, image: np.ndarray, reference: OnnxReference) -> list[np.ndarray]:
        k = reference.tokens.shape[0] // self._pos.shape[0]
        return self.session.run(self._outputs, {
            "image": self._image(image), "ref_tokens": reference.tokens[None], "ref_prev": reference.prev[None],
            "ref_queries": reference.queries[None], "ref_pos": np.tile(self._pos, (k, 1)),
        })

    def run(self, image: np.ndarray, reference: OnnxReference) -> np.ndarray:
        """(S, S, 3) image compared with encoded references -> the dense head's (h, w) logits."""
        return self._run(image, reference)[0][0, 0]

    @staticmethod
    def _tokens(feats: np.ndarray) -> np.ndarray:
        """(1, 152, h, w) features -> (h * w, 152), row-major as the graph flattens them."""
        return np.ascontiguousarray(feats[0].reshape(feats.shape[1], -1).T)

    def encode_reference(self, image: np.ndarray) -> OnnxReference:
        """(S, S, 3) image -> its comparison inputs (and its other dihedral views' patches for the fused score)."""
        feats, prev, queries = self.encoder.run(list(REFERENCE_OUTPUTS), {"image": self._image(image)})
        views = None
        if self.view_encoder is not None:
            views = np.concatenate([self._tokens(self.view_encoder.run(["features"], {"image": self._image(v)})[0])
                                    for v in dihedral_views(image)[1:]])  # (7 * N, 152)
        tokens = self._tokens(feats)
        own = None
        if set(SELF_SCORES) & set(self.scores):
            n = self.image_size // STRIDE
            own = self_distance(torch.from_numpy(tokens), (n, n)).numpy()  # (N,)
        return OnnxReference(tokens, prev[0], queries[0], views, own)

    def reference_tokens(self, reference: Any) -> torch.Tensor | None:
        """(N, 152) one reference's patch features, those its nearest-reference distance is measured against (the
        reference check compares references by them, as it does for the PyTorch model)."""
        if isinstance(reference, OnnxReference) and reference.tokens.shape[0] == self._pos.shape[0]:
            return torch.from_numpy(reference.tokens)
        return None

    def detection(
        self, query: np.ndarray, references: list[Any], with_tokens: bool = False, own_frame: OwnFrame | None = None,
    ) -> Detection:
        """The map, its image score and the nearest-reference patch distance (S, S), which the image check reads
        (``with_tokens`` and ``own_frame``: unused, the file has no comparison tokens and no product memory)."""
        refs = OnnxReference.concat(references)
        logits, feats = self._run(query, refs)
        logits = logits[0, 0]  # (h, w)
        factor = self.image_size // logits.shape[-1]
        prob = torch.sigmoid(upsample_centered(torch.from_numpy(logits)[None, None], factor))[0, 0].numpy()  # (S, S)
        if self.smooth_sigma > 0:
            prob = cv2.GaussianBlur(prob, (0, 0), self.smooth_sigma)
        prob = prob.astype(np.float32, copy=False)
        q = torch.from_numpy(self._tokens(feats))  # (N, 152)
        d1 = nearest_distance(q, torch.from_numpy(refs.tokens)).view(logits.shape)  # (h, w), as the graph's
        distance = upsample_centered(d1[None, None], factor)[0, 0].numpy()  # (S, S)
        return Detection(prob, self._score(prob, d1, q, refs), distance=distance)

    def _score(self, prob: np.ndarray, d1: torch.Tensor, q: torch.Tensor, refs: OnnxReference) -> float:
        """The image score for this many references, as :class:`~adcopilot.model.nano.NanoDetector` scores."""
        k = refs.tokens.shape[0] // self._pos.shape[0]
        return image_score(self.image_score_for(k), prob, d1, q,
                           None if refs.views is None else torch.from_numpy(refs.views),
                           None if refs.own is None else torch.from_numpy(refs.own), topk_frac=self.topk_frac,
                           fused_weight=self.fused_weight, self_gate=self.self_gate, twin_quantile=self.twin_quantile,
                           blend=self.blend, spread_weight=self.spread_weight)

    def detect(self, query: np.ndarray, references: list[Any]) -> tuple[np.ndarray, float]:
        d = self.detection(query, references)
        return d.amap, d.score

    def anomaly_map(self, query: np.ndarray, references: list[Any]) -> np.ndarray:
        return self.detect(query, references)[0]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "file": str(self.path)}


def load_onnx_detector(path: str | os.PathLike) -> tuple[OnnxDetector, dict[str, Any]]:
    """(detector, metadata) for an exported .onnx file, as the model registry returns them."""
    det = OnnxDetector(path)
    return det, {"name": det.name, "threshold": det.threshold}
