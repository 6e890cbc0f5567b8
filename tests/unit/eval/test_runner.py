"""Resumable runs: answers appended as they arrive, re-runs skip them, failures recorded and retried."""

from __future__ import annotations

import json
import shutil

import pytest

from adcopilot.api import Copilot
from adcopilot.errors import AdcopilotError
from adcopilot.eval.backends import CopilotBackend
from adcopilot.eval.bbox import summarize_bbox
from adcopilot.eval.mmad import load_mmad
from adcopilot.eval.runner import JsonlLog, run_bbox, run_detect, run_mmad
from adcopilot.eval.scoring import score
from adcopilot.model.baseline import NearestPatchDetector
from adcopilot.model.vision import load_vision_tower


@pytest.fixture(scope="module")
def backend() -> CopilotBackend:
    detector = NearestPatchDetector(tower=load_vision_tower(pretrained=False), image_size=64, threshold=1e-4)
    return CopilotBackend("baseline", copilot=Copilot(detector, registration=False))


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_resume_asks_only_new_questions(backend, small_bench, tmp_path):
    bench = load_mmad(small_bench)
    out = tmp_path / "run"
    first = run_mmad(bench, bench.select(tasks=["AD"]), backend, out, progress=False)
    assert len(first) == 10 and len(lines(out / "answers.jsonl")) == 10
    second = run_mmad(bench, bench.items, backend, out, progress=False)
    recs = lines(out / "answers.jsonl")
    assert len(second) == bench.n_questions == len(recs)  # nothing asked twice
    assert len({(r["image"], r["q"]) for r in recs}) == len(recs)
    meta = json.loads((out / "run.json").read_text())
    assert meta["resumed"] and meta["identity"]["k_shot"] == 1 and meta["questions"] == bench.n_questions
    assert [r.image for r in second] == sorted((r.image for r in second), key=lambda k: list(json.loads(small_bench.read_text())).index(k))


def test_torn_last_line_is_redone(backend, small_bench, tmp_path):
    bench = load_mmad(small_bench)
    out = tmp_path / "run"
    run_mmad(bench, bench.items[:2], backend, out, progress=False)
    path = out / "answers.jsonl"
    text = path.read_text()
    path.write_text(text[: len(text) - 25])  # interrupted in the middle of the last record
    assert len(JsonlLog(path).load()) == len(text.splitlines()) - 1
    records = run_mmad(bench, bench.items[:2], backend, out, progress=False)
    assert len(records) == sum(len(i.questions) for i in bench.items[:2])
    assert len(JsonlLog(path).load()) == len(text.splitlines())  # exactly the torn one asked again


def test_bad_files_are_recorded_and_retried(backend, small_bench, tmp_path):
    bench = load_mmad(small_bench)
    item = bench.items[1]
    img = bench.query(item)
    shutil.move(img, tmp_path / "aside.png")
    out = tmp_path / "run"
    records = run_mmad(bench, bench.items[:3], backend, out, progress=False)
    failed = [r for r in records if r.error]
    assert {r.image for r in failed} == {item.key} and "001.png" in failed[0].error
    strict = score(records, "strict")
    assert strict.n_errors == len(failed) and strict.n_counted == len(records)
    shutil.move(tmp_path / "aside.png", img)
    again = run_mmad(bench, bench.items[:3], backend, out, progress=False)
    assert not any(r.error for r in again)


def test_a_folder_of_another_run_is_refused(backend, small_bench, tmp_path):
    bench = load_mmad(small_bench)
    run_mmad(bench, bench.items[:1], backend, tmp_path / "run", progress=False)
    with pytest.raises(AdcopilotError, match="holds a different run.*k_shot: 1 -> 2"):
        run_mmad(bench, bench.items[:1], backend, tmp_path / "run", k_shot=2, progress=False)


def test_bbox_and_detect_runs(backend, small_bench, tmp_path):
    bench = load_mmad(small_bench)
    records, skipped = run_bbox(bench, bench.items, backend, tmp_path / "bbox", progress=False)
    assert len(records) == 10 and skipped == {"no_mask": 0, "bad_mask": 0}
    summary = summarize_bbox(records)["overall"]
    assert summary["anomalous_images"] == 6 and summary["normal_images"] == 4
    assert summary["mIoU"] > 0 and summary["false_alarms"] == 0
    result = run_detect(bench, bench.items, backend, tmp_path / "det", progress=False)
    m = result["metrics"]["overall"]
    assert m["auroc"] == 1.0 and m["balanced_accuracy"] == 1.0 and m["images"] == 10
    assert m["pixel_auroc"] > 0.8 and 0 < m["pro"] <= 1
    assert set(result["metrics"]) == {"overall", "DSA", "DSB"}
    n_maps = len(list((tmp_path / "det" / "maps").glob("*.npy")))
    again = run_detect(bench, bench.items, backend, tmp_path / "det", progress=False)
    assert again["metrics"] == result["metrics"] and n_maps == 10
    assert len(lines(tmp_path / "det" / "scores.jsonl")) == 10  # nothing recomputed
