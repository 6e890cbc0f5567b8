"""``batch --engine ray`` on a local two-CPU Ray with the real vision weights: the local engine's
records (verdicts, scores, references, boxes), pictures and skipped list, and a resume after the
run was killed part-way that loses and repeats nothing."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from adcopilot.line.batch import read_records

from .conftest import run

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None, reason="Ray is not installed (the optional extra: pip install 'adcopilot[ray]')"
)

QUERIES = 14  # readable files in the lot (a 15th is truncated)


def _kill_part_way(cmd: list[str], home, results) -> list[dict]:
    """Start the batch, SIGKILL it (and the local Ray it started) once two records are written."""
    env = {**os.environ, "ADCOPILOT_HOME": str(home)}
    p = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 150
    try:
        while time.monotonic() < deadline and p.poll() is None:
            if results.exists() and len(read_records(results)) >= 2:
                break
            time.sleep(0.05)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        _, err = p.communicate()
    assert p.returncode == -signal.SIGKILL, f"finished or failed before the kill: {err.decode(errors='replace')}"
    return read_records(results)


def test_ray_engine_gives_the_local_records_and_resumes_after_a_kill(elpv_lot, tmp_path):
    lot = [str(elpv_lot / "lot"), "--refs", str(elpv_lot / "refs"), "--model", "baseline", "--quiet"]
    local_out, out = tmp_path / "local", tmp_path / "ray"
    p = run("batch", *lot, "--out", str(local_out), home=tmp_path)
    assert p.returncode == 0, p.stderr

    # One query per block: records come back, and are written, one at a time.
    ray_args = ["--out", str(out), "--engine", "ray", "--actors", "2", "--chunk", "1"]
    killed = _kill_part_way([sys.executable, "-m", "adcopilot", "batch", *lot, *ray_args], tmp_path,
                            out / "results.jsonl")
    assert 2 <= len(killed) < QUERIES

    p = run("batch", *lot, *ray_args, "--json", home=tmp_path)
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert (d["done_before"], d["processed"]) == (len(killed), QUERIES - len(killed))
    assert [s["file"] for s in d["skipped"]] == ["defect/truncated.png"]
    assert "truncated image file" in d["skipped"][0]["reason"]

    records = read_records(out / "results.jsonl")
    assert len(records) == QUERIES  # nothing lost, nothing inspected twice
    local = {r["file"]: r for r in read_records(local_out / "results.jsonl")}
    remote = {r["file"]: r for r in records}
    assert remote.keys() == local.keys()
    for k, r in remote.items():
        assert r["verdict"] == local[k]["verdict"] and r["score"] == pytest.approx(local[k]["score"], abs=1e-5), k
        assert r["references"] == local[k]["references"] and r["boxes"] == local[k]["boxes"], k
        assert (out / r["annotated"]).stat().st_size > 0 and (out / r["thumb"]).stat().st_size > 0
    assert d["summary"]["truth"] == json.loads((local_out / "summary.json").read_text())["truth"]
    assert list(csv.reader((out / "skipped.csv").open())) == list(csv.reader((local_out / "skipped.csv").open()))
    assert (out / "report.html").stat().st_size > 10_000


def test_a_calibration_made_with_two_references_leaves_a_one_reference_lot_the_models_threshold(elpv_lot, tmp_path):
    """The default model scores one reference and two on different scales: a calibration fitted with two does
    not serve a one-reference lot, and the actors, handed the driver's threshold for the lot's count, agree."""
    cal = tmp_path / "cal.json"
    cal.write_text(json.dumps({"model": "nano", "threshold": 0.61, "shots": 2}))
    out = tmp_path / "ray"
    p = run("batch", str(elpv_lot / "lot"), "--refs", str(elpv_lot / "refs"), "--calibration", str(cal), "--out",
            str(out), "--engine", "ray", "--actors", "1", "--quiet", "--json", home=tmp_path)
    assert p.returncode == 0, p.stderr
    records = read_records(out / "results.jsonl")
    assert len(records) == QUERIES and {r["threshold"] for r in records} == {0.5}  # the model's own for one
    assert json.loads((out / "batch.json").read_text())["threshold"] == 0.5
