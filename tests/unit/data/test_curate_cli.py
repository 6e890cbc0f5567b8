"""``adcopilot curate`` and ``adcopilot curate check-leaks`` through the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "adcopilot", *args], capture_output=True, text=True)


def test_curate_runs_reports_skips_and_resumes(curate_tree, tmp_path):
    out = tmp_path / "out"
    args = ["curate", "-s", str(curate_tree / "mvtec"), "-s", f"labels:{curate_tree / 'cells'}",
            "-s", str(curate_tree / "unknown"), "-o", str(out), "--no-progress", "--workers", "1"]
    p = run(*args)
    assert p.returncode == 0, p.stderr
    assert "2 image(s) skipped" in p.stdout and "source skipped" in p.stdout and "card:" in p.stdout
    first = (out / "train.jsonl").read_bytes()
    p2 = run(*args)  # resumed: everything already done, same files
    assert p2.returncode == 0 and (out / "train.jsonl").read_bytes() == first
    p3 = run("curate", "check-leaks", str(curate_tree / "mvtec"), "--train", str(out), "--strict")
    assert p3.returncode == 2 and p3.stderr.strip().splitlines()[-1].startswith("error: ")
    card = json.loads((out / "card.json").read_text())
    assert card["by_task"]["caption"]


def test_curate_bad_input_is_one_line(tmp_path):
    p = run("curate", "-s", str(tmp_path / "absent"), "-o", str(tmp_path / "o"), "--no-progress")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines()[-1] == f"error: no usable source: {tmp_path / 'absent'}: no such source"
    p = run("curate", "-o", str(tmp_path / "o"))
    assert p.returncode == 2 and "--source" in p.stderr
    p = run("curate", "-s", str(tmp_path), "-o", str(tmp_path / "o"), "--task", "poetry")
    assert p.returncode == 2 and "unknown task" in p.stderr
    p = run("curate", "-s", str(tmp_path), "-o", str(tmp_path / "o"), "--variants", "-1")
    assert p.returncode == 2 and "--variants -1: must be 0 or more" in p.stderr
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    p = run("curate", "-s", str(tmp_path / "absent"), "-o", str(a_file), "--no-progress")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == [f"error: {a_file}: a file is there, not a folder"]


def test_a_run_with_no_usable_source_does_not_hold_the_folder(curate_tree, tmp_path):
    """A mistyped source leaves no settings behind that would refuse the corrected command."""
    out = tmp_path / "out"
    p = run("curate", "-s", str(tmp_path / "typo"), "-o", str(out), "--no-progress", "--workers", "1")
    assert p.returncode == 2 and "no usable source" in p.stderr
    p = run("curate", "-s", f"labels:{curate_tree / 'cells'}", "-o", str(out), "--no-progress", "--workers", "1")
    assert p.returncode == 0, p.stderr
    assert (out / "train.jsonl").exists()
