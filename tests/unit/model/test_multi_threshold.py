"""The threshold that needs no labels: with two or more references the nano model's verdict uses the
config's multi-reference score and threshold, with one the pooled map and the fixed threshold; a product
memory keeps the pooled map; larger reference sets take their own thresholds (``multi_thresholds``); a
threshold given wins, a calibrated one for the counts it was fitted for; a threshold that is not a finite
number is refused, in a config and where one is given."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from adcopilot.api import Copilot, score_steps, threshold_steps
from adcopilot.errors import AdcopilotError, CheckpointError
from adcopilot.model.memory import build_memory
from adcopilot.model.nano import NanoComparisonModel, NanoConfig, NanoDetector
from adcopilot.model.score import fused_score, pooled_score, view_distance
from adcopilot.model.vision import load_vision_tower

TINY = NanoConfig(image_size=64, width=32, num_heads=4, mlp_hidden=48, num_queries=4, out_width=24, head_hidden=8)
MULTI = replace(TINY, multi_image_score="fused", multi_threshold=0.3)


@pytest.fixture(scope="module")
def tower():
    torch.manual_seed(0)
    return load_vision_tower(pretrained=False)


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.random((64, 64, 3), dtype=np.float32) for _ in range(3)]  # a query and two references


def _detector(tower, cfg: NanoConfig) -> NanoDetector:
    torch.manual_seed(3)
    return NanoDetector(NanoComparisonModel(cfg).eval(), tower)


def test_two_references_fuse_the_score_one_keeps_the_pooled_map(tower, images):
    det = _detector(tower, MULTI)
    q, *refs = images
    enc = [det.encode_reference(r) for r in refs]
    assert all(e.views is None and e.image is not None for e in enc)  # views are made on first use
    one = det.detection(q, enc[:1])
    assert one.score == pytest.approx(pooled_score(one.amap, TINY.topk_frac))
    assert not enc[0].made  # one reference: no views made (seven tower passes saved)
    assert det.threshold_for(1) == TINY.threshold and det.threshold_for(2) == det.threshold_for(5) == 0.3
    two = det.detection(q, enc)
    assert all("views" in e.made for e in enc)  # made once, kept with each reference
    # The fused score by hand: the comparison's distance to both references, then both references' views.
    out = det.run(q, enc, with_tokens=False)
    qf = det.patch_features(q)[0].flatten(1).T  # (64, 152)
    views = torch.cat([e.made["views"][0] for e in enc])  # (2 * 7 * 64, 152)
    want = fused_score(two.amap, view_distance(out["distance"][0, 0], qf, views), TINY.fused_weight)
    assert two.score == pytest.approx(want, rel=1e-5)
    assert two.score != pytest.approx(pooled_score(two.amap, TINY.topk_frac))


def test_without_multi_reference_settings_nothing_changes_with_more_references(tower, images):
    det = _detector(tower, TINY)  # a checkpoint saved before these settings: map and one threshold
    q, *refs = images
    enc = [det.encode_reference(r) for r in refs]
    assert enc[0].views is None and det.threshold_for(2) == TINY.threshold
    d = det.detection(q, enc)
    assert d.score == pytest.approx(pooled_score(d.amap, TINY.topk_frac))


def test_a_product_memory_keeps_the_pooled_map_and_the_fixed_threshold(tower, images):
    det = _detector(tower, MULTI)
    q, *refs = images
    det.memory = build_memory(refs, ["", ""], det.patch_features, patches=50, seed=0)
    assert det.threshold_for(2) == TINY.threshold
    enc = [det.encode_reference(r) for r in refs]
    assert enc[0].views is None
    d = det.detection(q, enc)
    assert d.score == pytest.approx(pooled_score(d.amap, TINY.topk_frac))


def test_the_copilot_uses_the_threshold_for_the_number_of_references(tower, images):
    q, *refs = images
    cp = Copilot(_detector(tower, MULTI), image_check=False)
    assert not cp.fixed_threshold
    assert cp.inspect(q, refs[:1]).threshold == TINY.threshold
    two = cp.inspect(q, refs)
    assert two.threshold == 0.3 and two.verdict == ("anomalous" if two.score >= 0.3 else "normal")
    assert cp.threshold_with(2) == 0.3 and cp.threshold_for(refs) == 0.3
    assert cp.inspect_batch([(q, refs), (q, refs[:1])])[0].threshold == 0.3  # the staged path alike
    assert cp.inspect(q, refs, threshold=0.7).threshold == 0.7  # given to inspect: wins
    given = Copilot(_detector(tower, MULTI), threshold=0.6, image_check=False)  # given or calibrated: wins
    assert given.fixed_threshold and given.inspect(q, refs).threshold == 0.6 == given.threshold_with(2)
    assert given.inspect(q, refs).score == pytest.approx(two.score)  # the score does not depend on it


def test_larger_reference_sets_take_the_threshold_of_the_largest_count_they_reach(tower, images, tmp_path):
    cfg = replace(MULTI, multi_thresholds={"3": 0.25, "5": 0.2})
    det = _detector(tower, cfg)
    assert [det.threshold_for(n) for n in (1, 2, 3, 4, 5, 9)] == [TINY.threshold, 0.3, 0.25, 0.25, 0.2, 0.2]
    q, *refs = images
    cp = Copilot(det, image_check=False)
    three = refs + [np.flipud(refs[0]).copy()]
    assert cp.inspect(q, three).threshold == 0.25 == cp.threshold_with(3)
    assert cp.inspect_batch([(q, three)])[0].threshold == 0.25  # the staged path alike
    assert cp.inspect(q, refs).threshold == 0.3
    assert threshold_steps(cp, 16) == {"1": TINY.threshold, "2": 0.3, "3": 0.25, "5": 0.2}
    assert threshold_steps(Copilot(det, threshold=0.6), 16) == {"1": 0.6}  # given: one for all
    # The score each count is scored with, as GET /v1/models lists it beside the thresholds.
    assert score_steps(det, 16) == {"1": MULTI.image_score, "2": "fused"}
    assert score_steps(_detector(tower, replace(cfg, image_score="blend")), 16) == {"1": "blend", "2": "fused"}
    folder = NanoComparisonModel(cfg).save(tmp_path / "ck")  # kept in the checkpoint, as JSON keys
    assert json.loads((folder / "config.json").read_text())["multi_thresholds"] == {"3": 0.25, "5": 0.2}
    assert NanoComparisonModel.load(folder).cfg.multi_thresholds == {"3": 0.25, "5": 0.2}
    odd = _detector(tower, replace(MULTI, multi_thresholds={"04": 0.2, "3": 0.25}))  # keys as a hand may write them
    assert [odd.threshold_for(n) for n in (2, 3, 4, 9)] == [0.3, 0.25, 0.2, 0.2]
    det.memory = build_memory(refs, ["", ""], det.patch_features, patches=50, seed=0)
    assert det.threshold_for(5) == TINY.threshold  # a product memory keeps its own threshold


@pytest.mark.parametrize(("key", "value", "match"), [
    ("multi_thresholds", {"2": 0.3}, "reference counts from 3 up"),
    ("multi_thresholds", {"three": 0.3}, "reference counts from 3 up"),
    ("multi_thresholds", {"3": float("nan")}, "reference counts from 3 up"),
    ("multi_thresholds", {"3": "0.3"}, "reference counts from 3 up"),
    ("multi_thresholds", [0.3], "reference counts from 3 up"),
    ("multi_threshold", float("nan"), "multi_threshold must be a finite number"),
    ("multi_threshold", "0.4", "multi_threshold must be a finite number"),
    ("threshold", float("inf"), "threshold must be a finite number"),
    ("threshold", None, "threshold must be a finite number"),
    ("multi_image_score", "mean", "multi_image_score must be one of map, fused"),
])
def test_a_checkpoint_with_an_unusable_threshold_or_score_is_refused(tmp_path, key, value, match):
    folder = NanoComparisonModel(MULTI).save(tmp_path / "ck")
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, key: value}))  # NaN and Infinity: Python's JSON
    with pytest.raises(CheckpointError, match=match):
        NanoComparisonModel.load(folder)


def test_a_threshold_table_without_the_two_reference_threshold_is_refused(tmp_path):
    folder = NanoComparisonModel(TINY).save(tmp_path / "ck")
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "multi_thresholds": {"3": 0.3}}))
    with pytest.raises(CheckpointError, match="multi_thresholds needs multi_threshold"):
        NanoComparisonModel.load(folder)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_threshold_that_is_not_finite_is_refused(tower, images, bad):
    with pytest.raises(AdcopilotError, match="finite"):
        Copilot(_detector(tower, MULTI), threshold=bad)
    cp = Copilot(_detector(tower, MULTI), image_check=False)
    with pytest.raises(AdcopilotError, match="finite"):
        cp.inspect(images[0], images[1:], threshold=bad)
    assert math.isfinite(cp.threshold_with(2))


def test_a_threshold_set_on_the_copilot_serves_every_reference_set(tower, images):
    q, *refs = images
    cp = Copilot(_detector(tower, MULTI), image_check=False)
    cp.threshold = 0.55
    assert cp.fixed_threshold and cp.inspect(q, refs).threshold == 0.55 == cp.inspect(q, refs[:1]).threshold
    with pytest.raises(AdcopilotError, match="finite"):
        cp.threshold = float("nan")


@pytest.mark.parametrize(("shots", "want"), [
    (1, {"1": 0.61, "2": 0.3, "3": 0.25, "5": 0.2}),  # fitted on the pooled map: only one reference
    (2, {"1": TINY.threshold, "2": 0.61, "3": 0.25, "5": 0.2}),
    (3, {"1": TINY.threshold, "2": 0.3, "3": 0.61, "5": 0.2}),  # three and four share the model's own
    (None, {"1": 0.61}),  # a file without its count (older, or written by hand): every count
])
def test_a_calibration_serves_the_counts_it_was_fitted_for(tmp_path, shots, want):
    """The score changes scale with the number of references (pooled map, fused, fused unregistered), so a
    threshold calibrated with k references serves the counts the model itself treats like k."""
    folder = NanoComparisonModel(replace(MULTI, multi_thresholds={"3": 0.25, "5": 0.2})).save(tmp_path / "ck")
    cal = {"model": "nano", "threshold": 0.61, **({"shots": shots} if shots is not None else {})}
    (folder / "calibration.json").write_text(json.dumps(cal))
    cp = Copilot.load(folder)
    assert threshold_steps(cp, 16) == want
    assert cp.calibration["threshold"] == 0.61
    assert threshold_steps(Copilot.load(folder, threshold=0.7), 16) == {"1": 0.7}  # given: every count
    cp.threshold = 0.65  # set later: every count
    assert threshold_steps(cp, 16) == {"1": 0.65}


@pytest.mark.parametrize(("shots", "calibrated_on", "used"), [
    (1, "map", False),  # one reference: the config now scores with "fused-self"
    (1, "fused-self", True),
    (2, "fused", True),  # two references still score with "fused": the edit does not touch this count
    (2, "map", False),
    (None, "map", False),  # no count: made for every count, checked against one reference's score
])
def test_a_calibration_made_on_another_image_score_is_not_used(tmp_path, caplog, shots, calibrated_on, used):
    """A threshold is a point on one score's scale: after a checkpoint's ``image_score`` is edited, a calibration
    made on the old score would flag every part or none. Stored beside the model it is ignored with a warning;
    named explicitly it is refused in one line. A file that does not say its score is trusted, as before."""
    folder = NanoComparisonModel(replace(MULTI, image_score="fused-self")).save(tmp_path / "ck")
    cal = {"model": "nano", "threshold": 0.61, "image_score": calibrated_on, **({"shots": shots} if shots else {})}
    (folder / "calibration.json").write_text(json.dumps(cal))
    with caplog.at_level("WARNING", logger="adcopilot.calibration_store"):
        cp = Copilot.load(folder)
    assert (cp.calibration is not None) == used
    assert (cp.threshold_with(shots or 1) == 0.61) == used
    assert ("calibrate again" in caplog.text) != used
    named = tmp_path / "named.json"
    named.write_text(json.dumps(cal))
    if used:
        assert Copilot.load(folder, calibration=named).calibration["threshold"] == 0.61
    else:
        with pytest.raises(AdcopilotError, match=rf"named.json: calibrated on the '{calibrated_on}' image score, but "
                                                 r"the model now scores with '(fused-self|fused)'; calibrate again$"):
            Copilot.load(folder, calibration=named)
    del cal["image_score"]  # written before the score was recorded, or by hand
    (folder / "calibration.json").write_text(json.dumps(cal))
    assert Copilot.load(folder).calibration["threshold"] == 0.61


def test_a_two_reference_calibration_on_the_fused_score_is_refused_once_it_is_read_against_the_spread(tmp_path):
    """The shipped model's two-reference score became "fused-spread" (the fused score read against the query's own
    level): a calibration made on "fused" with two references is a point on the other scale."""
    folder = NanoComparisonModel(replace(MULTI, multi_image_score="fused-spread")).save(tmp_path / "ck")
    named = tmp_path / "named.json"
    named.write_text(json.dumps({"model": "nano", "threshold": 0.61, "image_score": "fused", "shots": 2}))
    with pytest.raises(AdcopilotError, match=r"named.json: calibrated on the 'fused' image score, but the model now "
                                             r"scores with 'fused-spread'; calibrate again$"):
        Copilot.load(folder, calibration=named)
    named.write_text(json.dumps({"model": "nano", "threshold": 0.61, "image_score": "fused-spread", "shots": 2}))
    assert Copilot.load(folder, calibration=named).threshold_with(2) == 0.61


def test_a_calibration_whose_image_score_is_not_a_name_is_refused(tmp_path):
    folder = NanoComparisonModel(MULTI).save(tmp_path / "ck")
    bad = tmp_path / "cal.json"
    bad.write_text(json.dumps({"model": "nano", "threshold": 0.6, "image_score": 3}))
    with pytest.raises(AdcopilotError, match=r"cal.json: 'image_score' must be the name of the image score calibrated"):
        Copilot.load(folder, calibration=bad)


@pytest.mark.parametrize("shots", [0, -2, 1.5, "2", True])
def test_a_calibration_with_an_unusable_count_is_refused_in_one_line(tmp_path, shots):
    folder = NanoComparisonModel(MULTI).save(tmp_path / "ck")
    bad = tmp_path / "cal.json"
    bad.write_text(json.dumps({"model": "nano", "threshold": 0.6, "shots": shots}))
    with pytest.raises(AdcopilotError, match=r"cal.json: 'shots' must be the number of references") as exc:
        Copilot.load(folder, calibration=bad)
    assert len(str(exc.value).splitlines()) == 1
