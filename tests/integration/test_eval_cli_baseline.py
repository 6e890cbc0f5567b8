"""``adcopilot eval`` end to end with the real baseline weights on a few images of the bundled benchmark."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("home")


def run(home, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, ADCOPILOT_HOME=str(home))
    return subprocess.run([sys.executable, "-m", "adcopilot", "eval", *args, "--quiet"],
                          capture_output=True, text=True, env=env)


def test_mmad_bbox_detect_on_the_bundle(home, tmp_path):
    out = tmp_path / "mmad"
    p = run(home, "mmad", "--benchmark", "bundled", "--backend", "baseline", "--limit", "8", "--out", str(out))
    assert p.returncode == 0, p.stderr
    assert "ELPV" in p.stdout and "HeldOut-Photos" in p.stdout and "scoring=official" in p.stdout
    for name in ("scores_official.csv", "scores_official.json", "scores_strict.csv", "scores_strict.json", "run.json"):
        assert (out / name).is_file()
    n = len((out / "answers.jsonl").read_text().splitlines())
    meta = json.loads((out / "run.json").read_text())
    assert meta["backend"]["name"] == "baseline" and meta["questions"] == n and meta["failed"] == 0
    again = run(home, "mmad", "--benchmark", "bundled", "--backend", "baseline", "--limit", "8", "--out", str(out),
                "--scoring", "strict")
    assert again.returncode == 0 and "scoring=strict" in again.stdout
    assert len((out / "answers.jsonl").read_text().splitlines()) == n  # resumed: nothing asked twice

    p = run(home, "mmad-bbox", "--dataset", "HeldOut-Photos", "--limit", "6", "--out", str(tmp_path / "bbox"))
    assert p.returncode == 0, p.stderr
    summary = json.loads((tmp_path / "bbox" / "bbox.json").read_text())["overall"]
    assert summary["anomalous_images"] + summary["normal_images"] == 6 and summary["mIoU"] is not None

    p = run(home, "detect", "--limit", "8", "--out", str(tmp_path / "det"))
    assert p.returncode == 0, p.stderr
    metrics = json.loads((tmp_path / "det" / "detect.json").read_text())["metrics"]
    assert metrics["overall"]["images"] == 8 and metrics["overall"]["auroc"] is not None
