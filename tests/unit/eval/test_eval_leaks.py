"""Evaluation's leak guard: a test image found in a curated training set is reported, and
``--strict`` refuses to evaluate (before any model is loaded)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from adcopilot.data.leak import LeakError, check_leaks, content_hash, write_manifest
from adcopilot.eval.mmad import load_mmad


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


def test_only_training_splits_count_and_a_leak_without_strict_is_reported(small_bench, tmp_path):
    bench = load_mmad(small_bench)
    images = [bench.resolve(i.image_path) for i in bench.items]
    leaked = images[0]
    clean, val_only, dirty = (tmp_path / name for name in ("clean", "val-only", "dirty"))
    for folder in (clean, val_only, dirty):
        folder.mkdir()
    write_manifest(clean, {"0" * 16: {"split": "train", "path": "other.png"}})
    write_manifest(val_only, {content_hash(leaked): {"split": "val", "path": "held-out.png"}})
    write_manifest(dirty, {content_hash(leaked): {"split": "train", "path": "synthetic/x.png"}})
    assert check_leaks(images, [clean], strict=True) == []  # nothing in common: no error
    assert check_leaks(images, [val_only], strict=True) == []  # a held-out copy is no leak
    leaks = check_leaks(images, [clean, dirty], strict=False)
    same_pixels = {p for p in images if content_hash(p) == content_hash(leaked)}  # the leaked image's copies
    assert {Path(x.image) for x in leaks} == same_pixels and leaked in same_pixels
    assert {(x.train_path, Path(x.train_set)) for x in leaks} == {("synthetic/x.png", dirty)}
    with pytest.raises(LeakError, match="synthetic/x.png"):
        check_leaks(images, [dirty], strict=True)
