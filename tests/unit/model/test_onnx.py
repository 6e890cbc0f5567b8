"""ONNX export of the dense path: parity with the PyTorch detector on a tiny random model, the
exported file as a model of ``Copilot``, and one-line errors for bad input."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from adcopilot import Copilot
from adcopilot.cli import main as cli_main
from adcopilot.errors import AdcopilotError, CheckpointError
from adcopilot.model.nano import NanoComparisonModel, NanoConfig, NanoDetector
from adcopilot.model.score import pooled_score
from adcopilot.model.vision import load_vision_tower

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from adcopilot.model.onnx_detector import OnnxDetector, OnnxReference  # noqa: E402  (after the skips)
from adcopilot.model.onnx_export import export_onnx  # noqa: E402

TINY = NanoConfig(image_size=64, width=32, num_heads=4, mlp_hidden=48, num_queries=4, out_width=24, head_hidden=8,
                  threshold=0.42)
#: float32 graph against float32 PyTorch; measured 5e-7 on the probability map (1 and 2 references).
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    det = NanoDetector(NanoComparisonModel(TINY).eval(), load_vision_tower(pretrained=False), name="tiny")
    with torch.no_grad():  # a random head barely varies: make the logits spread so that parity means something
        det.model.head.net[-1].bias.fill_(0.0)
        det.model.head.net[-1].weight.mul_(30.0)
    path = export_onnx(det, tmp_path_factory.mktemp("onnx") / "tiny.onnx")
    return det, path


def _images(seed: int, n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.random((64, 64, 3), dtype=np.float32) for _ in range(n)]


def test_maps_match_pytorch_with_one_and_two_references(exported):
    det, path = exported
    onx = OnnxDetector(path)
    assert (onx.image_size, onx.threshold, onx.name) == (64, 0.42, "tiny")
    q, r1, r2 = _images(0, 3)
    for refs in ([r1], [r1, r2]):
        want, want_score = det.detect(q, [det.encode_reference(r) for r in refs])
        got, got_score = onx.detect(q, [onx.encode_reference(r) for r in refs])
        assert got.shape == want.shape == (64, 64)
        assert float(want.max() - want.min()) > 0.05  # the map is not flat
        assert np.abs(got - want).max() < TOLERANCE
        logits = OnnxDetector(path).run(q, OnnxReference.concat([onx.encode_reference(r) for r in refs]))
        want_logits = det.run(q, [det.encode_reference(r) for r in refs], with_tokens=False)["pixel_logits"]
        assert np.abs(logits - want_logits[0, 0].numpy()).max() < 1e-4
        assert got_score == pytest.approx(want_score, abs=TOLERANCE)


def test_encoded_reference_is_the_detectors(exported):
    det, path = exported
    (r,) = _images(1, 1)
    got, want = OnnxDetector(path).encode_reference(r), det.encode_reference(r)
    assert got.tokens.shape == (64, 152) and got.prev.shape == (64, 32) and got.queries.shape == (4, 64, 8)
    for a, b in ((got.tokens, want.tokens), (got.prev, want.prev), (got.queries, want.queries)):
        assert np.abs(a - b[0].numpy()).max() < 1e-5


def test_graph_is_cut_in_two(exported):
    _, path = exported
    onx = OnnxDetector(path)
    assert [o.name for o in onx.encoder.get_outputs()] == ["features", "prev", "queries"]
    assert [i.name for i in onx.encoder.get_inputs()] == ["image"]  # no reference needed to encode one
    assert [o.name for o in onx.session.get_outputs()] == ["pixel_logits", "features"]  # the distance reads them


def test_copilot_loads_the_file_and_inspects(exported):
    _, path = exported
    cp = Copilot.load(path)
    q, r = _images(2, 2)
    result = cp.inspect(q, [r])
    assert cp.model_name == "tiny" and result.threshold == pytest.approx(0.42)
    assert result.anomaly_map.shape == (64, 64)


def test_not_an_export_is_refused_in_one_line(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf")
    with pytest.raises(CheckpointError, match="bad.onnx: not a readable ONNX model"):
        Copilot.load(bad)


def test_other_graphs_are_refused_in_one_line(exported, tmp_path):
    """A graph of other inputs (another model, or an export of the earlier layout without the cached
    reference inputs) is refused before any session is built."""
    import onnx

    _, path = exported
    proto = onnx.load(str(path))
    proto.graph.input.pop(2)  # ref_prev: the earlier layout had image, ref_tokens, ref_pos
    old = tmp_path / "old.onnx"
    onnx.save_model(proto, str(old))
    with pytest.raises(CheckpointError, match="old.onnx: not an adcopilot dense-path export of this version"):
        Copilot.load(old)


@pytest.mark.parametrize("table", ['{"3": NaN}', '{"2": 0.3}', "[0.3]", "{3: 0.3"])
def test_a_malformed_threshold_table_is_refused_in_one_line(exported, tmp_path, table):
    import onnx

    _, path = exported
    proto = onnx.load(str(path))
    proto.metadata_props.add(key="multi_thresholds", value=table)
    bad = tmp_path / "table.onnx"
    onnx.save_model(proto, str(bad))
    with pytest.raises(CheckpointError, match="table.onnx: malformed metadata") as exc:
        Copilot.load(bad)
    assert len(str(exc.value).splitlines()) == 1


@pytest.mark.parametrize("out, message", [
    ("missing-folder/model.onnx", "missing-folder does not exist"),
    ("a-file/model.onnx", "a-file is a file, not a folder"),
    (".", "is a directory"),
])
def test_unwritable_out_is_refused_in_one_line(exported, tmp_path, out, message):
    det, _ = exported
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(AdcopilotError, match=message):
        export_onnx(det, tmp_path / out)


def test_cli_bad_input_exits_2(tmp_path, capsys):
    for argv, message in (
        (["export", "onnx", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "m.onnx")], "no such model"),
        (["export", "onnx", "--model", "baseline", "--out", str(tmp_path / "m.onnx")], "only a nano model"),
        (["inspect", "q.png", "--ref", "r.png", "--model", str(tmp_path / "nope.onnx")], "no such model"),
    ):
        with pytest.raises(SystemExit) as exc:
            cli_main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1


def test_the_multi_reference_fused_score_and_threshold_match_pytorch(tmp_path):
    """A model whose score with two or more references is the fused one: the file scores and thresholds
    as PyTorch does, with one reference and with two."""
    torch.manual_seed(1)
    cfg = replace(TINY, multi_image_score="fused", multi_threshold=0.3, multi_thresholds={"3": 0.25})
    det = NanoDetector(NanoComparisonModel(cfg).eval(), load_vision_tower(pretrained=False), name="tiny-multi")
    onx = OnnxDetector(export_onnx(det, tmp_path / "multi.onnx"))
    want = [det.threshold_for(n) for n in (1, 2, 3, 6)]
    assert [onx.threshold_for(n) for n in (1, 2, 3, 6)] == want == [0.42, 0.3, 0.25, 0.25]
    q, r1, r2 = _images(3, 3)
    enc = onx.encode_reference(r1)
    assert enc.views is not None and np.abs(enc.views - det.with_views(det.encode_reference(r1)).views[0].numpy()).max() < 1e-5
    for refs in ([r1], [r1, r2]):
        want, want_score = det.detect(q, [det.encode_reference(r) for r in refs])
        got, got_score = onx.detect(q, [onx.encode_reference(r) for r in refs])
        assert np.abs(got - want).max() < TOLERANCE
        assert got_score == pytest.approx(want_score, abs=TOLERANCE)
    assert got_score != pytest.approx(pooled_score(got, cfg.topk_frac))  # two references: the fused score


def test_the_fused_self_score_matches_pytorch(tmp_path):
    """A model whose one-reference score reads the query's own patches where the reference repeats itself:
    the file stores the gate, makes the reference's own self-distance and scores as PyTorch does."""
    torch.manual_seed(2)
    cfg = replace(TINY, image_score="fused-self", self_gate=0.6, twin_quantile=0.6, multi_image_score="fused",
                  multi_threshold=0.3)
    det = NanoDetector(NanoComparisonModel(cfg).eval(), load_vision_tower(pretrained=False), name="tiny-self")
    onx = OnnxDetector(export_onnx(det, tmp_path / "self.onnx"))
    assert onx.self_gate == 0.6 and onx.twin_quantile == 0.6 and onx.image_score_for(1) == "fused-self"
    q, r1, r2 = _images(4, 3)
    enc = onx.encode_reference(r1)
    want_own = det.with_own(det.encode_reference(r1)).own.numpy()
    assert enc.own is not None and np.abs(enc.own - want_own).max() < 1e-5
    for refs in ([r1], [r1, r2]):
        want, want_score = det.detect(q, [det.encode_reference(r) for r in refs])
        got, got_score = onx.detect(q, [onx.encode_reference(r) for r in refs])
        assert got_score == pytest.approx(want_score, abs=TOLERANCE)


def test_the_blend_matches_pytorch_and_its_parameters_travel_in_the_file(tmp_path):
    """The shipped model's one-reference score: the file stores the blend's share and scales and scores as
    PyTorch does; a file whose blend is malformed is refused in one line."""
    import onnx

    torch.manual_seed(3)
    cfg = replace(TINY, image_score="blend", self_gate=0.6, blend_weight=0.3, blend_map_scale=0.45,
                  blend_self_scale=0.35, multi_image_score="fused", multi_threshold=0.3)
    det = NanoDetector(NanoComparisonModel(cfg).eval(), load_vision_tower(pretrained=False), name="tiny-blend")
    path = export_onnx(det, tmp_path / "blend.onnx")
    onx = OnnxDetector(path)
    assert onx.blend == (0.3, 0.45, 0.35) and onx.image_score_for(1) == "blend"
    q, r1, r2 = _images(5, 3)
    for refs in ([r1], [r1, r2]):
        want, want_score = det.detect(q, [det.encode_reference(r) for r in refs])
        got, got_score = onx.detect(q, [onx.encode_reference(r) for r in refs])
        assert np.abs(got - want).max() < TOLERANCE
        assert got_score == pytest.approx(want_score, abs=TOLERANCE)
    assert got_score != pytest.approx(pooled_score(got, cfg.topk_frac))
    proto = onnx.load(str(path))
    for p in proto.metadata_props:
        if p.key == "blend_self_scale":
            p.value = "0"
    bad = tmp_path / "blend-bad.onnx"
    onnx.save_model(proto, str(bad))
    with pytest.raises(CheckpointError, match="blend-bad.onnx: malformed metadata .blend_self_scale must be a "
                                              "positive number") as exc:
        Copilot.load(bad)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("gate", ["NaN", "inf", "wide", "-0.1", "0"])
def test_a_malformed_self_gate_is_refused_in_one_line(exported, tmp_path, gate):
    import onnx

    _, path = exported
    proto = onnx.load(str(path))
    for p in proto.metadata_props:
        if p.key == "self_gate":
            p.value = gate
    bad = tmp_path / "gate.onnx"
    onnx.save_model(proto, str(bad))
    with pytest.raises(CheckpointError, match="gate.onnx: malformed metadata") as exc:
        Copilot.load(bad)
    assert len(str(exc.value).splitlines()) == 1


def test_the_file_runs_the_image_check(exported):
    """The exported model carries the nearest-reference distance the image check reads: a blank frame and a
    flat grey one are refused with a reason, as with the checkpoint (before, an ONNX model skipped the check)."""
    det, path = exported
    cp, pt = Copilot.load(path), Copilot(det)
    (r,) = _images(6, 1)
    onx = OnnxDetector(path)
    q = _images(7, 1)[0]
    got, want = onx.detection(q, [onx.encode_reference(r)]), det.detection(q, [det.encode_reference(r)])
    assert got.distance is not None and np.abs(got.distance - want.distance).max() < TOLERANCE
    # The references are compared with each other by the same patches as the checkpoint's (no inspection between them).
    want_tokens = det.reference_tokens(det.encode_reference(r))
    assert np.abs(onx.reference_tokens(onx.encode_reference(r)).numpy() - want_tokens.numpy()).max() < 1e-5
    assert onx.reference_tokens(OnnxReference.concat([onx.encode_reference(r)] * 2)) is None  # one reference only
    for blank in (np.zeros((64, 64, 3), np.float32), np.full((64, 64, 3), 0.5, np.float32)):
        result = cp.inspect(blank, [r])
        assert result.image_check == pt.inspect(blank, [r]).image_check == "blank image"
        assert result.verdict == "anomalous"


def test_the_spread_travels_in_the_file_and_scores_as_pytorch(tmp_path):
    """A model whose score with two references is read relative to the query's normal level: the file stores
    the weight and scores as PyTorch does with one reference and with two; a file without the weight reads the
    default; a malformed weight is refused in one line."""
    import onnx

    torch.manual_seed(4)
    cfg = replace(TINY, image_score="fused", multi_image_score="fused-spread", multi_threshold=0.4, spread_weight=0.3)
    det = NanoDetector(NanoComparisonModel(cfg).eval(), load_vision_tower(pretrained=False), name="tiny-spread")
    path = export_onnx(det, tmp_path / "spread.onnx")
    onx = OnnxDetector(path)
    assert onx.spread_weight == 0.3 and onx.image_score_for(2) == "fused-spread"
    q, r1, r2 = _images(6, 3)
    for refs in ([r1], [r1, r2]):
        _, want_score = det.detect(q, [det.encode_reference(r) for r in refs])
        _, got_score = onx.detect(q, [onx.encode_reference(r) for r in refs])
        assert got_score == pytest.approx(want_score, abs=TOLERANCE)
    proto = onnx.load(str(path))
    old = [p for p in proto.metadata_props if p.key != "spread_weight"]
    del proto.metadata_props[:]
    proto.metadata_props.extend(old)
    onnx.save_model(proto, str(tmp_path / "old.onnx"))
    assert OnnxDetector(tmp_path / "old.onnx").spread_weight == NanoConfig.spread_weight
    proto.metadata_props.add(key="spread_weight", value="2")
    onnx.save_model(proto, str(tmp_path / "spread-bad.onnx"))
    with pytest.raises(CheckpointError, match="spread-bad.onnx: malformed metadata") as exc:
        Copilot.load(tmp_path / "spread-bad.onnx")
    assert len(str(exc.value).splitlines()) == 1
