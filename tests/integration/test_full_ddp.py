"""Two-process data-parallel training of the full-scale model through ``accelerate launch`` (CPU, gloo).

The same launcher, trainer and checkpoint code a GPU cluster runs, on a tiny random model: the
loss must fall, both processes must take part, and the exported model must load and answer.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from adcopilot.full.tiny import build_tiny_checkpoint

QUESTION = "The first image is a normal sample. The second image is the query sample. Is there any defect?"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _chat_data(root: Path, n: int = 8) -> Path:
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        ref = (rng.random((64, 64, 3)) * 60 + 100).astype(np.uint8)
        query = ref.copy()
        if i % 2 == 0:
            query[20:36, 24:40] = 250
        Image.fromarray(ref).save(root / f"ref{i}.png")
        Image.fromarray(query).save(root / f"q{i}.png")
        answer = '[{"bbox_2d": [24, 20, 40, 36], "label": "stain"}]' if i % 2 == 0 else "[]"
        lines.append({"id": f"s{i}", "task": "localization", "image": f"q{i}.png", "references": [f"ref{i}.png"],
                      "turns": [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": answer}]})
    path = root / "chat.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def test_two_process_training_lowers_the_loss(tmp_path):
    data = _chat_data(tmp_path)
    ckpt = build_tiny_checkpoint(tmp_path / "tiny", texts=[QUESTION, "stain bbox_2d label"])
    out = tmp_path / "run"
    launcher = Path(sys.executable).parent / "accelerate"
    cmd = [
        str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
        "-m", "adcopilot", "train", "--scale", "full", "--cpu", "--model", str(ckpt), "--data", str(data), "--output", str(out),
        "--stage", "3", "--full-finetune", "--steps", "12", "--batch-size", "2", "--lr", "1e-3",
        "--log-every", "4", "--checkpoint-every", "6", "--seed", "0",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [4, 8, 12]
    losses = [r["loss"] for r in rows]
    assert losses[-1] < losses[0] - 0.2, losses
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["world_size"] == 2 and state["step"] == 12
    assert state["optimizer"] is not None  # DDP: the optimizer state is saved for --resume

    from adcopilot import Copilot

    cp = Copilot.load(out / "final")
    assert isinstance(cp.ask(tmp_path / "q0.png", [tmp_path / "ref0.png"], "Is there any defect?"), str)
