"""The line's commands: bad arguments give one line on stderr and exit status 2, before any model loads.

The cases run the command line in this process (a fresh interpreter per case cost seconds of imports
each); one runs through ``python -m adcopilot`` to pin the real entry point's exit status and output.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys

import pytest

from adcopilot.cli import main

BAD_SHARD = (["batch", "lot", "--refs", "refs", "--shard", "0/2"], "error: --shard '0/2': i must be between 1 and n")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        BAD_SHARD,
        (["calibrate", "--normals", "good"], "error: calibration needs --normals and --defects"),
        (["calibrate", "--results", "nowhere"], "error: nowhere: no such batch folder"),
        (["calibrate", "--normals", "good", "--target-false-alarm-rate", "1.5"], "error: --target-false-alarm-rate must be in [0, 1)"),
        (["calibrate", "--normals", "good", "--target-false-alarm-rate", "0.1", "--target-miss-rate", "0.1"],
         "error: give --target-miss-rate or --target-false-alarm-rate, not both"),
        (["serve", "--port", "70000"], "error: --port 70000: not a TCP port"),
        (["serve", "--threshold", "inf"], "error: --threshold: must be a finite number, got inf"),
        (["serve", "--request-timeout", "nan"], "error: --request-timeout: must be a finite number, got nan"),
        (["serve", "--request-timeout", "0"], "error: --request-timeout must be positive, got 0.0"),
        (["serve", "--workers", "0"], "error: --workers must be at least 1, got 0"),
        (["serve", "--max-batch", "0"], "error: --max-batch must be at least 1, got 0"),
        (["serve", "--batch-window-ms", "nan"], "error: --batch-window-ms: must be a finite number, got nan"),
        (["serve", "--batch-window-ms", "-1"], "error: --batch-window-ms must be 0 or more, got -1.0"),
        (["serve", "--max-queue", "-1"], "error: --max-queue must be 0 (no bound) or more, got -1"),
        (["batch", "lot", "--refs", "refs", "--threshold", "nan"], "error: --threshold: must be a finite number, got nan"),
        (["batch", "lot", "--refs", "refs", "--engine", "spark"], "error: --engine 'spark': use local or ray"),
        (["batch", "lot", "--refs", "refs", "--address", "127.0.0.1:6379"], "error: --address and --actors need --engine ray"),
        (["batch", "lot", "--refs", "refs", "--engine", "ray", "--actors", "0"], "error: --actors must be at least 1, got 0"),
        (["batch", "lot", "--refs", "refs", "--chunk", "0"], "error: --chunk must be at least 1, got 0"),
        (["batch", "lot"], "error: give normal references with --refs, or score the lot against itself with --mutual"),
        (["batch", "lot", "--mutual", "--engine", "ray"], "error: --mutual needs --engine local"),
        (["batch", "lot", "--mutual", "--mutual-k", "nan"], "error: --mutual-k: must be a finite number, got nan"),
        (["batch", "lot", "--refs", "refs", "--mutual-k", "2"], "error: --mutual-k needs --mutual"),
        (["batch", "lot", "--lot-refs", "3"], "error: --lot-refs needs --mutual, no --refs"),
        (["batch", "lot", "--mutual", "--refs", "refs", "--lot-refs", "3"], "error: --lot-refs needs --mutual, no --refs"),
        (["batch", "lot", "--mutual", "--lot-refs", "-1"], "error: --lot-refs needs --mutual, no --refs (the references "
         "are the lot's own) and a positive count, got -1"),
        (["batch", "lot", "--aligned"], "error: --aligned needs --mutual and no --refs"),
        (["batch", "lot", "--mutual", "--refs", "refs", "--aligned"], "error: --aligned needs --mutual and no --refs"),
        (["inspect", "q.png", "--ref", "r.png", "--threshold", "-inf"], "error: --threshold: must be a finite number"),
        (["calibrate", "--normals", "good", "--defects", "bad", "--refs", "refs", "--miss-cost", "nan"],
         "error: --miss-cost: must be a finite number, got nan"),
        (["calibrate", "--results", "out", "--prevalence", "inf"], "error: --prevalence: must be a finite number"),
        # Out of range: refused before any image is scored (the folders here do not even exist).
        (["calibrate", "--normals", "good", "--defects", "bad", "--refs", "refs", "--miss-cost", "-3"],
         "error: --miss-cost and --false-alarm-cost must be >= 0 and not both 0"),
        (["calibrate", "--normals", "good", "--defects", "bad", "--refs", "refs", "--miss-cost", "0",
          "--false-alarm-cost", "0"], "error: --miss-cost and --false-alarm-cost must be >= 0 and not both 0"),
        (["calibrate", "--normals", "good", "--defects", "bad", "--refs", "refs", "--prevalence", "2"],
         "error: --prevalence must be between 0 and 1 (exclusive), got 2.0"),
        (["calibrate", "--results", "out", "--prevalence", "0"], "error: --prevalence must be between 0 and 1 (exclusive)"),
        (["tolerance", "--refs", "refs"], "error: --good is needed: images of good parts"),
        (["tolerance", "--good", "good"], "error: no normal references given (--refs)"),
        (["tolerance", "--good", "good", "--refs", "refs"], "error: refs: no such reference folder or image"),
        (["tolerance", "--good", "good", "--refs", "refs", "-c", "fog"], "error: unknown condition 'fog'; choose from as taken"),
        (["tolerance", "--good", "good", "--refs", "refs", "--shots", "0"], "error: --shots must be at least 1, got 0"),
    ],
)
def test_bad_arguments(args, message, tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(message), err
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # nothing else said on stderr


def test_a_bad_argument_through_the_console_entry_point(tmp_path):
    args, message = BAD_SHARD
    p = subprocess.run([sys.executable, "-m", "adcopilot", *args], capture_output=True, text=True, timeout=120,
                       cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(message) and "Traceback" not in p.stderr


def test_serve_on_a_taken_port_or_an_unknown_host_says_so_before_loading(capsys):
    """Another server on the port (or a mistyped host) is one line naming it, not the model loaded and
    uvicorn's own log line after a banner saying the service is up."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as exit_info:
            main(["serve", "--port", str(port), "--model", "baseline"])
    assert exit_info.value.code == 2
    out = capsys.readouterr()
    assert out.err.strip() == f"error: --host 127.0.0.1 --port {port}: already in use (another server?)"
    assert "serving" not in out.out
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--host", "no-such-host.invalid", "--port", str(port)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("error: --host no-such-host.invalid: not an address of this machine")
