"""The threshold of least expected cost, checked against brute force and hand-computed cases, and its
documented rules at their edges (the anomalous side of a threshold, one defect, normal images only, a
near tie, the bounds of every setting, what a calibration records)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import numpy as np
import pytest
from PIL import Image
from scipy.optimize import brentq
from scipy.stats import binom

from adcopilot.api import Copilot
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
    rates,
)
from adcopilot.line.labelled_calibration import (
    calibration_record,
    check_settings,
    choose_from_records,
    labelled_items,
    save,
    score_items,
    write_curves,
)
from adcopilot.line.report import results_shots, scored_against_lot


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


def test_a_score_equal_to_the_threshold_is_anomalous():
    s, y = np.array([0.2, 0.5, 0.5, 0.8]), np.array([0, 0, 1, 1])
    assert confusion(s, y, 0.5) == {"tp": 2, "fn": 0, "fp": 1, "tn": 1}
    overkill, miss = rates(s, y, np.array([0.5]))
    assert overkill == pytest.approx([0.5]) and miss == pytest.approx([0.0])


def test_one_defective_image_is_enough():
    c = choose_threshold([0.1, 0.2, 0.3, 0.9], [0, 0, 0, 1])
    assert c.threshold == pytest.approx(0.6) and c.expected_cost == 0.0
    assert c.metrics["miss"] == 0.0 and c.metrics["confusion"] == {"tp": 1, "fn": 0, "fp": 0, "tn": 3}


def test_normal_images_only_cost_only_their_false_alarms():
    s = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    c = choose_threshold(s, [0] * 10, false_alarm_cost=3, target_false_alarm_rate=0.2)
    # Two of ten normals flagged at 0.75; no defective part on this line: cost = 3 * 1 * 0.2.
    assert c.threshold == pytest.approx(0.75) and c.expected_cost == pytest.approx(0.6)
    assert np.isnan(c.curves.miss).all() and c.settings["prevalence"] == 0.0
    with pytest.raises(AdcopilotError, match="--prevalence"):  # a prevalence given must still be valid
        choose_threshold(s, [0] * 10, target_false_alarm_rate=0.2, prevalence=0)


def test_a_cheaper_threshold_wins_by_any_margin_only_equal_costs_tie():
    # normals 0.2 0.4, defects 0.3 0.5, prevalence 1/2: t = 0.25 costs false_alarm_cost / 4 (one
    # false alarm), t = 0.45 costs miss_cost / 4 (one miss). A false alarm a hair cheaper than a miss
    # makes 0.25 the single cheapest; with equal costs the two tie and the upper middle is taken.
    s, y = [0.2, 0.4, 0.3, 0.5], [0, 0, 1, 1]
    c = choose_threshold(s, y, miss_cost=1.0, false_alarm_cost=1.0 - 4e-10)
    assert c.threshold == pytest.approx(0.25) and c.expected_cost == pytest.approx(0.25 * (1 - 4e-10), abs=1e-15)
    assert choose_threshold(s, y).threshold == pytest.approx(0.45)


def test_one_cost_may_be_zero():
    s, y = [0.1, 0.3, 0.2, 0.4], [0, 0, 1, 1]
    free_misses = choose_threshold(s, y, miss_cost=0, false_alarm_cost=1)
    assert free_misses.expected_cost == 0.0 and free_misses.metrics["overkill"] == 0.0
    free_alarms = choose_threshold(s, y, miss_cost=1, false_alarm_cost=0)
    assert free_alarms.expected_cost == 0.0 and free_alarms.metrics["miss"] == 0.0
    halves = choose_threshold(s, y, miss_cost=0.5, false_alarm_cost=0.5)  # sum 1, not 0
    # 0.15 (one false alarm) and 0.35 (one miss) tie at 1/2 * 1/2 * 1/2; the upper one is taken.
    assert halves.threshold == pytest.approx(0.35) and halves.expected_cost == pytest.approx(0.125)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"miss_cost": -1, "false_alarm_cost": 2}, "--miss-cost"),
        ({"miss_cost": 2, "false_alarm_cost": -1}, "--false-alarm-cost"),
        ({"miss_cost": 0, "false_alarm_cost": 0}, "not both 0"),
        ({"target_miss_rate": 1.0}, r"--target-miss-rate must be in \[0, 1\)"),
        ({"target_miss_rate": -0.1}, "--target-miss-rate"),
        ({"prevalence": 1.0}, "--prevalence"),
        ({"prevalence": 1.5}, "--prevalence"),
        ({"target_false_alarm_rate": -0.1}, "--target-false-alarm-rate"),
    ],
)
def test_settings_out_of_range_are_refused(kwargs, match):
    with pytest.raises(AdcopilotError, match=match):
        choose_threshold([0.1, 0.2, 0.3, 0.4], [0, 1, 0, 1], **kwargs)


def test_the_upper_bound_is_where_seeing_so_few_false_alarms_has_probability_five_percent():
    for k, n in [(1, 10), (3, 20), (0, 7)]:
        # Clopper-Pearson's one-sided bound from its definition: P(X <= k | n, p) = 0.05.
        p = brentq(lambda q, k=k, n=n: binom.cdf(k, n, q) - 0.05, 1e-9, 1 - 1e-9)
        assert overkill_upper_bound(k, n) == pytest.approx(p, abs=1e-7)
    assert overkill_upper_bound(1, 10) == pytest.approx(0.3942, abs=1e-4)  # the textbook figure


def test_what_a_calibration_records():
    s, y = [0.1, 0.4, 0.6, 0.5, 0.8], [0, 0, 0, 1, 1]
    c = choose_threshold(s, y, miss_cost=10, false_alarm_cost=1)  # t = 0.45: tp 2, tn 2, fp 1
    assert c.metrics["accuracy"] == pytest.approx(4 / 5)
    assert c.metrics["overkill_upper95"] == pytest.approx(overkill_upper_bound(1, 3))
    assert (c.metrics["n_normal"], c.metrics["n_defective"]) == (3, 2)
    assert c.settings == {"miss_cost": 10.0, "false_alarm_cost": 1.0, "target_miss_rate": None,
                          "target_false_alarm_rate": None, "prevalence": pytest.approx(2 / 5)}
    t = choose_threshold(s, y, target_miss_rate=0.5, prevalence=0.1)
    assert t.settings["target_miss_rate"] == 0.5 and t.settings["prevalence"] == 0.1
    f = choose_threshold(s, y, target_false_alarm_rate=0.0)
    assert f.settings["target_false_alarm_rate"] == 0.0 and f.settings["target_miss_rate"] is None


def test_labelled_items_take_their_truth_from_the_option_that_named_them(lot):
    items = labelled_items([lot["refs"]], [lot["lot"] / "defect"])
    assert [(it.key, it.truth) for it in items] == [
        *((f"normal/ref{i}.png", "normal") for i in range(3)),
        *((f"defective/{n}", "defective") for n in ("broken.png", "d0.png", "d1.png", "d2.png")),
    ]
    assert items[0].path == (lot["refs"] / "ref0.png").absolute()
    assert [it.truth for it in labelled_items([lot["refs"]], [])] == ["normal"] * 3


def test_scoring_labelled_images_writes_no_pictures_and_ignores_a_changed_threshold(tiny_copilot, lot, tmp_path):
    items = labelled_items([lot["lot"] / "good"], [lot["lot"] / "defect"])
    work = tmp_path / "work"
    records = score_items(tiny_copilot, items, [lot["refs"]], work, progress=False)
    assert sorted((r["file"], r["truth"]) for r in records) == [
        *((f"defective/d{i}.png", "defective") for i in range(3)), *((f"normal/g{i}.png", "normal") for i in range(4))]
    assert all(len(r["references"]) == 1 and "annotated" not in r for r in records)  # one shot, no pictures
    # No report or pictures; the reference pool's check (3 references for 1 shot) is kept for a re-run.
    assert sorted(p.name for p in work.iterdir()) == ["batch.json", "reference-check.json", "results.jsonl", "skipped.csv"]
    # The scores do not depend on the threshold: another one reuses them instead of refusing the folder.
    other = Copilot(tiny_copilot.detector, registration=False, model_name="tiny",
                    threshold=tiny_copilot.threshold + 0.1)
    again = score_items(other, items, [lot["refs"]], work, progress=False)
    assert [r["score"] for r in again] == [r["score"] for r in records]
    two = score_items(tiny_copilot, items, [lot["refs"]], tmp_path / "two", shots=2, progress=False)
    assert all(len(r["references"]) == 2 for r in two)
    # A batch's results say with how many references their scores were made: the calibration's count.
    assert (results_shots(records, work), results_shots(two, "two")) == (1, 2)
    with pytest.raises(AdcopilotError, match=r"^mixed: images compared with different numbers of references \(\[1, 2\]\)"):
        results_shots(records + two, "mixed")
    assert results_shots([{**r, "references": []} for r in records], "lot") is None  # a lot scored on its own
    assert not scored_against_lot(records)  # the model's scores: calibrate may save a threshold of them


def test_the_threshold_comes_from_the_records_with_a_known_truth():
    records = [{"truth": "normal", "score": 0.1}, {"truth": "normal", "score": 0.4}, {"truth": None, "score": 0.45},
               {"truth": "defective", "score": 0.5}, {"truth": "defective", "score": 0.8}]
    c = choose_from_records(records, miss_cost=10)
    assert c.threshold == pytest.approx(0.45) and c.metrics["n_normal"] == 2 and c.metrics["n_defective"] == 2
    assert c.settings["miss_cost"] == 10.0
    with pytest.raises(AdcopilotError, match="no labelled results to calibrate on"):
        choose_from_records([{"truth": None, "score": 0.3}])
    with pytest.raises(AdcopilotError, match=r"^weight: must be a finite number"):
        check_settings(weight=float("nan"))  # a setting without a flag is named as it is


def test_a_calibration_record_says_what_made_it_and_is_saved_where_load_looks(tiny_copilot, tmp_path, monkeypatch):
    monkeypatch.setenv("ADCOPILOT_HOME", str(tmp_path / "home"))
    choice = choose_threshold([0.1, 0.4000001234, 0.6, 0.5, 0.8], [0, 0, 0, 1, 1], miss_cost=10)
    rec = calibration_record(tiny_copilot, choice, shots=2, source="folders")
    assert rec["model"] == "tiny" and rec["threshold"] == 0.45  # 0.4500000617, to six decimals
    assert rec["model_threshold"] == tiny_copilot.detector.threshold and rec["image_size"] == 64
    assert rec["image_score"] == tiny_copilot.detector.image_score_for(2)  # the score the threshold's scale is
    assert (rec["shots"], rec["source"], rec["registration"]) == (2, "folders", False)
    assert rec["miss_cost"] == 10.0 and rec["expected_cost"] == choice.expected_cost
    assert rec["metrics"] is choice.metrics
    made = datetime.fromisoformat(rec["date"])
    assert made.utcoffset() == timedelta(0) and made.microsecond == 0
    home = save(rec, None)
    assert home == tmp_path / "home" / "calibration" / "tiny.json"
    assert read_calibration(home)["threshold"] == rec["threshold"]
    assert save(rec, tmp_path / "ckpt") == tmp_path / "ckpt" / "calibration.json"
    assert save(rec, None, tmp_path / "here.json") == tmp_path / "here.json"
    assert json.loads((tmp_path / "here.json").read_text())["source"] == "folders"
