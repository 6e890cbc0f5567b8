"""The shipped model exported to ONNX and to OpenVINO (``adcopilot export onnx|openvino``): each file inspects
real pairs with the PyTorch detector's maps, scores, verdicts, boxes and image checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from adcopilot import Copilot
from adcopilot.api import score_steps, threshold_steps
from adcopilot.cli import main as cli_main
from adcopilot.model.openvino_detector import ov as openvino_runtime  # imported quietly there
from adcopilot.model.registry import DEFAULT_CHECKPOINT

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
pytestmark = pytest.mark.skipif(
    not (DEFAULT_CHECKPOINT / "config.json").exists(), reason="no shipped checkpoint in this checkout"
)
BUNDLED_ELPV = Path.home() / ".cache" / "adcopilot" / "benchmarks" / "bundled" / "ELPV"
#: Max abs difference of the (query-pixel) probability maps; measured at most 3.9e-6 on these pairs.
TOLERANCE = 1e-4


@pytest.fixture(scope="module", params=["onnx", "openvino"])
def exported(request, tmp_path_factory) -> Path:
    if request.param == "openvino" and openvino_runtime is None:
        pytest.skip("openvino is not installed: pip install 'adcopilot[openvino]'")
    out = tmp_path_factory.mktemp(request.param) / ("nano.onnx" if request.param == "onnx" else "nano.xml")
    cli_main(["export", request.param, "--model", "default", "--out", str(out)])  # returns on success
    weights = out if request.param == "onnx" else out.with_suffix(".bin")
    assert weights.stat().st_size > 1e6
    return out


def _pairs() -> list[tuple[object, list[object]]]:
    from skimage import data

    gravel = data.gravel()
    query = gravel.copy()
    query[150:190, 200:260] = 20  # a painted defect on a photo held out of training
    pairs: list[tuple[object, list[object]]] = [(query, [gravel]), (gravel, [gravel])]
    pairs.append((np.full_like(gravel, 128), [gravel]))  # a blank frame: refused by the image check
    for kind in ("mono", "poly"):
        folder = BUNDLED_ELPV / kind / "test"
        goods, defects = sorted((folder / "good").glob("*.png")), sorted((folder / "defect").glob("*.png"))
        if goods and defects:
            pairs += [(defects[0], [goods[0]]), (goods[1], [goods[0], goods[2]]),
                      (defects[1], [goods[0], goods[2], goods[3]])]  # three: compared unregistered
            pairs.append((gravel, [goods[0]]))  # another product: refused by the image check
    return pairs


def test_exported_file_inspects_like_pytorch(exported):
    """Either runtime: the same maps, scores, verdicts, boxes, thresholds and image checks as the checkpoint."""
    torch_cp, onnx_cp = Copilot.load("default"), Copilot.load(exported)
    assert onnx_cp.threshold == torch_cp.threshold
    assert threshold_steps(onnx_cp, 16) == threshold_steps(torch_cp, 16)  # 3 or more references too
    # One reference scored by the blend, two or more by the fused score read against the query's own level, in
    # the file as in the checkpoint.
    assert score_steps(onnx_cp.detector, 16) == score_steps(torch_cp.detector, 16) == {"1": "blend", "2": "fused-spread"}
    for query, refs in _pairs():
        want, got = torch_cp.inspect(query, refs), onnx_cp.inspect(query, refs)
        assert np.abs(got.anomaly_map - want.anomaly_map).max() < TOLERANCE
        assert got.score == pytest.approx(want.score, abs=TOLERANCE)
        assert got.verdict == want.verdict
        assert [b.bbox_2d for b in got.boxes] == [b.bbox_2d for b in want.boxes]
        assert got.image_check == want.image_check
    checks = [torch_cp.inspect(q, r).image_check for q, r in _pairs()]
    assert "blank image" in checks and "not the reference product" in checks
