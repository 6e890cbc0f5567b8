"""The nano model's stages under ``accelerate launch`` with two processes (CPU, gloo).

The launcher, trainer, data workers and checkpoint code that several GPUs run: stage 1 with a tiny model
on the real frozen tower, stage 2 with the real language model on a tiny data set. Both processes must
take part (one log, world size 2), the run must finish and export a model that loads.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import yaml

from adcopilot.model.nano import NanoComparisonModel

TINY = {"image_size": 64, "width": 32, "num_heads": 4, "mlp_hidden": 48, "num_queries": 4, "out_width": 24,
        "head_hidden": 8}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(args: list[str]) -> subprocess.CompletedProcess:
    launcher = Path(sys.executable).parent / "accelerate"
    cmd = [str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           "-m", "adcopilot", "train", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)


def test_two_process_stage1_run(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({
        "stage": 1, "seed": 0, "steps": 6, "batch_size": 2, "lr": 1e-3, "warmup_steps": 1, "checkpoint_every": 3,
        "log_every": 2, "eval_every": 0, "eval_pairs": 4, "num_workers": 1, "model": TINY,
        "data": {"train_size": 64},
    }))
    out = tmp_path / "run"
    p = _launch(["--stage", "1", "--config", str(cfg), "--run-dir", str(out)])
    assert p.returncode == 0, p.stderr[-3000:]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [2, 4, 6]
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["world_size"] == 2 and state["step"] == 6
    model = NanoComparisonModel.load(out / "final")
    assert model.cfg.width == 32


def test_two_process_stage2_run(tmp_path):
    from adcopilot.model.checkpoint_kind import DEFAULT_CHECKPOINT

    cfg = tmp_path / "s2.yaml"
    cfg.write_text(yaml.safe_dump({
        "stage": 2, "seed": 0, "steps": 4, "batch_size": 2, "lr": 1e-3, "warmup_steps": 1, "checkpoint_every": 2,
        "log_every": 2, "eval_every": 0, "eval_pairs": 4, "init_from": str(DEFAULT_CHECKPOINT),
        "data": {"dir": str(tmp_path / "data"), "instances": 1, "shots": 2, "photo_shots": 2, "variants": 1,
                 "categories": ["screw"], "photos": False, "threads": 1},
    }))
    out = tmp_path / "run"
    p = _launch(["--stage", "2", "--config", str(cfg), "--run-dir", str(out)])
    assert p.returncode == 0, p.stderr[-3000:]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [2, 4]
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["world_size"] == 2 and state["step"] == 4
    assert (out / "final" / "language" / "projectors.safetensors").exists()
