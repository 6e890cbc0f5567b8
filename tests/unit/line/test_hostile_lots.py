"""Lots an adversary would make: names that are not UTF-8, colliding keys, another lot in the same
folder, symlink loops, non-finite thresholds. Nothing crashes, nothing is silently dropped."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
from PIL import Image

from adcopilot.errors import AdcopilotError
from adcopilot.imaging import load_image
from adcopilot.line.batch import BatchConfig, read_records, run_batch
from adcopilot.line.references import reference_paths
from adcopilot.line.sources import collect

from .conftest import texture, with_defect

# A file name that is not valid UTF-8 (Latin-1 "é" and a stray 0xff), as Python sees it on Linux.
BAD_NAME = os.fsdecode(b"pi\xe8ce-\xff.png")


def _cfg(**kw):
    return BatchConfig(progress=False, **kw)


def _save(path: Path, arr) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="PNG")
    return path


def test_names_that_are_not_utf8_go_through_batch_and_report(tiny_copilot, tmp_path):
    base = texture(0)
    _save(tmp_path / "refs" / BAD_NAME, base)
    _save(tmp_path / "lot" / "good" / BAD_NAME, base)
    _save(tmp_path / "lot" / "defect" / BAD_NAME, with_defect(base))
    (tmp_path / "lot" / "defect" / os.fsdecode(b"broken-\xff.png")).write_bytes(b"not an image")
    items = collect([tmp_path / "lot"])
    out = tmp_path / "out"
    s = run_batch(tiny_copilot, items, [tmp_path / "refs"], out, _cfg())
    assert s.processed == 2 and len(s.skipped) == 1
    # Every text output is valid UTF-8 and names the files readably (undecodable bytes as \xNN).
    for name in ("results.csv", "report.html", "summary.json", "skipped.csv", "results.jsonl"):
        (out / name).read_bytes().decode("utf-8")
    rows = list(csv.DictReader((out / "results.csv").open(encoding="utf-8")))
    assert sorted(r["file"] for r in rows) == ["defect/pi\\xe8ce-\\xff.png", "good/pi\\xe8ce-\\xff.png"]
    assert {r["verdict"] for r in rows} == {"normal", "anomalous"}
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "pi\\xe8ce-\\xff.png" in page
    assert 'href="annotated/good/pi%E8ce-%FF.png.jpg"' in page  # the link reaches the file by its bytes
    assert "broken-\\xff.png" in (out / "skipped.csv").read_text(encoding="utf-8")
    # The records keep the exact names: the annotated image exists under its real (bytes) name.
    recs = read_records(out / "results.jsonl")
    assert {r["file"] for r in recs} == {f"good/{BAD_NAME}", f"defect/{BAD_NAME}"}
    assert all((out / r["annotated"]).exists() for r in recs)
    # A re-run resumes: nothing inspected twice.
    again = run_batch(tiny_copilot, items, [tmp_path / "refs"], out, _cfg())
    assert (again.done_before, again.processed) == (2, 0)


def test_two_folders_of_the_same_name_are_both_inspected(tiny_copilot, tmp_path):
    base = texture(0)
    for line in ("lineA", "lineB"):
        _save(tmp_path / line / "good" / "001.png", base)
        _save(tmp_path / line / "good" / "002.png", base)
    _save(tmp_path / "refs" / "r.png", base)
    items = collect([tmp_path / "lineA" / "good", tmp_path / "lineB" / "good"])
    assert [it.key for it in items] == ["lineA/good/001.png", "lineA/good/002.png", "lineB/good/001.png",
                                        "lineB/good/002.png"]
    s = run_batch(tiny_copilot, items, [tmp_path / "refs"], tmp_path / "out", _cfg(save_images=False))
    assert s.processed == 4 and len(read_records(tmp_path / "out" / "results.jsonl")) == 4


def test_two_files_of_the_same_name_are_both_kept(tmp_path):
    a = _save(tmp_path / "a" / "x.png", texture(0))
    b = _save(tmp_path / "b" / "x.png", texture(1))
    items = collect([a, b])
    assert [it.key for it in items] == ["a/x.png", "b/x.png"]
    assert [it.path for it in items] == [a.absolute(), b.absolute()]
    # The same file named twice is one query.
    assert len(collect([a, a])) == 1


def test_another_lot_in_the_same_out_folder_is_refused(tiny_copilot, tmp_path):
    base = texture(0)
    for line in ("lineA", "lineB"):
        _save(tmp_path / line / "good" / "001.png", base)
    _save(tmp_path / "refs" / "r.png", base)
    out = tmp_path / "out"
    run_batch(tiny_copilot, collect([tmp_path / "lineA" / "good"]), [tmp_path / "refs"], out, _cfg(save_images=False))
    with pytest.raises(AdcopilotError, match=r"out: holds results of a different run \(lot: 1 files, [0-9a-f]{16} -> 1 files, [0-9a-f]{16}\);"):
        run_batch(tiny_copilot, collect([tmp_path / "lineB" / "good"]), [tmp_path / "refs"], out,
                  _cfg(save_images=False))
    # With --restart the new lot replaces the old one.
    s = run_batch(tiny_copilot, collect([tmp_path / "lineB" / "good"]), [tmp_path / "refs"], out,
                  _cfg(save_images=False, restart=True))
    assert s.processed == 1
    assert [r["path"] for r in read_records(out / "results.jsonl")] == [str((tmp_path / "lineB/good/001.png").absolute())]


def test_resuming_at_another_threshold_is_refused(tiny_copilot, lot):
    items = collect([lot["lot"]])
    run_batch(tiny_copilot, items, [lot["refs"]], lot["out"], _cfg(save_images=False))
    old = tiny_copilot.threshold
    try:
        tiny_copilot.threshold = old * 2
        with pytest.raises(AdcopilotError, match=r"holds results of a different run \(threshold: "):
            run_batch(tiny_copilot, items, [lot["refs"]], lot["out"], _cfg(save_images=False))
    finally:
        tiny_copilot.threshold = old


def test_a_symlink_loop_is_named_as_one(tmp_path):
    loop = tmp_path / "loop.png"
    loop.symlink_to("loop.png")
    dangling = tmp_path / "gone.png"
    dangling.symlink_to("nowhere.png")
    with pytest.raises(AdcopilotError, match=r"loop.png: symlink loop$"):
        load_image(loop)
    with pytest.raises(AdcopilotError, match=r"gone.png: broken symlink \(to nowhere.png\)$"):
        load_image(dangling)
    with pytest.raises(AdcopilotError, match=r"loop.png: symlink loop$"):
        reference_paths([loop])
    loop_dir = tmp_path / "lot"
    loop_dir.symlink_to("lot")
    with pytest.raises(AdcopilotError, match=r"lot: symlink loop$"):
        collect([loop_dir])


def test_a_folder_linked_back_to_its_parent_is_searched_once(tmp_path):
    good = tmp_path / "lot" / "good"
    _save(good / "a.png", texture(0))
    (good / "back").symlink_to("..")  # lot/good/back -> lot: an endless folder tree if followed
    assert [it.key for it in collect([tmp_path / "lot"])] == ["good/a.png"]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_thresholds_are_refused(tiny_copilot, lot, value):
    ref = texture(0)
    with pytest.raises(AdcopilotError, match=r"^threshold: must be a finite number, got (nan|inf|-inf)$"):
        tiny_copilot.inspect(ref, [ref], threshold=value)


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_a_calibration_file_with_a_non_finite_threshold_is_refused(tmp_path, text):
    from adcopilot.calibration_store import read_calibration

    p = tmp_path / "calibration.json"
    p.write_text(f'{{"threshold": {text}, "model": "tiny"}}')
    with pytest.raises(AdcopilotError, match=r"calibration.json: 'threshold': must be a finite number, got (nan|inf|-inf)$"):
        read_calibration(p)
    json.loads(p.read_text())  # Python's JSON reads these: the check is ours


def test_calibrating_other_images_in_the_same_work_folder_is_refused_until_restart(tiny_copilot, tmp_path):
    from adcopilot.line import labelled_calibration as run

    base = texture(0)
    for d in ("a", "b"):
        _save(tmp_path / d / "good" / "1.png", base)
        _save(tmp_path / d / "bad" / "1.png", with_defect(base))
    _save(tmp_path / "refs" / "r.png", base)
    work = tmp_path / "work"
    first = run.score_items(tiny_copilot, run.labelled_items([tmp_path / "a/good"], [tmp_path / "a/bad"]),
                            [tmp_path / "refs"], work, progress=False)
    assert len(first) == 2
    other = run.labelled_items([tmp_path / "b/good"], [tmp_path / "b/bad"])
    with pytest.raises(AdcopilotError, match=r"work: holds results of a different run \(lot: "):
        run.score_items(tiny_copilot, other, [tmp_path / "refs"], work, progress=False)
    again = run.score_items(tiny_copilot, other, [tmp_path / "refs"], work, progress=False, restart=True)
    assert {r["path"] for r in again} == {str((tmp_path / f"b/{k}/1.png").absolute()) for k in ("good", "bad")}


def test_calibrate_refuses_non_finite_settings_before_any_work(tmp_path):
    from adcopilot.line import labelled_calibration as run

    for kwargs, flag in (({"miss_cost": float("nan")}, "--miss-cost"), ({"prevalence": float("inf")}, "--prevalence"),
                         ({"target_miss_rate": float("-inf")}, "--target-miss-rate")):
        with pytest.raises(AdcopilotError, match=rf"^{flag}: must be a finite number"):
            run.choose_from_records([{"truth": "normal", "score": 0.1}, {"truth": "defective", "score": 0.9}], **kwargs)
