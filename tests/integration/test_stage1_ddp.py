"""Stage 1 of the nano model under ``accelerate launch`` with two processes (CPU, gloo).

The launcher, trainer, data workers and checkpoint code that several GPUs run, with a tiny model on the
real frozen tower: both processes must take part, the run must finish and export a model that loads.
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


def test_two_process_stage1_run(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({
        "stage": 1, "seed": 0, "steps": 6, "batch_size": 2, "lr": 1e-3, "warmup_steps": 1, "checkpoint_every": 3,
        "log_every": 2, "eval_every": 0, "eval_pairs": 4, "num_workers": 1, "model": TINY,
        "data": {"train_size": 64},
    }))
    out = tmp_path / "run"
    launcher = Path(sys.executable).parent / "accelerate"
    cmd = [str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           "-m", "adcopilot", "train", "--stage", "1", "--config", str(cfg), "--run-dir", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [2, 4, 6]
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["world_size"] == 2 and state["step"] == 6
    model = NanoComparisonModel.load(out / "final")
    assert model.cfg.width == 32
