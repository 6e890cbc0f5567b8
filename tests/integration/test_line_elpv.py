"""The inspection line on real ELPV solar cells with the real vision weights: batch, calibrate, inspect."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from adcopilot.api import Copilot
from adcopilot.data.elpv import load_cells

from .conftest import run


def test_batch_cli_report_resume_and_shards(elpv_lot, tmp_path):
    out = tmp_path / "out"
    p = run("batch", str(elpv_lot / "lot"), "--refs", str(elpv_lot / "refs"), "--out", str(out),
            "--model", "baseline", "--json", "--quiet", home=tmp_path)
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["processed"] == 14 and [s["file"] for s in d["skipped"]] == ["defect/truncated.png"]
    assert "truncated image file" in d["skipped"][0]["reason"]
    t = d["summary"]["truth"]
    assert t["normal"] == 8 and t["defective"] == 6
    assert t["miss"] + t["confusion"]["tp"] == 6 and t["overkill"] + t["confusion"]["tn"] == 8
    recs = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    # The nearest reference is a cell of the same type (mono vs poly look very different).
    kinds = {c.name: c.kind for c in load_cells()}
    same = [kinds[os.path.basename(r["references"][0])] == kinds[os.path.basename(r["path"])] for r in recs]
    assert sum(same) >= 12, same
    assert all((out / r["annotated"]).exists() for r in recs)
    assert (out / "report.html").stat().st_size > 10_000
    again = json.loads(run("batch", str(elpv_lot / "lot"), "--refs", str(elpv_lot / "refs"), "--out", str(out),
                           "--model", "baseline", "--json", "--quiet", home=tmp_path).stdout)
    assert again["processed"] == 0 and again["done_before"] == 15 - 1
    # Two shards into another folder: together the same files and the same scores.
    out2 = tmp_path / "sharded"
    for i in (1, 2):
        p = run("batch", str(elpv_lot / "lot"), "--refs", str(elpv_lot / "refs"), "--out", str(out2), "--shard", f"{i}/2",
                "--model", "baseline", "--no-images", "--quiet", home=tmp_path)
        assert p.returncode == 0, p.stderr
    merged = json.loads((out2 / "summary.json").read_text())
    assert merged["inspected"] == 14
    import csv

    a = {r["file"]: float(r["score"]) for r in csv.DictReader((out / "results.csv").open())}
    b = {r["file"]: float(r["score"]) for r in csv.DictReader((out2 / "results.csv").open())}
    assert a.keys() == b.keys() and all(abs(a[k] - b[k]) < 1e-5 for k in a)  # deterministic


def test_batch_cli_errors_are_one_line(tmp_path):
    p = run("batch", str(tmp_path), "--refs", str(tmp_path / "none"), "--model", "baseline", "--shard", "3/2", home=tmp_path)
    assert p.returncode == 2 and p.stderr.startswith("error: --shard '3/2'") and "Traceback" not in p.stderr
    p = run("batch", str(tmp_path), "--refs", str(tmp_path / "none"), "--model", "baseline", "--out", str(tmp_path / "o"),
            home=tmp_path)
    assert p.returncode == 2 and "none: no such reference folder or image" in p.stderr


def test_calibrate_stores_the_threshold_that_inspect_uses(elpv_lot, tmp_path):
    home = tmp_path / "home"
    p = run("calibrate", "--normals", str(elpv_lot / "calib" / "good"), "--defects", str(elpv_lot / "calib" / "defect"),
            "--refs", str(elpv_lot / "refs"), "--miss-cost", "5", "--false-alarm-cost", "1", "--model", "baseline",
            "--out", str(tmp_path / "cal"), "--json", "--quiet", home=home)
    assert p.returncode == 0, p.stderr
    cal = json.loads(p.stdout)
    assert cal["saved"] == str(home / "calibration" / "baseline.json")
    assert cal["metrics"]["n_normal"] == 16 and cal["metrics"]["n_defective"] == 10
    assert (tmp_path / "cal" / "roc.png").exists() and (tmp_path / "cal" / "cost.png").exists()
    # Least expected cost: never worse than the model's own threshold on the same scores.
    recs = [json.loads(x) for x in (tmp_path / "cal" / "results.jsonl").read_text().splitlines()]

    def cost(t: float) -> float:
        fn = sum(r["score"] < t for r in recs if r["truth"] == "defective")
        fp = sum(r["score"] >= t for r in recs if r["truth"] == "normal")
        return (5 * fn + fp) / len(recs)

    assert cal["expected_cost"] == pytest.approx(cost(cal["threshold"]))
    assert cost(cal["threshold"]) <= cost(cal["model_threshold"])
    q, ref = elpv_lot / "lot" / "defect", elpv_lot / "refs"
    query = sorted(q.glob("cell*.png"))[0]
    refimg = sorted(ref.glob("*.png"))[0]
    used = json.loads(run("inspect", str(query), "--ref", str(refimg), "--model", "baseline", "--json", home=home).stdout)
    assert used["threshold"] == pytest.approx(cal["threshold"])
    forced = json.loads(run("inspect", str(query), "--ref", str(refimg), "--model", "baseline", "--threshold", "0.9",
                            "--json", home=home).stdout)
    assert forced["threshold"] == 0.9
    # A specific calibration file wins over the stored one.
    other = tmp_path / "strict.json"
    other.write_text(json.dumps({**{k: v for k, v in cal.items() if k not in ("saved", "charts")}, "threshold": 0.123}))
    chosen = json.loads(run("inspect", str(query), "--ref", str(refimg), "--model", "baseline", "--calibration", str(other),
                            "--json", home=home).stdout)
    assert chosen["threshold"] == pytest.approx(0.123)


def test_calibrate_from_batch_results_and_bad_input(elpv_lot, tmp_path):
    out = tmp_path / "out"
    assert run("batch", str(elpv_lot / "calib"), "--refs", str(elpv_lot / "refs"), "--out", str(out), "--model", "baseline",
               "--no-images", "--quiet", home=tmp_path).returncode == 0
    p = run("calibrate", "--results", str(out), "--target-miss-rate", "0.2", "--model", "baseline", "--dry-run",
            "--out", str(tmp_path / "c"), "--json", home=tmp_path)
    assert p.returncode == 0, p.stderr
    cal = json.loads(p.stdout)
    assert cal["saved"] is None and cal["metrics"]["miss"] <= 0.2
    p = run("calibrate", "--normals", str(elpv_lot / "calib" / "good"), "--model", "baseline", home=tmp_path)
    assert p.returncode == 2 and "needs --normals and --defects" in p.stderr and "--target-false-alarm-rate" in p.stderr


def test_calibrate_from_normal_images_only(elpv_lot, tmp_path):
    p = run("calibrate", "--normals", str(elpv_lot / "calib" / "good"), "--refs", str(elpv_lot / "refs"),
            "--target-false-alarm-rate", "0.1", "--model", "baseline", "--out", str(tmp_path / "c"), "--json", "--quiet",
            home=tmp_path)
    assert p.returncode == 0, p.stderr
    cal = json.loads(p.stdout)
    assert cal["metrics"]["n_defective"] == 0 and cal["metrics"]["miss"] is None
    recs = [json.loads(x) for x in (tmp_path / "c" / "results.jsonl").read_text().splitlines()]
    flagged = sum(r["score"] >= cal["threshold"] for r in recs)
    assert flagged <= 0.1 * len(recs) and cal["metrics"]["confusion"]["fp"] == flagged
    # The most sensitive such threshold: just below it, more than 10 % of the normals would be flagged.
    below = max(r["score"] for r in recs if r["score"] < cal["threshold"])
    assert sum(r["score"] >= below for r in recs) > 0.1 * len(recs)
    assert cal["metrics"]["overkill_upper95"] > cal["metrics"]["overkill"]
    assert (tmp_path / "c" / "false-alarms.png").exists() and cal["saved"]


def test_batch_names_a_black_frame_and_a_foreign_photo_filed_among_real_references(tmp_path):
    from PIL import Image
    from skimage import data

    mono = [c for c in load_cells() if c.kind == "mono" and c.probability == 0.0]
    refs, lot = tmp_path / "refs", tmp_path / "lot"
    refs.mkdir()
    lot.mkdir()
    for c in mono[:6]:
        shutil.copyfile(c.path, refs / c.name)
    for c in mono[6:8]:
        shutil.copyfile(c.path, lot / c.name)
    Image.new("RGB", (300, 300)).save(refs / "black.png")
    Image.fromarray(data.gravel()).save(refs / "gravel.png")
    p = run("batch", str(lot), "--refs", str(refs), "--out", str(tmp_path / "out"), "--quiet", "--no-images",
            home=tmp_path)
    assert p.returncode == 0, p.stderr
    named = sorted(line.split(":")[0] for line in p.stdout.splitlines() if line.startswith("  look at "))
    assert named == ["  look at reference black.png", "  look at reference gravel.png"], p.stdout
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["reference_check"]["checked"] == 8 and len(summary["reference_check"]["named"]) == 2
    p = run("batch", str(lot), "--refs", str(refs), "--out", str(tmp_path / "unchecked"), "--quiet", "--no-images",
            "--no-check-refs", home=tmp_path)
    assert p.returncode == 0 and "look at" not in p.stdout, p.stdout + p.stderr


def test_tolerance_sheet_of_real_cells_matches_what_inspect_says(elpv_lot, tmp_path):
    refs = sorted((elpv_lot / "refs").iterdir())[:2]  # two of the normal references
    p = run("tolerance", "--good", str(elpv_lot / "lot" / "good"), "--defects", str(elpv_lot / "lot" / "defect"),
            "--refs", *[str(r) for r in refs[:1]], "--refs", str(refs[1]), "-c", "gain 1.25", "-c", "shift 5 %",
            "--json", "--quiet", home=tmp_path)
    assert p.returncode == 0, p.stderr
    sheet = json.loads(p.stdout)
    assert [r["condition"] for r in sheet["rows"]] == ["as taken", "gain 1.25", "window 84 %", "shift 5 %"]
    assert (sheet["good"], sheet["defective"], sheet["references"]) == (8, 6, 2)
    assert len(sheet["skipped"]) == 1 and "truncated.png: truncated image file" in sheet["skipped"][0]
    # The images as taken: exactly the verdicts `inspect` gives them at the model's own threshold.
    cp = Copilot.load()
    goods = sorted((elpv_lot / "lot" / "good").iterdir())
    flagged = [cp.inspect(g, refs).verdict == "anomalous" for g in goods]
    assert sheet["rows"][0]["false_alarms"] == pytest.approx(sum(flagged) / len(goods))
    assert sheet["threshold"] == pytest.approx(cp.threshold_for(refs))
    assert 0.5 <= sheet["rows"][0]["auroc"] <= 1.0
