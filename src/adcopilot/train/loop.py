"""A resumable training loop on Hugging Face Accelerate, shared by every stage.

The same command runs on one CPU or, under ``accelerate launch``, on several GPUs or nodes.
Every ``checkpoint_every`` steps, on Ctrl-C and at the end it writes ``<run>/checkpoint/``
(model, optimizer, scheduler and step, safetensors + JSON); ``--resume`` continues from there with
the same data stream (batches are a pure function of (seed, step, process), so a resumed run sees
exactly the batches an uninterrupted one would). Metrics go to ``<run>/metrics.jsonl``; the config
to ``<run>/config.yaml``; the final exported model to ``<run>/final/``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from adcopilot.errors import AdcopilotError
from adcopilot.train.checkpoint import load_training_state, save_training_state
from adcopilot.train.config import TrainConfig, save_config

log = logging.getLogger(__name__)


class Task(Protocol):
    """What a stage provides to the loop."""

    def build(self) -> nn.Module: ...

    def batches(self, start_step: int, process_index: int) -> Iterator[tuple[int, Any]]: ...

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]: ...

    def evaluate(self, model: nn.Module) -> dict[str, float]: ...

    def export(self, model: nn.Module, folder: Path, metrics: dict[str, Any]) -> None: ...


def _schedule(cfg: TrainConfig):
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / max(1, cfg.warmup_steps)
        t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return f


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def train(task: Task, cfg: TrainConfig, *, resume: bool = False) -> Path:
    """Run (or resume) training; returns the folder of the exported final model."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, set_seed

    # Several processes started by `accelerate launch` on a machine without CUDA join as CPU (gloo)
    # processes; without cpu=True each would train alone, unaware of the others. A single process keeps
    # Accelerate's own device choice (e.g. Apple's MPS).
    # find_unused_parameters: stage 1's losses leave the comparison tokens' decoder and projector (read
    # only by the language model) without gradients, which plain DDP refuses.
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    accelerator = Accelerator(
        cpu=several and not torch.cuda.is_available(),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    set_seed(cfg.seed)
    if accelerator.device.type == "cuda":
        # TF32 matrix products: ample precision for these small models, several times faster.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    run = Path(cfg.run_dir)
    ckpt = run / "checkpoint"
    if run.exists() and any(run.iterdir()) and not resume and ckpt.exists():
        raise AdcopilotError(f"{run}: a run already exists there; pass --resume to continue it or choose --run-dir")
    run.mkdir(parents=True, exist_ok=True)
    if accelerator.is_main_process:
        save_config(cfg, run / "config.yaml")

    model = task.build()
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise AdcopilotError("nothing to train: every parameter is frozen in this stage")
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(cfg))
    start = 0
    elapsed_before = 0.0
    if resume:
        if not ckpt.exists():
            raise AdcopilotError(f"{ckpt}: nothing to resume (no checkpoint yet)")
        meta = load_training_state(ckpt, model, optimizer, scheduler)
        start = int(meta["step"])
        elapsed_before = float(meta.get("elapsed_s", 0.0))
        log.info("resumed from step %d", start)
    model, optimizer = accelerator.prepare(model, optimizer)
    metrics_file = run / "metrics.jsonl"

    def checkpoint(step: int, elapsed: float) -> None:
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            save_training_state(ckpt, accelerator.unwrap_model(model), optimizer, scheduler, step, {"elapsed_s": elapsed, "world_size": accelerator.num_processes})

    def log_metrics(row: dict[str, Any]) -> None:
        if accelerator.is_main_process:
            with metrics_file.open("a") as f:
                f.write(json.dumps(row) + "\n")

    # Background jobs ignore SIGINT; make SIGTERM (kill, a scheduler's pre-emption) save a checkpoint too.
    previous_handler = None
    if threading.current_thread() is threading.main_thread():
        previous_handler = signal.signal(signal.SIGTERM, _raise_interrupt)
    t0 = time.time()
    step = start
    bar = tqdm(total=cfg.steps, initial=start, desc=f"stage {cfg.stage}", disable=not accelerator.is_main_process)
    running: dict[str, float] = {}
    try:
        model.train()
        for step, batch in task.batches(start, accelerator.process_index):
            if step >= cfg.steps:
                break
            loss, m = task.loss(model, batch)
            accelerator.backward(loss)
            if cfg.grad_clip:
                accelerator.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            for k, v in {"loss": float(loss.detach()), **m}.items():
                running[k] = 0.9 * running.get(k, v) + 0.1 * v
            done = step + 1
            elapsed = elapsed_before + time.time() - t0
            bar.update(1)
            bar.set_postfix(loss=f"{running['loss']:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
            if done % cfg.log_every == 0:
                log_metrics({"step": done, "elapsed_s": round(elapsed, 1), "lr": scheduler.get_last_lr()[0],
                             **{k: round(v, 5) for k, v in running.items()}})
            if cfg.eval_every and done % cfg.eval_every == 0 and done < cfg.steps:
                model.eval()
                ev = task.evaluate(accelerator.unwrap_model(model))
                model.train()
                log_metrics({"step": done, "eval": ev})
                log.info("step %d eval %s", done, ev)
            if done % cfg.checkpoint_every == 0:
                checkpoint(done, elapsed)
            step = done
    except KeyboardInterrupt:
        bar.close()
        checkpoint(step, elapsed_before + time.time() - t0)
        log.warning("interrupted at step %d; checkpoint saved to %s (resume with --resume)", step, ckpt)
        raise
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
    bar.close()
    elapsed = elapsed_before + time.time() - t0
    checkpoint(step, elapsed)
    final = run / "final"
    if accelerator.is_main_process:
        model.eval()
        ev = task.evaluate(accelerator.unwrap_model(model))
        log_metrics({"step": step, "eval": ev, "final": True})
        task.export(accelerator.unwrap_model(model), final, {"eval": ev, "steps": step, "train_seconds": round(elapsed)})
    accelerator.wait_for_everyone()
    return final
