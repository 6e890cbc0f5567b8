"""The tolerance sheet: every image changed by each condition and inspected as ``inspect`` would, each row read
against its own baseline (the images as taken, or the pose conditions' centred window), bad images skipped and
named, the costly conditions picked out."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from PIL import Image

from adcopilot.errors import AdcopilotError
from adcopilot.line.capture import AS_TAKEN, conditions, window
from adcopilot.line.tolerance import ToleranceReport, ToleranceRow, choose_conditions, measure_tolerance

WINDOW = "window 84 %"


def _part(seed: int, defect: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = cv2.GaussianBlur(np.random.default_rng(0).random((80, 80, 3)).astype(np.float32), (0, 0), 3)
    img = 60 + 120 * (base - base.min()) / (base.max() - base.min()) + rng.normal(0, 2, base.shape)
    if defect:
        img[30:46, 30:46] = 250
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture
def line(tmp_path):
    paths = {}
    for name, seed, defect in [("ref", 1, False), ("g1", 2, False), ("g2", 3, False), ("bad1", 4, True)]:
        paths[name] = tmp_path / f"{name}.png"
        Image.fromarray(_part(seed, defect)).save(paths[name])
    paths["broken"] = tmp_path / "broken.png"
    paths["broken"].write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return paths


def test_each_row_is_what_inspect_gives_under_that_condition(nano_copilot, line):
    good, refs, bad = [line["g1"], line["broken"], line["g2"]], [line["ref"]], [line["bad1"]]
    report = measure_tolerance(nano_copilot, good, refs, bad, ["gain 1.25", "noise 8", "shift 2 %"], progress=False)
    assert [r.condition for r in report.rows] == [AS_TAKEN, "gain 1.25", "noise 8", WINDOW, "shift 2 %"]
    assert [r.baseline for r in report.rows] == [AS_TAKEN, AS_TAKEN, AS_TAKEN, WINDOW, WINDOW]
    assert (report.good, report.defective, report.references) == (2, 1, 1)
    assert len(report.skipped) == 1 and "broken.png: " in report.skipped[0]
    thr = nano_copilot.threshold_for(refs)
    every = conditions(nano_copilot.detector.image_size)
    images = {0: np.asarray(Image.open(line["g1"])), 2: np.asarray(Image.open(line["g2"]))}  # by position, seeds too
    ref_window = window(np.asarray(Image.open(line["ref"])))
    for name in ("gain 1.25", "noise 8", "shift 2 %"):
        cond = every[name]
        got = [nano_copilot.inspect(cond.change(a, np.random.default_rng([0, i])),
                                    [ref_window] if cond.pose else refs, threshold=thr) for i, a in images.items()]
        row = report.row(name)
        assert row.false_alarms == pytest.approx(np.mean([r.verdict == "anomalous" for r in got]))
        assert row.median_normal_score == pytest.approx(float(np.median([r.score for r in got])), abs=1e-6)
    assert report.row(AS_TAKEN).misses is not None and report.row(AS_TAKEN).auroc is not None
    assert json.loads(json.dumps(report.to_dict()))["rows"][0]["condition"] == AS_TAKEN


def test_the_costly_conditions_are_read_against_their_own_baseline():
    rows = [ToleranceRow(AS_TAKEN, AS_TAKEN, 0.05, 0.1, 0.0), ToleranceRow("gain 1.25", AS_TAKEN, 0.15, 0.2, 0.0),
            ToleranceRow("noise 8", AS_TAKEN, 0.14, 0.2, 0.0), ToleranceRow(WINDOW, AS_TAKEN, 0.30, 0.3, 0.0),
            ToleranceRow("shift 5 %", WINDOW, 0.35, 0.4, 0.0)]
    report = ToleranceReport(rows, good=20, defective=0, references=1, threshold=0.5, model="tiny")
    costly = {r.condition: rise for r, rise in report.costly()}
    assert costly == pytest.approx({"gain 1.25": 0.10, WINDOW: 0.25})  # shift 5 % is 5 points above its window
    assert report.to_dict()["costly"] == ["gain 1.25", WINDOW]


def test_conditions_are_chosen_with_their_baselines_and_unknown_ones_refused():
    assert list(choose_conditions(64, ["noise 3"])) == [AS_TAKEN, "noise 3"]
    assert list(choose_conditions(64, ["turn 8 deg"])) == [AS_TAKEN, WINDOW, "turn 8 deg"]
    assert len(choose_conditions(64, None)) == len(conditions(64))
    with pytest.raises(AdcopilotError, match="unknown condition 'fog'"):
        choose_conditions(64, ["fog"])


def test_no_readable_good_image_is_an_error(nano_copilot, line):
    with pytest.raises(AdcopilotError, match="none of the good images could be read"):
        measure_tolerance(nano_copilot, [line["broken"]], [line["ref"]], progress=False)
    with pytest.raises(AdcopilotError, match="no good images in --good"):
        measure_tolerance(nano_copilot, [], [line["ref"]], progress=False)


def test_the_pose_windows_cover_no_made_up_border():
    a = np.arange(100 * 100 * 3, dtype=np.uint8).reshape(100, 100, 3)
    assert np.array_equal(window(a), a[8:92, 8:92])
    assert np.array_equal(window(a, 0.05, 0.05), a[13:97, 13:97])  # moved within the image, nothing replicated


def test_with_shots_each_image_is_compared_with_its_nearest_references(nano_copilot, line, tmp_path):
    other = tmp_path / "other.png"
    Image.fromarray(255 - _part(9)).save(other)  # another product's picture: never the nearest
    broken_ref = tmp_path / "broken_ref.png"
    broken_ref.write_bytes(b"not an image")
    pool = [other, line["ref"], broken_ref]
    report = measure_tolerance(nano_copilot, [line["g1"], line["g2"]], pool, names=["turn 2 deg"], progress=False,
                               shots=1)
    assert (report.shots, report.references) == (1, 2)  # the unreadable reference left out of the pool
    thr = nano_copilot.threshold_for([line["ref"]])
    direct = [nano_copilot.inspect(g, [line["ref"]], threshold=thr) for g in (line["g1"], line["g2"])]
    assert report.row(AS_TAKEN).median_normal_score == pytest.approx(float(np.median([r.score for r in direct])), abs=1e-6)
    ref_window = window(np.asarray(Image.open(line["ref"])))
    turned = [nano_copilot.inspect(conditions(64)["turn 2 deg"].change(np.asarray(Image.open(g)), None), [ref_window],
                                   threshold=thr) for g in (line["g1"], line["g2"])]
    assert report.row("turn 2 deg").median_normal_score == pytest.approx(float(np.median([r.score for r in turned])),
                                                                        abs=1e-6)
    with pytest.raises(AdcopilotError, match="--shots must be at least 1"):
        measure_tolerance(nano_copilot, [line["g1"]], pool, shots=0, progress=False)
