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
