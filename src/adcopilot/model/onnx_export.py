"""ONNX export of a nano model's dense path: vision tower + Comparison Encoder + dense anomaly head.

The exported graph is what :meth:`NanoDetector.maps` computes before up-sampling, with the
reference side given as the comparison's cached inputs (:class:`~adcopilot.model.nano.ReferenceInputs`),
so that a reference is encoded once and reused and a query costs what it costs in PyTorch:

    inputs   image        (1, 3, S, S) float, RGB in [0, 1], the (registered) query
             ref_tokens   (1, M, 152)  unit-norm patch features of the k references, M = k * (S/8)^2
             ref_prev     (1, M, C)    their input projection
             ref_queries  (1, H, M, D) the first cross-attention's queries of ``ref_prev``
             ref_pos      (M, 2)       int64 (row, col) grid position of each reference patch
    outputs  pixel_logits (1, 1, S/8, S/8)  the dense head's logits
             features     (1, 152, S/8, S/8) the image's own patch features
             prev         (1, N, C), queries (1, H, N, D): the image's own comparison inputs

The last three outputs are the image's inputs as a reference: they depend on ``image`` alone.
:class:`~adcopilot.model.onnx_detector.OnnxDetector` cuts the graph in two at load time (image ->
reference inputs; everything -> logits), so neither run computes the other's part. The model's
threshold(s), smoothing, pooling and image scores are stored as metadata, so the file alone inspects (the
fused image score's search among the references' dihedral views runs outside the graph, as in PyTorch). Opset 23: its
``Attention`` and ``RMSNormalization`` operators keep the encoder fused. A product memory is not
part of the graph.

Needs the optional packages ``onnx`` and ``onnxscript`` (``pip install 'adcopilot[onnx]'``).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from adcopilot.errors import AdcopilotError
from adcopilot.model.baseline import normalized_patch_features
from adcopilot.model.compare import grid_positions
from adcopilot.model.nano import STRIDE, NanoDetector

log = logging.getLogger(__name__)

OPSET = 23
INPUTS = ("image", "ref_tokens", "ref_prev", "ref_queries", "ref_pos")
OUTPUTS = ("pixel_logits", "features", "prev", "queries")
#: The metadata keys a dense-path file carries (all strings, as ONNX stores them).
METADATA_KEYS = ("adcopilot_dense_path", "name", "image_size", "threshold", "smooth_sigma", "topk_frac")
INSTALL_HINT = "pip install 'adcopilot[onnx]'"


class DensePath(nn.Module):
    """The detector's query path as one module (fused tower, comparison with given references, head).

    The references come as the comparison's cached inputs (:class:`~adcopilot.model.nano.ReferenceInputs`),
    so a query costs what it costs in PyTorch; the image's own inputs are outputs, for when it is a
    reference (:class:`~adcopilot.model.onnx_detector.OnnxDetector` runs the two halves apart).
    """

    def __init__(self, detector: NanoDetector) -> None:
        super().__init__()
        self.tower = detector.fused_tower
        self.model = detector.model
        n = detector.image_size // STRIDE
        self.register_buffer("query_pos", grid_positions(n, n), persistent=False)  # (N, 2)

    def forward(
        self, image: torch.Tensor, ref_tokens: torch.Tensor, ref_prev: torch.Tensor, ref_queries: torch.Tensor,
        ref_pos: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        qf = normalized_patch_features(self.tower, image)  # (1, 152, h, w)
        b, _, h, w = qf.shape
        q_tokens = qf.flatten(2).transpose(1, 2)  # (1, N, 152)
        sim = torch.bmm(q_tokens, ref_tokens.transpose(1, 2))  # (1, N, M)
        distance = (1.0 - sim.max(dim=2).values).clamp_min(0).view(b, 1, h, w)
        m = self.model
        cur = m.input_proj(q_tokens)  # (1, N, C): also this image's "previous image" as a reference
        own_queries = m.compare.first_queries(cur, self.query_pos)  # (1, H, N, D)
        enc, _ = m.compare.encode(cur, ref_prev, self.query_pos, ref_pos, prev_queries=ref_queries)
        logits = m.head(enc.transpose(1, 2).reshape(b, -1, h, w), distance)  # (1, 1, h, w)
        return logits, qf, cur, own_queries


def example_inputs(detector: NanoDetector, references: int = 1) -> tuple[torch.Tensor, ...]:
    """Inputs of the right shapes for ``references`` references (a random image, a random reference's inputs)."""
    n = detector.image_size // STRIDE
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, detector.image_size, detector.image_size, generator=gen)
    with torch.no_grad():
        ref = detector.model.reference_inputs(
            normalized_patch_features(detector.fused_tower, torch.rand(1, 3, n * STRIDE, n * STRIDE, generator=gen))
            .unsqueeze(1).repeat(1, references, 1, 1, 1))
    return image, ref.tokens, ref.prev, ref.queries, ref.pos


def check_writable(out: Path) -> None:
    """Fail in one line before the (slow) export when ``out`` cannot be written."""
    if out.is_dir():
        raise AdcopilotError(f"{out}: is a directory; give the path of the file to write")
    if not out.parent.is_dir():
        why = "is a file, not a folder" if out.parent.exists() else "does not exist"
        raise AdcopilotError(f"{out}: cannot write: {out.parent} {why}")
    existed = out.exists()
    try:
        with open(out, "ab"):
            pass
    except OSError as exc:
        raise AdcopilotError(f"{out}: cannot write ({exc.strerror or exc})") from None
    if not existed:
        out.unlink()


def export_onnx(
    detector: NanoDetector, out: str | os.PathLike, *, name: str | None = None, opset: int = OPSET
) -> Path:
    """Write ``detector``'s dense path to ``out`` (one self-contained .onnx file); returns the path."""
    try:
        import onnx
        import onnxscript  # noqa: F401  (the exporter needs it; fail here with the install hint)
    except ImportError as exc:
        raise AdcopilotError(f"ONNX export needs the optional package {exc.name!r}: {INSTALL_HINT}") from None
    out = Path(out)
    check_writable(out)
    if detector.memory is not None:
        log.warning("the product memory is not part of the ONNX graph: the file inspects with the comparison "
                    "model alone")
    module = DensePath(detector).eval()
    inputs = example_inputs(detector)
    m = torch.export.Dim("M", min=1)
    quiet = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # its notes on packages it can do without (torchvision)
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module, inputs, dynamo=True, opset_version=opset, input_names=list(INPUTS),
                output_names=list(OUTPUTS), dynamic_shapes={"image": None, "ref_tokens": {1: m}, "ref_prev": {1: m},
                                            "ref_queries": {2: m}, "ref_pos": {0: m}},
                verbose=False,
            )
    finally:
        quiet.setLevel(level)
    if program is None:  # pragma: no cover - the dynamo exporter always returns a program
        raise AdcopilotError(f"{out}: the exporter produced no graph")
    proto = program.model_proto
    cfg = detector.model.cfg
    meta = {
        "adcopilot_dense_path": "1",
        "name": name or detector.name,
        "image_size": str(detector.image_size),
        "threshold": repr(float(detector.threshold)),
        "smooth_sigma": repr(float(cfg.smooth_sigma)),
        "topk_frac": repr(float(cfg.topk_frac)),
        # The image score by the number of references (the fused one is computed outside the graph).
        "image_score": cfg.image_score,
        "multi_image_score": cfg.multi_image_score,
        "fused_weight": repr(float(cfg.fused_weight)),
        "self_gate": repr(float(cfg.self_gate)),
        "twin_quantile": repr(float(cfg.twin_quantile)),
        "blend_weight": repr(float(cfg.blend_weight)),
        "blend_map_scale": repr(float(cfg.blend_map_scale)),
        "blend_self_scale": repr(float(cfg.blend_self_scale)),
        "spread_weight": repr(float(cfg.spread_weight)),
    }
    if cfg.multi_threshold is not None:
        meta["multi_threshold"] = repr(float(cfg.multi_threshold))
    if cfg.multi_thresholds:
        meta["multi_thresholds"] = json.dumps(cfg.multi_thresholds, sort_keys=True)
    del proto.metadata_props[:]
    for node in proto.graph.node:  # the exporter's per-node notes hold this machine's source paths
        del node.metadata_props[:]
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)
    try:
        onnx.save_model(proto, str(out))
    except OSError as exc:
        raise AdcopilotError(f"{out}: cannot write ({exc.strerror or exc})") from None
    log.info("wrote %s (%.1f MB)", out, out.stat().st_size / 1e6)
    return out
