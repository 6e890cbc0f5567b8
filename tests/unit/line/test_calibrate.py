"""The threshold of least expected cost, checked against brute force and hand-computed cases."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from adcopilot.calibration_store import (
    default_calibration_path,
    read_calibration,
    resolve_calibration,
    write_calibration,
)
from adcopilot.errors import AdcopilotError
from adcopilot.line.cost_threshold import (
    auroc,
    candidate_thresholds,
    choose_threshold,
    confusion,
    overkill_upper_bound,
)
from adcopilot.line.labelled_calibration import write_curves


def test_separable_scores_split_in_the_gap():
    c = choose_threshold([0.1, 0.2, 0.3, 0.7, 0.9], [0, 0, 0, 1, 1])
    assert c.threshold == pytest.approx(0.5)
    assert c.expected_cost == 0.0
    assert c.metrics["confusion"] == {"tp": 2, "fn": 0, "fp": 0, "tn": 3}
    assert c.metrics["auroc"] == 1.0


def test_costs_move_the_threshold_as_hand_computed():
    # normals 0.1 0.4 0.6, defects 0.5 0.8: an overlap. Candidates between the sorted scores.
    s, y = [0.1, 0.4, 0.6, 0.5, 0.8], [0, 0, 0, 1, 1]
    # Equal costs: t=0.45 -> 1 FA (0.6), 0 miss = 1/5; t=0.7 -> 0 FA, 1 miss (0.5) = 1/5; t=0.55 -> 1 FA + 1 miss.
    # Misses 10x dearer: t=0.45 (cost 1 * 3/5 * 1/3 = 0.2) beats t=0.7 (10 * 2/5 * 1/2 = 2).
    c = choose_threshold(s, y, miss_cost=10, false_alarm_cost=1)
    assert c.threshold == pytest.approx(0.45) and c.expected_cost == pytest.approx(0.2)
    assert c.metrics["miss"] == 0 and c.metrics["overkill"] == pytest.approx(1 / 3)
    # False alarms 10x dearer: t=0.7, cost 1 * 2/5 * 1/2 = 0.2.
    c = choose_threshold(s, y, miss_cost=1, false_alarm_cost=10)
    assert c.threshold == pytest.approx(0.7) and c.expected_cost == pytest.approx(0.2)
    assert c.metrics["confusion"] == {"tp": 1, "fn": 1, "fp": 0, "tn": 3}


def test_equal_costs_tie_takes_the_middle_candidate():
    # normals 0.2 0.4 0.6, defects 0.3 0.5 0.7, equal costs: three candidates share the least cost 1/3,
    # t = 0.25 (2 false alarms), 0.45 (1 false alarm, 1 miss) and 0.65 (2 misses); the middle one is taken.
    c = choose_threshold([0.2, 0.4, 0.6, 0.3, 0.5, 0.7], [0, 0, 0, 1, 1, 1])
    best = np.isclose(c.curves.cost, c.curves.cost.min())
    assert c.curves.thresholds[best] == pytest.approx([0.25, 0.45, 0.65])
    assert c.threshold == pytest.approx(0.45) and c.expected_cost == pytest.approx(1 / 3)
    assert c.metrics["confusion"] == {"tp": 2, "fn": 1, "fp": 1, "tn": 2}


def test_an_even_tie_takes_the_upper_middle_candidate():
    # normals 0.2 0.4, defects 0.3 0.5: least cost 1/4 at t = 0.25 and t = 0.45.
    c = choose_threshold([0.2, 0.4, 0.3, 0.5], [0, 0, 1, 1])
    assert c.threshold == pytest.approx(0.45)


def test_matches_brute_force_on_random_scores():
    rng = np.random.default_rng(3)
    s = np.concatenate([rng.normal(0.3, 0.1, 200), rng.normal(0.55, 0.12, 60)])
    y = np.concatenate([np.zeros(200, int), np.ones(60, int)])
    for cm, cf, p in [(5, 1, None), (1, 3, None), (20, 1, 0.02)]:
        c = choose_threshold(s, y, miss_cost=cm, false_alarm_cost=cf, prevalence=p)
        prev = 60 / 260 if p is None else p
        grid = np.r_[np.unique(s), s.max() + 1]  # every achievable split (anomalous when score >= t)
        brute = min(cm * prev * np.mean(s[y == 1] < t) + cf * (1 - prev) * np.mean(s[y == 0] >= t) for t in grid)
        assert c.expected_cost == pytest.approx(brute, abs=1e-9)
        conf = confusion(s, y, c.threshold)
        got = cm * prev * conf["fn"] / 60 + cf * (1 - prev) * conf["fp"] / 200
        assert got == pytest.approx(c.expected_cost)


def test_candidates_are_the_midpoints_and_one_value_beyond_each_end():
    # distinct scores 0.1 0.3 0.5 (span 0.4): below all at 0.1 - 0.02, above all at 0.5 + 0.02
    got = candidate_thresholds(np.array([0.3, 0.1, 0.5, 0.3]))
    assert got == pytest.approx([0.08, 0.2, 0.4, 0.52])
    # one distinct score: a tiny span keeps the two candidates apart, on either side of it
    assert candidate_thresholds(np.array([0.7, 0.7])) == pytest.approx([0.7 - 5e-8, 0.7 + 5e-8], abs=1e-12)
    c = choose_threshold([0.05, 0.1, 0.9], [0, 0, 0], target_false_alarm_rate=0.0)
    assert c.threshold == pytest.approx(0.9 + 0.05 * 0.85)


def test_target_miss_rate_takes_the_highest_allowed_threshold():
    s = [0.1, 0.2, 0.3, 0.35, 0.4, 0.5, 0.6, 0.7]
    y = [0, 0, 0, 1, 0, 1, 1, 1]
    c = choose_threshold(s, y, target_miss_rate=0.25)  # one of four defects may be missed
    assert c.metrics["confusion"]["fn"] == 1 and c.threshold == pytest.approx(0.45)
    c = choose_threshold(s, y, target_miss_rate=0.0)
    assert c.metrics["miss"] == 0 and c.threshold == pytest.approx(0.325)


def test_target_false_alarm_rate_from_normal_images_only():
    s = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    c = choose_threshold(s, [0] * 10, target_false_alarm_rate=0.2)  # two of ten normals may be flagged
    assert c.threshold == pytest.approx(0.75) and c.metrics["confusion"]["fp"] == 2
    assert c.metrics["miss"] is None and c.metrics["auroc"] is None and c.metrics["n_defective"] == 0
    c = choose_threshold(s, [0] * 10, target_false_alarm_rate=0.0)  # none: above the highest normal
    assert c.threshold > 0.9 and c.metrics["overkill"] == 0
    # With defects too, the misses at that threshold are reported.
    c = choose_threshold([*s, 0.95, 0.65], [0] * 10 + [1, 1], target_false_alarm_rate=0.2)
    assert c.threshold == pytest.approx(0.75) and c.metrics["miss"] == 0.5


def test_false_alarm_upper_bound_is_clopper_pearson():
    assert overkill_upper_bound(0, 20) == pytest.approx(1 - 0.05 ** (1 / 20))  # closed form when none is seen
    assert overkill_upper_bound(0, 300) < 0.01 < overkill_upper_bound(0, 250)  # the "rule of three"
    assert overkill_upper_bound(5, 5) == 1.0


def test_auroc_matches_the_rank_definition():
    rng = np.random.default_rng(0)
    s = np.round(rng.random(50), 1)  # ties on purpose
    y = (rng.random(50) > 0.6).astype(int)
    pos, neg = s[y == 1], s[y == 0]
    expected = np.mean([(a > b) + 0.5 * (a == b) for a in pos for b in neg])
    assert auroc(s, y) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scores": [0.1, 0.2], "labels": [0, 0]}, "both normal and defective"),
        ({"scores": [0.1, 0.2], "labels": [0]}, "equal-length"),
        ({"scores": [0.1, float("nan")], "labels": [0, 1]}, "not finite"),
        ({"scores": [0.1, 0.2], "labels": [0, 1], "miss_cost": -1}, "--miss-cost"),
        ({"scores": [0.1, 0.2], "labels": [0, 1], "target_miss_rate": 1.5}, "--target-miss-rate"),
        ({"scores": [0.1, 0.2], "labels": [0, 1], "prevalence": 0}, "--prevalence"),
        ({"scores": [0.1, 0.2], "labels": [0, 1], "target_false_alarm_rate": 1}, "--target-false-alarm-rate"),
        ({"scores": [0.1, 0.2], "labels": [1, 1], "target_false_alarm_rate": 0.1}, "needs normal images"),
        ({"scores": [0.1, 0.2], "labels": [0, 1], "target_false_alarm_rate": 0.1, "target_miss_rate": 0.1}, "not both"),
    ],
)
def test_bad_calibration_input(kwargs, match):
    with pytest.raises(AdcopilotError, match=match):
        choose_threshold(**kwargs)


def test_curves_are_drawn(tmp_path):
    rng = np.random.default_rng(1)
    c = choose_threshold(np.r_[rng.random(30) * 0.5, 0.3 + rng.random(10) * 0.5], [0] * 30 + [1] * 10, miss_cost=5)
    files = write_curves(c, tmp_path, "tiny")
    for p in files.values():
        im = np.asarray(Image.open(p).convert("RGB"))
        assert im.shape == (480, 640, 3)
        # Something was drawn in the series colour (not just axes on white).
        assert (np.abs(im.astype(int) - [31, 119, 180]).sum(-1) < 30).sum() > 200
    files = write_curves(choose_threshold(rng.random(30), [0] * 30, target_false_alarm_rate=0.1), tmp_path, "tiny")
    assert list(files) == ["false_alarms"]  # no defects: no ROC
    im = np.asarray(Image.open(files["false_alarms"]).convert("RGB"))
    assert (np.abs(im.astype(int) - [31, 119, 180]).sum(-1) < 30).sum() > 200


def test_calibration_files_are_found_where_load_looks(tmp_path, monkeypatch):
    monkeypatch.setenv("ADCOPILOT_HOME", str(tmp_path / "home"))
    assert default_calibration_path("baseline", "baseline") == tmp_path / "home" / "calibration" / "baseline.json"
    assert default_calibration_path(None, "nano") == tmp_path / "home" / "calibration" / "nano.json"
    ckpt = tmp_path / "my-model"
    assert default_calibration_path(ckpt, "nano") == ckpt / "calibration.json"
    assert resolve_calibration("baseline", "baseline") is None
    write_calibration(default_calibration_path("baseline", "baseline"), {"model": "baseline", "threshold": 0.42})
    assert resolve_calibration("default", "baseline")["threshold"] == 0.42
    # Another model's calibration is not used, and named explicitly it is refused.
    assert resolve_calibration("default", "nano") is None
    other = write_calibration(tmp_path / "other.json", {"model": "nano", "threshold": 0.3})
    with pytest.raises(AdcopilotError, match="calibrated for model 'nano'"):
        resolve_calibration("baseline", "baseline", other)
    # A checkpoint folder's own calibration.json, not the home one.
    ckpt.mkdir()
    assert resolve_calibration(ckpt, "baseline") is None
    write_calibration(ckpt / "calibration.json", {"model": "baseline", "threshold": 0.2})
    assert resolve_calibration(ckpt, "baseline")["threshold"] == 0.2


def test_malformed_calibration_files(tmp_path, monkeypatch):
    bad = tmp_path / "cal.json"
    bad.write_text("{not json")
    with pytest.raises(AdcopilotError, match=r"cal.json: malformed JSON"):
        read_calibration(bad)
    bad.write_text(json.dumps({"threshold": "high"}))
    with pytest.raises(AdcopilotError, match="no numeric 'threshold'"):
        read_calibration(bad)
    with pytest.raises(AdcopilotError, match="no such calibration file"):
        read_calibration(tmp_path / "absent.json")
    # A broken stored file is ignored (with a warning), not fatal for every command.
    monkeypatch.setenv("ADCOPILOT_HOME", str(tmp_path))
    (tmp_path / "calibration").mkdir()
    (tmp_path / "calibration" / "baseline.json").write_text("[]")
    assert resolve_calibration("baseline", "baseline") is None
