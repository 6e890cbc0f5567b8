"""Batch inspection: outputs, truth and outcomes, bad files, resume, shards, report."""

from __future__ import annotations

import csv
import json
import re

import pytest
from PIL import Image

from adcopilot.errors import AdcopilotError
from adcopilot.line.batch import (
    BatchConfig,
    _asset_name,
    _check_manifest,
    lot_id,
    outcome,
    read_records,
    run_batch,
    shard_suffix,
)
from adcopilot.line.records import MANIFEST
from adcopilot.line.report import load_results
from adcopilot.line.sources import LotItem, collect


def _cfg(**kw):
    return BatchConfig(progress=False, **kw)


def test_batch_writes_every_output(tiny_copilot, lot):
    s = run_batch(tiny_copilot, collect([lot["lot"]]), [lot["refs"]], lot["out"], _cfg())
    out = lot["out"]
    assert (s.total, s.done_before, s.processed) == (8, 0, 7)
    assert s.skipped == [("defect/broken.png", f"{lot['lot'] / 'defect' / 'broken.png'}: not an image file or unknown format")]
    recs = {r["file"]: r for r in read_records(out / "results.jsonl")}
    assert len(recs) == 7
    assert {r["outcome"] for k, r in recs.items() if k.startswith("good/")} == {"pass"}
    assert {r["outcome"] for k, r in recs.items() if k.startswith("defect/")} == {"detected"}
    d0 = recs["defect/d0.png"]
    assert d0["verdict"] == "anomalous" and d0["boxes"] and d0["truth"] == "defective"
    # Boxes are in the query's pixels (96 x 96) and cover the painted square (10..30, 20..40).
    x1, y1, x2, y2 = d0["boxes"][0]["bbox_2d"]
    assert 0 <= x1 < 30 and 0 <= y1 < 40 and x2 > 10 and y2 > 20 and x2 <= 96 and y2 <= 96
    assert len(d0["references"]) == 1 and d0["references"][0].startswith(str(lot["refs"]))
    assert (out / d0["annotated"]).exists() and Image.open(out / d0["thumb"]).size[0] <= 96
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 7 and rows[0].keys() >= {"file", "verdict", "score", "outcome", "boxes"}
    skipped = list(csv.DictReader((out / "skipped.csv").open()))
    assert [r["file"] for r in skipped] == ["defect/broken.png"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["truth"]["confusion"] == {"tn": 4, "fp": 0, "tp": 3, "fn": 0}
    assert summary["truth"]["miss_rate"] == 0 and summary["truth"]["overkill_rate"] == 0
    assert summary["skipped"] == 1


def test_report_is_self_contained_and_worst_first(tiny_copilot, lot):
    # A threshold between the clean and the defective scores, then one defect marked "good" by its folder:
    # it becomes an overkill and must come first in the report.
    (lot["lot"] / "good" / "sneaky.png").write_bytes((lot["lot"] / "defect" / "d1.png").read_bytes())
    run_batch(tiny_copilot, collect([lot["lot"]]), [lot["refs"]], lot["out"], _cfg())
    page = (lot["out"] / "report.html").read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # nothing fetched from elsewhere
    assert page.count("data:image/jpeg;base64,") == 8
    files = re.findall(r"<td>((?:good|defect)/[^<]+)</td>", page)
    assert files[0] == "good/sneaky.png"
    assert "overkill (1 of 5 normal)" in page and "defect/broken.png" in page


def test_resume_skips_finished_files_and_survives_a_torn_line(tiny_copilot, lot):
    items = collect([lot["lot"]])
    run_batch(tiny_copilot, items, [lot["refs"]], lot["out"], _cfg(save_images=False))
    res = lot["out"] / "results.jsonl"
    lines = res.read_text().splitlines()
    # Interrupted run: the last two records lost, the one before torn in the middle.
    res.write_text("\n".join(lines[:-3]) + "\n" + lines[-3][:20])
    s = run_batch(tiny_copilot, items, [lot["refs"]], lot["out"], _cfg(save_images=False))
    assert s.done_before == 4 and s.processed == 3  # 7 good files; the broken one is retried and skipped again
    recs, skipped = load_results(lot["out"])
    assert len(recs) == 7 and [f for f, _ in skipped] == ["defect/broken.png"]
    again = run_batch(tiny_copilot, items, [lot["refs"]], lot["out"], _cfg(save_images=False))
    assert again.processed == 0 and again.done_before == 7


def test_shards_split_the_work_and_the_report_merges_them(tiny_copilot, lot):
    items = collect([lot["lot"]])
    a = run_batch(tiny_copilot, items, [lot["refs"]], lot["out"], _cfg(shard=(1, 2), save_images=False))
    b = run_batch(tiny_copilot, items, [lot["refs"]], lot["out"], _cfg(shard=(2, 2), save_images=False))
    assert a.total + b.total == 8 and a.total > 0 and b.total > 0
    ka = {r["file"] for r in read_records(lot["out"] / "results-1of2.jsonl")}
    kb = {r["file"] for r in read_records(lot["out"] / "results-2of2.jsonl")}
    assert not ka & kb and len(ka | kb) == 7
    recs, _ = load_results(lot["out"])
    assert len(recs) == 7
    assert len(list(csv.DictReader((lot["out"] / "results.csv").open()))) == 7


def test_resuming_with_another_model_setting_is_refused(tiny_copilot, lot):
    items = collect([lot["lot"]])
    run_batch(tiny_copilot, items, [lot["refs"]], lot["out"], _cfg(save_images=False))
    with pytest.raises(AdcopilotError, match=r"holds results of a different run \(shots: 1 -> 2\)"):
        run_batch(tiny_copilot, items, [lot["refs"]], lot["out"], _cfg(shots=2, save_images=False))
    s = run_batch(tiny_copilot, items, [lot["refs"]], lot["out"], _cfg(shots=2, restart=True, save_images=False))
    assert s.processed == 7 and all(len(r["references"]) == 2 for r in read_records(lot["out"] / "results.jsonl"))


def test_nearest_reference_is_chosen_per_query(tiny_copilot, tmp_path):
    from .conftest import texture, with_defect

    refs, q = tmp_path / "refs", tmp_path / "q"
    refs.mkdir()
    q.mkdir()
    Image.fromarray(texture(1)).save(refs / "noise.png")
    Image.fromarray(texture(2, kind="stripes")).save(refs / "stripes.png")
    Image.fromarray(texture(2, kind="stripes")).save(q / "a_stripes.png")
    Image.fromarray(with_defect(texture(1))).save(q / "b_noise_defect.png")
    run_batch(tiny_copilot, collect([q]), [refs], tmp_path / "out", _cfg(save_images=False))
    recs = {r["file"]: r for r in read_records(tmp_path / "out" / "results.jsonl")}
    assert recs["a_stripes.png"]["references"][0].endswith("stripes.png")
    assert recs["a_stripes.png"]["verdict"] == "normal"
    assert recs["b_noise_defect.png"]["references"][0].endswith("noise.png")
    assert recs["b_noise_defect.png"]["verdict"] == "anomalous"
    assert recs["a_stripes.png"]["truth"] is None and recs["a_stripes.png"]["outcome"] is None


def test_bad_shots(tiny_copilot, lot):
    with pytest.raises(AdcopilotError, match="--shots must be at least 1"):
        run_batch(tiny_copilot, collect([lot["lot"]]), [lot["refs"]], lot["out"], _cfg(shots=0))


def test_the_image_checks_reason_reaches_the_csv_the_summary_and_the_report(tiny_copilot, lot):
    Image.new("RGB", (96, 96), (128, 128, 128)).save(lot["lot"] / "good" / "blank.png")
    Image.new("RGB", (96, 96), (0, 0, 0)).save(lot["lot"] / "defect" / "black.png")
    run_batch(tiny_copilot, collect([lot["lot"]]), [lot["refs"]], lot["out"], _cfg())
    out = lot["out"]
    rows = {r["file"]: r for r in csv.DictReader((out / "results.csv").open())}
    assert rows["good/blank.png"]["image_check"] == rows["defect/black.png"]["image_check"] == "blank image"
    assert rows["good/blank.png"]["verdict"] == "anomalous" and rows["good/blank.png"]["outcome"] == "overkill"
    assert {r["image_check"] for k, r in rows.items() if k not in ("good/blank.png", "defect/black.png")} == {""}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["image_check_failed"] == 2 and summary["image_check"] == {"blank image": 2}
    page = (out / "report.html").read_text()
    assert "<b>2</b>not inspected as the product (2 blank image)" in page
    badges = re.findall(r'<tr [^>]*data-f="([^"]+)" data-check="blank image">.*?<span class="check"[^>]*>blank image</span>', page)
    assert sorted(badges) == ["defect/black.png", "good/blank.png"]
    assert '<option value="check">' in page


def test_a_report_without_failed_checks_shows_no_such_card(tiny_copilot, lot):
    run_batch(tiny_copilot, collect([lot["lot"]]), [lot["refs"]], lot["out"], _cfg(save_images=False))
    page = (lot["out"] / "report.html").read_text()
    assert "not inspected as the product" not in page and 'class="check"' not in page
    assert "Notes on the inputs" not in page
    summary = json.loads((lot["out"] / "summary.json").read_text())
    assert summary["image_check_failed"] == 0 and summary["notes"] == {}


def test_a_blank_reference_chosen_from_the_pool_is_noted_in_its_records_the_summary_and_the_report(tiny_copilot, lot):
    blank_ref = lot["refs"] / "lens-cap.png"
    Image.new("RGB", (96, 96), (0, 0, 0)).save(blank_ref)
    Image.new("RGB", (96, 96), (0, 0, 0)).save(lot["lot"] / "defect" / "black.png")  # chooses the blank reference
    run_batch(tiny_copilot, collect([lot["lot"]]), [lot["refs"]], lot["out"], _cfg(save_images=False))
    recs = {r["file"]: r for r in read_records(lot["out"] / "results.jsonl")}
    note = (f"the reference {blank_ref} is a blank image (no contrast): every query is compared with an empty "
            "frame; use a normal image of the product")
    assert recs["defect/black.png"]["references"] == [str(blank_ref)] and recs["defect/black.png"]["notes"] == [note]
    assert all(r["notes"] == [] for k, r in recs.items() if k != "defect/black.png")  # they chose good references
    assert json.loads((lot["out"] / "summary.json").read_text())["notes"] == {note: 1}
    page = (lot["out"] / "report.html").read_text()
    assert "<h2>Notes on the inputs</h2>" in page and "lens-cap.png is a blank image" in page


def test_outcomes_of_every_truth_and_verdict():
    table = {("normal", "normal"): "pass", ("normal", "anomalous"): "overkill",
             ("defective", "anomalous"): "detected", ("defective", "normal"): "miss",
             ("normal", "unknown"): None, ("defective", "unknown"): None, (None, "anomalous"): None}
    assert {k: outcome(*k) for k in table} == table


def test_asset_names_keep_the_folders_and_stay_inside_the_output():
    assert _asset_name("good/a.png") == "good/a.png.jpg"  # a.png and a.jpg stay distinct
    assert _asset_name("../../etc/./x.png") == "etc/x.png.jpg"
    assert _asset_name("/abs//y.png") == "abs/y.png.jpg"
    assert (shard_suffix(1, 1), shard_suffix(2, 4)) == ("", "-2of4")


def test_a_lot_is_named_by_its_size_and_files_in_any_order(tmp_path):
    a, b = LotItem(tmp_path / "a.png", "a.png"), LotItem(tmp_path / "b.png", "b.png")
    name = lot_id([a, b])
    assert re.fullmatch(r"2 files, [0-9a-f]{16}", name) and lot_id([b, a]) == name
    assert lot_id([a, LotItem(tmp_path / "c.png", "b.png")]) != name  # another file under the same key
    assert lot_id([a, LotItem(tmp_path / "b.png", "c.png")]) != name  # the same file under another key
    assert lot_id([a]) != name


def test_what_a_resumed_folder_is_checked_against(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    run = {"lot": "2 files, 0123456789abcdef", "model": "tiny", "threshold": 0.5, "shots": 1}
    (out / MANIFEST).write_text(json.dumps({k: v for k, v in run.items() if k != "lot"}))
    _check_manifest(out, run, BatchConfig())  # written before lots were recorded: taken as it is
    assert json.loads((out / MANIFEST).read_text()) == run
    # Scores only (calibration): another threshold is no other run; the folder now records 0.7.
    _check_manifest(out, {**run, "threshold": 0.7}, BatchConfig(match_threshold=False))
    with pytest.raises(AdcopilotError, match=r"out: holds results of a different run \(threshold: 0.7 -> 0.5, "
                                             r"shots: 1 -> 2\); use another --out or --restart"):
        _check_manifest(out, {**run, "shots": 2}, BatchConfig())
    _check_manifest(out, {**run, "model": "other"}, BatchConfig(restart=True))
    (out / MANIFEST).write_text("{torn")  # unreadable: nothing to compare with, rewritten
    _check_manifest(out, run, BatchConfig())
    assert json.loads((out / MANIFEST).read_text()) == run


def test_a_large_jpeg_lot_is_judged_as_inspect_judges_each_file(tiny_copilot, tmp_path):
    """Large JPEG frames are decoded at the reduced scale the model needs, in the batch as by ``inspect``: the
    same scores and boxes (in the files' pixels), annotated at the reduced scale with the boxes scaled to it."""
    import numpy as np

    rng = np.random.default_rng(4)
    lot, refs = tmp_path / "lot", tmp_path / "refs"
    lot.mkdir()
    refs.mkdir()
    scene = np.kron(rng.random((9, 15, 3)), np.ones((100, 100, 1)))  # 900 x 1500, blocks of 100 px
    scene = (scene * 200 + rng.random(scene.shape) * 55).astype(np.uint8)  # and fine grain
    Image.fromarray(scene).save(refs / "good.jpg", quality=95)
    scene[200:600, 500:1000] = 0  # a large dark defect
    Image.fromarray(scene).save(lot / "bad.jpg", quality=95)
    run_batch(tiny_copilot, collect([lot]), [refs], tmp_path / "out", _cfg())
    rec = read_records(tmp_path / "out" / "results.jsonl")[0]
    want = tiny_copilot.inspect(lot / "bad.jpg", [refs / "good.jpg"])
    assert rec["image_size"] == [1500, 900] and rec["score"] == pytest.approx(want.score, abs=1e-5)
    assert [b["bbox_2d"] for b in rec["boxes"]] == [b.bbox_2d for b in want.boxes] and rec["boxes"]
    pic = Image.open(tmp_path / "out" / rec["annotated"])
    assert pic.size[0] < 1500 and pic.size[0] / pic.size[1] == pytest.approx(1500 / 900, rel=0.01)
    # The first box drawn where it lies, at the picture's scale: its red frame, not elsewhere.
    s = pic.size[0] / 1500
    x1, y1, x2, y2 = (round(v * s) for v in rec["boxes"][0]["bbox_2d"])
    px = np.asarray(pic.convert("RGB")).astype(int)
    red = (px[..., 0] > 180) & (px[..., 1] < 90) & (px[..., 2] < 90)
    assert red[y1:y2, x1:x1 + 3].mean() > 0.5  # the box's left edge
