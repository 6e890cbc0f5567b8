"""ONNX export of a nano model's dense path: vision tower + Comparison Encoder + dense anomaly head.

The exported graph is what :meth:`NanoDetector.maps` computes before up-sampling, with the
reference side given as an input, so that a reference is encoded once and reused:

    inputs   image       (1, 3, S, S) float, RGB in [0, 1], the (registered) query
             ref_tokens  (1, M, 152)  unit-norm patch features of the k references, M = k * (S/8)^2
             ref_pos     (M, 2)       int64 (row, col) grid position of each reference patch
    outputs  pixel_logits (1, 1, S/8, S/8)  the dense head's logits
             features     (1, 152, S/8, S/8) the image's own patch features (a reference's tokens)

``ref_tokens`` are the ``features`` output of a run on the reference image (any ``ref_tokens`` will
do for that run; :class:`~adcopilot.model.onnx_detector.OnnxDetector` gives one zero token), flattened
row-major. The model's threshold, smoothing and pooling are stored as metadata, so the file alone
inspects. Opset 23: its ``Attention`` and ``RMSNormalization`` operators keep the encoder fused.
A product memory is not part of the graph.

Needs the optional packages ``onnx`` and ``onnxscript`` (``pip install 'adcopilot[onnx]'``).
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from adcopilot.errors import AdcopilotError
from adcopilot.model.baseline import normalized_patch_features
from adcopilot.model.compare import grid_positions
from adcopilot.model.nano import FEATURE_CHANNELS, STRIDE, NanoDetector

log = logging.getLogger(__name__)

OPSET = 23
INPUTS = ("image", "ref_tokens", "ref_pos")
OUTPUTS = ("pixel_logits", "features")
#: The metadata keys a dense-path file carries (all strings, as ONNX stores them).
METADATA_KEYS = ("adcopilot_dense_path", "name", "image_size", "threshold", "smooth_sigma", "topk_frac")
INSTALL_HINT = "pip install 'adcopilot[onnx]'"


class DensePath(nn.Module):
    """The detector's query path as one module (fused tower, comparison with given references, head)."""

    def __init__(self, detector: NanoDetector) -> None:
        super().__init__()
        self.tower = detector.fused_tower
        self.model = detector.model
        n = detector.image_size // STRIDE
        self.register_buffer("query_pos", grid_positions(n, n), persistent=False)  # (N, 2)

    def forward(
        self, image: torch.Tensor, ref_tokens: torch.Tensor, ref_pos: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        qf = normalized_patch_features(self.tower, image)  # (1, 152, h, w)
        b, _, h, w = qf.shape
        q_tokens = qf.flatten(2).transpose(1, 2)  # (1, N, 152)
        sim = torch.bmm(q_tokens, ref_tokens.transpose(1, 2))  # (1, N, M)
        distance = (1.0 - sim.max(dim=2).values).clamp_min(0).view(b, 1, h, w)
        m = self.model
        prev = m.input_proj(ref_tokens)  # (1, M, C)
        queries = m.compare.first_queries(prev, ref_pos)  # (1, H, M, D)
        cur, _ = m.compare.encode(m.input_proj(q_tokens), prev, self.query_pos, ref_pos, prev_queries=queries)
        logits = m.head(cur.transpose(1, 2).reshape(b, -1, h, w), distance)  # (1, 1, h, w)
        return logits, qf


def example_inputs(image_size: int, references: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs of the right shapes for ``references`` references (random image, unit-norm tokens)."""
    n = image_size // STRIDE
    gen = torch.Generator().manual_seed(0)
    tokens = nn.functional.normalize(torch.rand(1, references * n * n, FEATURE_CHANNELS, generator=gen), dim=-1)
    return torch.rand(1, 3, image_size, image_size, generator=gen), tokens, grid_positions(n, n).repeat(references, 1)


def _check_writable(out: Path) -> None:
    """Fail in one line before the (slow) export when ``out`` cannot be written."""
    if out.is_dir():
        raise AdcopilotError(f"{out}: is a directory; give the path of the .onnx file to write")
    if not out.parent.is_dir():
        raise AdcopilotError(f"{out}: cannot write: folder {out.parent} does not exist")
    existed = out.exists()
    try:
        with open(out, "ab"):
            pass
    except OSError as exc:
        raise AdcopilotError(f"{out}: cannot write ({exc.strerror or exc})") from None
    if not existed:
        out.unlink()


def export_onnx(detector: NanoDetector, out: str | os.PathLike, *, name: str | None = None) -> Path:
    """Write ``detector``'s dense path to ``out`` (one self-contained .onnx file); returns the path."""
    try:
        import onnx
        import onnxscript  # noqa: F401  (the exporter needs it; fail here with the install hint)
    except ImportError as exc:
        raise AdcopilotError(f"ONNX export needs the optional package {exc.name!r}: {INSTALL_HINT}") from None
    out = Path(out)
    _check_writable(out)
    if detector.memory is not None:
        log.warning("the product memory is not part of the ONNX graph: the file inspects with the comparison "
                    "model alone")
    module = DensePath(detector).eval()
    inputs = example_inputs(detector.image_size)
    m = torch.export.Dim("M", min=1)
    quiet = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # its notes on packages it can do without (torchvision)
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module, inputs, dynamo=True, opset_version=OPSET, input_names=list(INPUTS),
                output_names=list(OUTPUTS), dynamic_shapes={"image": None, "ref_tokens": {1: m}, "ref_pos": {0: m}},
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
    }
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
