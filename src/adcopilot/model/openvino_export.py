"""OpenVINO export of a nano model's dense path: the ONNX export converted to an IR file pair (``.xml`` + ``.bin``).

The graph is the one :func:`~adcopilot.model.onnx_export.export_onnx` writes (its inputs, outputs and shapes; the
number of references stays dynamic), converted by OpenVINO's own converter with the weights kept in float32, and the
ONNX file's metadata copied into the IR's runtime information (``rt_info``, under ``adcopilot``), so the pair alone
inspects (:class:`~adcopilot.model.openvino_detector.OpenvinoDetector`).

Needs the optional packages ``onnx``, ``onnxscript`` (the ONNX exporter) and ``openvino``
(``pip install 'adcopilot[openvino]'``).
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from adcopilot.errors import AdcopilotError
from adcopilot.model.nano import NanoDetector
from adcopilot.model.onnx_export import check_writable, export_onnx
from adcopilot.model.openvino_detector import (  # openvino as imported there, quietly
    OPENVINO_HINT,
    RT_INFO,
    ov,
)

log = logging.getLogger(__name__)

try:
    import onnx
except ImportError:  # optional: the export says how to install it
    onnx = None


def export_openvino(detector: NanoDetector, out: str | os.PathLike, *, name: str | None = None) -> Path:
    """Write ``detector``'s dense path to ``out`` (an ``.xml`` path; its weights go beside it, ``.bin``); returns it."""
    if ov is None or onnx is None:
        raise AdcopilotError(f"OpenVINO export needs the optional packages openvino and onnx: {OPENVINO_HINT}")
    out = Path(out)
    if out.suffix != ".xml":
        raise AdcopilotError(f"{out}: an OpenVINO model is written as a .xml file (its weights beside it, .bin)")
    check_writable(out)
    check_writable(out.with_suffix(".bin"))
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(detector, Path(tmp) / "model.onnx", name=name)
        meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        # The runtime's own ONNX reader (ov.convert_model would do the same through the converter).
        model = ov.Core().read_model(str(path))
    for key, value in meta.items():
        model.set_rt_info(value, [RT_INFO, key])
    try:
        ov.save_model(model, str(out), compress_to_fp16=False)  # float32 weights: the maps of the ONNX file
    except Exception as exc:  # OpenVINO reports a failed write as a RuntimeError
        raise AdcopilotError(f"{out}: cannot write ({str(exc).strip().splitlines()[0]})") from None
    log.info("wrote %s (%.1f MB with its weights)", out,
             (out.stat().st_size + out.with_suffix(".bin").stat().st_size) / 1e6)
    return out
