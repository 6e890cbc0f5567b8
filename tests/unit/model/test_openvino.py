"""OpenVINO export of the dense path: parity with the PyTorch detector on a tiny random model, the IR pair as a
model of ``Copilot`` (with the image check), and one-line errors for bad files and paths."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from adcopilot import Copilot
from adcopilot.cli import main as cli_main
from adcopilot.errors import AdcopilotError, CheckpointError
from adcopilot.model.nano import NanoComparisonModel, NanoConfig, NanoDetector
from adcopilot.model.onnx_detector import OnnxDetector
from adcopilot.model.openvino_detector import RT_INFO, OpenvinoDetector, ov  # openvino imported quietly there
from adcopilot.model.openvino_export import export_openvino
from adcopilot.model.score import pooled_score
from adcopilot.model.vision import load_vision_tower

if ov is None:
    pytest.skip("openvino is not installed: pip install 'adcopilot[openvino]'", allow_module_level=True)
pytest.importorskip("onnxscript")

TINY = NanoConfig(image_size=64, width=32, num_heads=4, mlp_hidden=48, num_queries=4, out_width=24, head_hidden=8,
                  threshold=0.42, image_score="blend", self_gate=0.6, blend_weight=0.3, blend_map_scale=0.45,
                  blend_self_scale=0.35, multi_image_score="fused", multi_threshold=0.3, multi_thresholds={"3": 0.25})
#: float32 under OpenVINO's CPU plugin against float32 PyTorch (its bfloat16 default would miss this by far).
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    det = NanoDetector(NanoComparisonModel(TINY).eval(), load_vision_tower(pretrained=False), name="tiny-ov")
    with torch.no_grad():  # a random head barely varies: make the logits spread so that parity means something
        det.model.head.net[-1].bias.fill_(0.0)
        det.model.head.net[-1].weight.mul_(30.0)
    path = export_openvino(det, tmp_path_factory.mktemp("openvino") / "tiny.xml")
    return det, path


def _images(seed: int, n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.random((64, 64, 3), dtype=np.float32) for _ in range(n)]


def test_the_pair_is_written_and_carries_the_models_settings(exported):
    _, path = exported
    assert path.suffix == ".xml" and path.with_suffix(".bin").stat().st_size > 1e5
    ovd = OpenvinoDetector(path)
    assert (ovd.image_size, ovd.threshold, ovd.name, ovd.runtime) == (64, 0.42, "tiny-ov", "openvino")
    assert ovd.scores == ("blend", "fused") and ovd.blend == (0.3, 0.45, 0.35) and ovd.self_gate == 0.6
    assert [ovd.threshold_for(n) for n in (1, 2, 3, 6)] == [0.42, 0.3, 0.25, 0.25]
    assert ovd.describe()["runtime"] == "openvino"


def test_maps_and_scores_match_pytorch_with_one_and_two_references(exported):
    det, path = exported
    ovd = OpenvinoDetector(path)
    q, r1, r2 = _images(0, 3)
    for refs in ([r1], [r1, r2]):
        want = det.detection(q, [det.encode_reference(r) for r in refs])
        got = ovd.detection(q, [ovd.encode_reference(r) for r in refs])
        assert float(want.amap.max() - want.amap.min()) > 0.05  # the map is not flat
        assert np.abs(got.amap - want.amap).max() < TOLERANCE
        assert np.abs(got.distance - want.distance).max() < TOLERANCE  # what the image check reads
        assert got.score == pytest.approx(want.score, abs=TOLERANCE)
    assert got.score != pytest.approx(pooled_score(got.amap, TINY.topk_frac))  # two references: the fused score


def test_encoded_reference_is_the_detectors(exported):
    det, path = exported
    (r,) = _images(1, 1)
    got, want = OpenvinoDetector(path).encode_reference(r), det.with_own(det.with_views(det.encode_reference(r)))
    for a, b in ((got.tokens, want.tokens[0]), (got.prev, want.prev[0]), (got.queries, want.queries[0]),
                 (got.views, want.views[0]), (got.own, want.own)):
        assert np.abs(a - b.numpy()).max() < 1e-5


def test_graph_is_cut_in_two(exported):
    _, path = exported
    ovd = OpenvinoDetector(path)
    assert ovd.encoder.input_names == ["image"]  # no reference needed to encode one
    assert ovd.encoder.output_names == ["features", "prev", "queries"]
    assert ovd.session.output_names == ["pixel_logits", "features"]


def test_it_scores_as_the_onnx_file_does(exported, tmp_path):
    """The same graph under both runtimes: the IR is the ONNX export converted, not another model."""
    pytest.importorskip("onnxruntime")
    from adcopilot.model.onnx_export import export_onnx

    det, path = exported
    onx, ovd = OnnxDetector(export_onnx(det, tmp_path / "tiny.onnx")), OpenvinoDetector(path)
    q, r = _images(2, 2)
    a, b = onx.detection(q, [onx.encode_reference(r)]), ovd.detection(q, [ovd.encode_reference(r)])
    assert np.abs(a.amap - b.amap).max() < TOLERANCE and a.score == pytest.approx(b.score, abs=TOLERANCE)


def test_copilot_loads_the_pair_inspects_and_checks_the_image(exported):
    _, path = exported
    cp = Copilot.load(path)
    q, r = _images(3, 2)
    result = cp.inspect(q, [r])
    assert cp.model_name == "tiny-ov" and result.threshold == pytest.approx(0.42)
    assert result.anomaly_map.shape == (64, 64) and result.image_check is None
    blank = cp.inspect(np.full((64, 64, 3), 0.5, dtype=np.float32), [r])
    assert blank.image_check == "blank image" and blank.verdict == "anomalous"


def test_the_service_names_its_runtime(exported):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from adcopilot.serve.app import create_app

    _, path = exported
    with TestClient(create_app(Copilot.load(path))) as client:
        m = client.get("/v1/models").json()["models"][0]
    assert m["name"] == "tiny-ov" and m["runtime"] == "openvino" and m["image_size"] == 64


def test_a_file_that_is_not_openvino_is_refused_in_one_line(tmp_path):
    bad = tmp_path / "bad.xml"
    bad.write_text("<net><layers></net>")
    bad.with_suffix(".bin").write_bytes(b"")
    with pytest.raises(CheckpointError, match="bad.xml: not a readable OpenVINO model") as exc:
        Copilot.load(bad)
    assert "\n" not in str(exc.value)


def test_missing_weights_are_named(exported, tmp_path):
    _, path = exported
    lone = tmp_path / "lone.xml"
    lone.write_bytes(path.read_bytes())
    with pytest.raises(CheckpointError, match=r"lone.xml: its weights lone.bin are missing"):
        Copilot.load(lone)


def test_another_openvino_model_is_refused_in_one_line(tmp_path):
    """An IR of some other graph (no adcopilot metadata, other inputs) is refused before anything is compiled."""
    x = ov.opset13.parameter([1, 3, 8, 8], np.float32, name="x")
    other = ov.Model([ov.opset13.relu(x)], [x], "other")
    path = tmp_path / "other.xml"
    ov.save_model(other, str(path))
    with pytest.raises(CheckpointError, match="other.xml: not an adcopilot dense-path export of this version "
                                              r"\(make one with adcopilot export openvino\)"):
        Copilot.load(path)


def test_malformed_metadata_is_refused_in_one_line(exported, tmp_path):
    _, path = exported
    model = ov.Core().read_model(str(path))
    model.set_rt_info("0", [RT_INFO, "blend_self_scale"])
    bad = tmp_path / "blend-bad.xml"
    ov.save_model(model, str(bad), compress_to_fp16=False)
    with pytest.raises(CheckpointError, match="blend-bad.xml: malformed metadata .blend_self_scale must be a "
                                              "positive number") as exc:
        Copilot.load(bad)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("out, message", [
    ("model.onnx", "an OpenVINO model is written as a .xml file"),
    ("missing-folder/model.xml", "missing-folder does not exist"),
    ("a-file/model.xml", "a-file is a file, not a folder"),
])
def test_unwritable_or_misnamed_out_is_refused_in_one_line(exported, tmp_path, out, message):
    det, _ = exported
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(AdcopilotError, match=message):
        export_openvino(det, tmp_path / out)


def test_cli_bad_input_exits_2(tmp_path, capsys):
    for argv, message in (
        (["export", "openvino", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "m.xml")], "no such model"),
        (["export", "openvino", "--model", "baseline", "--out", str(tmp_path / "m.xml")], "only a nano model"),
        (["export", "openvino", "--model", "default", "--out", str(tmp_path / "m.bin")], "written as a .xml file"),
        (["inspect", "q.png", "--ref", "r.png", "--model", str(tmp_path / "nope.xml")], "no such model"),
    ):
        with pytest.raises(SystemExit) as exc:
            cli_main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1


def test_a_model_of_the_pooled_map_alone_round_trips(tmp_path):
    """A model whose scores read no views (the pooled map at every count): no view encoder is compiled."""
    torch.manual_seed(1)
    cfg = replace(TINY, image_score="map", multi_image_score="map")
    det = NanoDetector(NanoComparisonModel(cfg).eval(), load_vision_tower(pretrained=False), name="tiny-map")
    ovd = OpenvinoDetector(export_openvino(det, tmp_path / "map.xml"))
    assert ovd.view_encoder is None
    q, r = _images(4, 2)
    want, want_score = det.detect(q, [det.encode_reference(r)])
    got, got_score = ovd.detect(q, [ovd.encode_reference(r)])
    assert np.abs(got - want).max() < TOLERANCE and got_score == pytest.approx(want_score, abs=TOLERANCE)


def test_neither_exporting_nor_loading_reports_anything_over_the_network(tmp_path):
    """``import openvino`` alone starts its converter's usage reports (a client id under ~/intel, an event sent
    over the network) unless the user opted out; through adcopilot it reports nothing. A fresh process, as a user
    runs it, with its own home and not on a CI machine (where the reports are off anyway)."""
    script = """
import sys, numpy as np
from adcopilot import Copilot
from adcopilot.model.nano import NanoComparisonModel, NanoConfig, NanoDetector
from adcopilot.model.openvino_export import export_openvino
from adcopilot.model.vision import load_vision_tower
cfg = NanoConfig(image_size=64, width=32, num_heads=4, mlp_hidden=48, num_queries=4, out_width=24, head_hidden=8)
det = NanoDetector(NanoComparisonModel(cfg).eval(), load_vision_tower(pretrained=False), name="quiet")
path = export_openvino(det, sys.argv[1] + "/quiet.xml")
image = np.random.default_rng(0).random((64, 64, 3), dtype=np.float32)
print(Copilot.load(path).inspect(image, [image]).verdict)
"""
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TF_BUILD", "JENKINS_URL")}
    env.update(HOME=str(tmp_path), PYTHONPATH=str(Path(__file__).resolve().parents[3] / "src"))
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() in ("normal", "anomalous") and (tmp_path / "quiet.bin").exists()
    assert not (tmp_path / "intel").exists()
    # The same fresh process importing openvino directly does start them: the test can tell.
    plain = subprocess.run([sys.executable, "-c", "import openvino"], env=env, capture_output=True, timeout=300)
    assert plain.returncode == 0 and (tmp_path / "intel").exists()
