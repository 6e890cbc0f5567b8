"""The exported dense path under OpenVINO (``adcopilot export openvino``): an IR file pair, ``model.xml`` + ``model.bin``.

``Copilot.load("model.xml")`` selects it. It is :class:`~adcopilot.model.onnx_detector.OnnxDetector` with another
runtime: the same graph (the ONNX export, converted), the same metadata (kept in the IR's runtime information under
``adcopilot``), the same two halves cut out of it at load time (as OpenVINO sub-models: image -> reference inputs;
everything -> logits), and the same scoring outside the graph. The CPU plugin computes in float32
(``INFERENCE_PRECISION_HINT``): on CPUs with bfloat16 units it would otherwise round to bfloat16 and move the logits
by up to 0.7 (benchmarks/RESULTS.md). It uses as many threads as torch (``OMP_NUM_THREADS``).

Needs the optional package ``openvino`` (``pip install 'adcopilot[openvino]'``).
"""

from __future__ import annotations

import sys
import threading
from typing import Any

import numpy as np
import torch

from adcopilot.errors import AdcopilotError, CheckpointError
from adcopilot.model.onnx_detector import OnnxDetector

# ``import openvino`` starts its converter's usage reports (a client id under ~/intel, an event sent over the
# network) unless the user opted out; the product contacts nothing. With the reporting package unimportable the
# converter falls back to its own silent stub. The export does not need the converter (the runtime reads ONNX).
sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]
try:
    import openvino as ov
except ImportError:  # optional: the error says how to install it when a file is loaded
    ov = None

OPENVINO_HINT = "pip install 'adcopilot[openvino]'"
#: Where the export keeps the dense path's metadata in the IR (``rt_info``), one string per key.
RT_INFO = "adcopilot"


class CompiledPart:
    """One compiled sub-model, run as an onnxruntime session is: ``run(outputs, feeds)`` -> arrays in that order.
    A compiled model's call reuses one inference request, so calls are serialised."""

    def __init__(self, compiled: Any) -> None:
        self.compiled = compiled
        self.input_names = [i.get_any_name() for i in compiled.inputs]
        self.output_names = [o.get_any_name() for o in compiled.outputs]
        self._lock = threading.Lock()

    def run(self, outputs: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        with self._lock:
            result = self.compiled(feeds)
            return [np.array(result[self.compiled.output(name)]) for name in outputs]


class OpenvinoDetector(OnnxDetector):
    """The dense path of an exported nano model under OpenVINO's CPU plugin."""

    runtime = "openvino"

    def _read_graph(self) -> tuple[dict[str, str], tuple[list[str], list[str]]]:
        if ov is None:
            raise AdcopilotError(f"{self.path}: running an OpenVINO model needs the optional package openvino: "
                                 f"{OPENVINO_HINT}")
        if not self.path.with_suffix(".bin").is_file():
            raise CheckpointError(f"{self.path}: its weights {self.path.with_suffix('.bin').name} are missing "
                                  "(an OpenVINO model is the .xml and .bin pair that adcopilot export openvino writes)")
        self._core = ov.Core()
        try:
            model = self._core.read_model(str(self.path))
        except Exception as exc:  # OpenVINO raises RuntimeError with a multi-line report for a broken file
            raise CheckpointError(f"{self.path}: not a readable OpenVINO model "
                                  f"({str(exc).strip().splitlines()[0][:200]})") from None
        meta = {}
        if model.has_rt_info([RT_INFO]):
            meta = {str(k): str(v.astype(str)) for k, v in model.get_rt_info()[RT_INFO].items()}
        self._model = model
        self._params = {p.output(0).get_any_name(): p for p in model.get_parameters()}
        self._results = {o.get_any_name(): o for o in model.outputs}
        return meta, (list(self._params), list(self._results))

    def _open(self, inputs: list[str], outputs: list[str], threads: int | None) -> CompiledPart:
        part = ov.Model([self._results[n] for n in outputs], [self._params[n] for n in inputs], "_".join(outputs))
        config = {"INFERENCE_NUM_THREADS": threads or torch.get_num_threads(), "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_PRECISION_HINT": "f32"}
        return CompiledPart(self._core.compile_model(part, "CPU", config))


def load_openvino_detector(path: Any) -> tuple[OpenvinoDetector, dict[str, Any]]:
    """(detector, metadata) for an exported .xml file, as the model registry returns them."""
    det = OpenvinoDetector(path)
    return det, {"name": det.name, "threshold": det.threshold}
