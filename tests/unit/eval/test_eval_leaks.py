"""Evaluation's leak guard: a test image found in a curated training set is reported, and
``--strict`` refuses to evaluate (before any model is loaded)."""

from __future__ import annotations

import json
import subprocess
import sys

from adcopilot.data.leak import content_hash, write_manifest


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "adcopilot", "eval", *args], capture_output=True, text=True)


def test_strict_refuses_a_leaked_test_image(small_bench, tmp_path):
    data = json.loads(small_bench.read_text())
    leaked = small_bench.parent / next(iter(data))  # the first query image of the benchmark
    train = tmp_path / "curated"
    train.mkdir()
    write_manifest(train, {content_hash(leaked): {"split": "train", "path": "synthetic/x.png"}})
    p = _run("detect", "--benchmark", str(small_bench), "--train-set", str(train), "--strict", "--backend", "baseline")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "test image was in training set" in p.stderr and leaked.name in p.stderr


def test_clean_train_set_passes_the_check(small_bench, tmp_path):
    from adcopilot.commands.eval_cmd import _leak_check
    from adcopilot.eval.mmad import load_mmad

    train = tmp_path / "curated"
    train.mkdir()
    write_manifest(train, {"0" * 16: {"split": "train", "path": "other.png"}})
    bench = load_mmad(small_bench)
    _leak_check(bench, bench.items, [train], strict=True)  # no leak: no error
