"""``adcopilot eval``: bad input gives one line on stderr and exit status 2; scoring files works."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from adcopilot.cli import main


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def run(capsys):
    """Run ``adcopilot eval ...`` in this process (exit status, stdout, stderr)."""

    def _run(*args: str) -> Result:
        try:
            main(["eval", *args])
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        out = capsys.readouterr()
        return Result(code, out.out, out.err)

    return _run


def one_error_line(p: Result, *needles: str) -> None:
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    for n in needles:
        assert n in lines[0]


def test_input_errors(run, tmp_path, small_bench):
    one_error_line(run("mmad", "--benchmark", str(tmp_path / "absent.json")), "absent.json", "no such MMAD question file")
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    one_error_line(run("mmad", "--benchmark", str(bad)), "bad.json", "malformed JSON")
    one_error_line(run("mmad", "--benchmark", str(small_bench), "--scoring", "lenient"), "--scoring")
    one_error_line(run("mmad", "--benchmark", str(small_bench), "--backend", "gpt5"), "unknown backend 'gpt5'")
    one_error_line(run("mmad", "--benchmark", str(small_bench), "--task", "XY"), "unknown sub-task 'XY'")
    one_error_line(run("mmad", "--benchmark", str(small_bench), "--backend", "transformers"), "needs --model PATH")
    one_error_line(run("mmad-bbox", "--benchmark", str(small_bench), "--box-mode", "magic"), "--box-mode")
    one_error_line(run("mmad", "--benchmark", str(small_bench), "--answers", "oracle"), "--answers", "grounded or language")
    one_error_line(run("mmad", "--benchmark", str(small_bench), "--prior-weight", "3"), "--prior-weight")
    one_error_line(run("mmad", "--benchmark", str(small_bench), "--templates", "best"), "template mode")
    one_error_line(run("detect", "--benchmark", str(small_bench), "--k-shot", "-1"), "--k-shot")
    # A comparison model cannot answer without a reference: refused before the run, not an error per record.
    one_error_line(run("mmad", "--benchmark", str(small_bench), "--k-shot", "0", "--out", str(tmp_path / "k0")),
                   "--k-shot 0", "compares with normal references")
    assert not (tmp_path / "k0" / "answers.jsonl").exists()
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    one_error_line(run("detect", "--benchmark", str(small_bench), "--out", str(a_file / "run")),
                   f"{a_file / 'run'}: part of the path is a file, not a folder")


def test_score_an_answers_file(run, tmp_path):
    answers = tmp_path / "answers.jsonl"
    recs = [
        {"image": "D/c/test/good/0.png", "q": 0, "type": "Anomaly Detection", "gold": "B", "reply": "B",
         "options": {"A": "Yes.", "B": "No."}},
        {"image": "D/c/test/bad/1.png", "q": 0, "type": "Anomaly Detection", "gold": "A", "reply": "B. A hole.",
         "options": {"A": "Yes.", "B": "No."}},
    ]
    answers.write_text("".join(json.dumps(r) + "\n" for r in recs))
    p = run("score", str(answers), "--csv", str(tmp_path / "t.csv"), "--json", str(tmp_path / "t.json"))
    assert p.returncode == 0, p.stderr
    assert "scoring=official" in p.stdout
    assert json.loads((tmp_path / "t.json").read_text())["table"]["D"]["Anomaly Detection"] == 100.0  # "A" read
    p = run("score", str(answers), "--scoring", "strict", "--json", str(tmp_path / "s.json"))
    assert json.loads((tmp_path / "s.json").read_text())["table"]["D"]["Anomaly Detection"] == 50.0
    one_error_line(run("score", str(tmp_path / "none.jsonl")), "none.jsonl", "no such answers file")
    (tmp_path / "empty.jsonl").write_text("")
    one_error_line(run("score", str(tmp_path / "empty.jsonl")), "empty.jsonl: no answers in the file")


def test_real_layout_through_every_eval_command(run, tmp_path, real_bench):
    """A file in the real download's layout: no failed image in any command, scores = a hand count."""
    out = tmp_path / "mmad"
    p = run("mmad", "--benchmark", str(real_bench), "--backend", "baseline", "--out", str(out), "--quiet")
    assert p.returncode == 0, p.stderr
    meta = json.loads((out / "run.json").read_text())
    assert meta["questions"] == 16 and meta["failed"] == 0
    answers = [json.loads(x) for x in (out / "answers.jsonl").read_text().splitlines()]
    assert not any(a["error"] for a in answers)
    table = json.loads((out / "scores_official.json").read_text())["table"]
    # The baseline has no language model: an empty reply to the object question, which the
    # official parser maps to the closest option text; for "" every option ties at 0 and difflib
    # keeps the greatest string, "Screw." (D): right for the screw, wrong for the candle.
    assert table["DS-MVTec"]["Object Classification"] == 100.0
    assert table["VisA"]["Object Classification"] == 0.0
    for ds in ("DS-MVTec", "VisA"):  # balanced accuracy counted by hand from the replies
        ad = [a for a in answers if a["image"].startswith(ds) and a["type"] == "Anomaly Detection"]
        normal = [a["reply"] == a["gold"] for a in ad if "/good/" in a["image"]]
        anomalous = [a["reply"] == a["gold"] for a in ad if "/good/" not in a["image"]]
        assert len(normal) == len(anomalous) == 2
        hand = 100 * (sum(normal) / 2 + sum(anomalous) / 2) / 2
        assert table[ds]["Anomaly Detection"] == pytest.approx(hand)

    p = run("mmad-bbox", "--benchmark", str(real_bench), "--out", str(tmp_path / "bbox"), "--quiet")
    assert p.returncode == 0, p.stderr
    summary = json.loads((tmp_path / "bbox" / "bbox.json").read_text())
    assert summary["skipped"] == {"no_mask": 0, "bad_mask": 0}
    assert summary["overall"]["anomalous_images"] == 4 and summary["overall"]["normal_images"] == 4
    assert json.loads((tmp_path / "bbox" / "run.json").read_text())["failed"] == 0

    p = run("detect", "--benchmark", str(real_bench), "--out", str(tmp_path / "det"), "--quiet")
    assert p.returncode == 0, p.stderr
    result = json.loads((tmp_path / "det" / "detect.json").read_text())
    assert result["failed"] == 0
    overall = result["metrics"]["overall"]
    assert overall["images"] == 8 and overall["pixel_images"] == 8  # every mask found and read
