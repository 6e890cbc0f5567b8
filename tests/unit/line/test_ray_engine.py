"""The Ray engine's parts that run without starting Ray: an actor inspecting blocks of queries and
the driver writing them give the local engine's records, pictures and skipped list; an actor with
another model is refused; an actor's bad-input error is found inside Ray's wrapping; without Ray,
``--engine ray`` is one line naming the extra. (A real local Ray runs in the integration suite.)"""

from __future__ import annotations

import csv
import importlib.util
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from adcopilot.errors import AdcopilotError
from adcopilot.line.batch import BatchConfig, ResultWriter, finish_batch, plan_batch, read_records, run_batch
from adcopilot.line.ray_engine import NO_RAY, InspectWorker, query_rows, user_error, write_block
from adcopilot.line.sources import collect

from .conftest import texture


def _as_batch(rows: list[dict]) -> dict[str, np.ndarray]:
    """Rows as the column arrays Ray Data hands a numpy-format ``map_batches`` function."""
    return {k: np.array([r[k] for r in rows], dtype=np.int64 if k == "index" else object) for k in rows[0]}


def _without_time(records: list[dict]) -> dict[str, dict]:
    return {r["file"]: {k: v for k, v in r.items() if k != "time_ms"} for r in records}


def test_actor_blocks_give_the_local_engine_outputs(tiny_copilot, lot, tmp_path):
    # A file name that is not valid UTF-8 must cross the dataset (as bytes) and come back whole.
    Image.fromarray(texture(0)).save(lot["lot"] / "good" / os.fsdecode(b"pi\xe8ce-\xff.png"))
    items = collect([lot["lot"]])
    local_out, ray_out = tmp_path / "local", tmp_path / "ray"
    run_batch(tiny_copilot, items, [lot["refs"]], local_out, BatchConfig(progress=False))

    cfg = BatchConfig(progress=False, chunk=3)
    plan = plan_batch(tiny_copilot, items, [lot["refs"]], ray_out, cfg)
    worker = InspectWorker(lambda: tiny_copilot, plan.bank, cfg, plan.need_select,
                           (tiny_copilot.model_name, tiny_copilot.threshold))
    rows = query_rows(plan.todo)
    blocks = [rows[i : i + 3] for i in range(0, len(rows), 3)]
    with ResultWriter(plan) as writer:
        for block in reversed(blocks):  # blocks come back in any order
            write_block(plan, writer, worker(_as_batch(block)))
    summary = finish_batch(plan, cfg, 1.0)

    local, remote = read_records(local_out / "results.jsonl"), read_records(ray_out / "results.jsonl")
    assert len(remote) == summary.processed == 8
    assert _without_time(remote) == _without_time(local)
    assert os.fsdecode(b"good/pi\xe8ce-\xff.png") in _without_time(remote)
    for r in remote:  # the same pictures, byte for byte
        for kind in ("annotated", "thumb"):
            assert (ray_out / r[kind]).read_bytes() == (local_out / r[kind]).read_bytes()
    skipped = [list(csv.reader((d / "skipped.csv").open())) for d in (local_out, ray_out)]
    assert skipped[0] == skipped[1] and [row[0] for row in skipped[1][1:]] == ["defect/broken.png"]
    assert (ray_out / "report.html").exists() and (ray_out / "summary.json").exists()


def test_an_actor_with_another_model_is_refused(tiny_copilot, lot):
    cfg = BatchConfig(progress=False)
    plan = plan_batch(tiny_copilot, collect([lot["lot"]]), [lot["refs"]], lot["out"], cfg)
    with pytest.raises(AdcopilotError, match=r"an actor loaded model tiny with threshold .* the driver tiny with threshold"):
        InspectWorker(lambda: tiny_copilot, plan.bank, cfg, plan.need_select, ("tiny", tiny_copilot.threshold + 0.1))


class _RayError(Exception):
    """Stands for Ray's base error class (Ray itself is not started in the unit suite)."""


def test_the_users_error_is_found_inside_the_wrapping():
    original = AdcopilotError("/lot/a.png: not an image file")
    # Ray re-raises an actor's error as a class deriving from both its error and the original's class ...
    dual = type("RayTaskError(AdcopilotError)", (_RayError, AdcopilotError), {})("traceback ... many lines")
    dual.cause = original
    # ... and Ray Data wraps that again.
    try:
        try:
            raise dual
        except _RayError as exc:
            raise RuntimeError("execution failed") from exc
    except RuntimeError as outer:
        found = user_error(outer, _RayError)
    assert type(found) is AdcopilotError and str(found) == "/lot/a.png: not an image file"
    assert user_error(RuntimeError("a worker died"), _RayError) is None
    # A node whose Python has no adcopilot (or an older one): Ray reports the worker's import error.
    found = user_error(_RayError("System error: No module named 'adcopilot.line.ray_engine'\ntraceback: ..."), _RayError)
    assert str(found).startswith("a Ray worker cannot import adcopilot.line.ray_engine: install this adcopilot")
    assert user_error(_RayError("No module named 'pandas'"), _RayError) is None


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray is not installed (pip install 'adcopilot[ray]')")
def test_a_cluster_address_where_nothing_answers_is_one_line(lot):
    with socket.socket() as s:  # a local port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = subprocess.run([sys.executable, "-m", "adcopilot", "batch", str(lot["lot"]), "--refs", str(lot["refs"]),
                        "--out", str(lot["out"]), "--engine", "ray", "--address", f"127.0.0.1:{port}"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip() == f"error: --address 127.0.0.1:{port}: no Ray cluster answers there (Connection refused)"
    assert not lot["out"].exists()  # refused before anything was written


def test_engine_ray_without_ray_is_one_line(tmp_path):
    # Ray made unimportable in this process only, as on a machine without the extra.
    code = "import sys; sys.modules['ray'] = None; from adcopilot.cli import main; main()"
    p = subprocess.run([sys.executable, "-c", code, "batch", "lot", "--refs", "refs", "--engine", "ray"],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip() == f"error: {NO_RAY}" and "adcopilot[ray]" in p.stderr

