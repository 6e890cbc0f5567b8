"""The resumable training loop on Hugging Face Accelerate, shared by every stage of both scales.

The same code runs on one CPU or, under ``accelerate launch``, on several GPUs or nodes with DDP,
FSDP or DeepSpeed. A :class:`Task` (nano stage 1, the nano language stages, the full-scale model)
builds the model, its parameter groups and its data stream; the loop owns the rest:

- the optimizer (AdamW over the task's groups) and the schedule (:func:`cosine_schedule`);
- gradient accumulation (``grad_accum`` micro-batches per optimizer step), clipping, mixed precision;
- ``<run>/checkpoint/`` (:mod:`adcopilot.train.checkpoint`) every ``checkpoint_every`` steps, on
  Ctrl-C or SIGTERM, after ``stop_after`` steps and at the end; ``resume`` continues from it with the
  same data stream (batches are a pure function of (seed, micro-step, process), so a resumed run
  sees exactly the batches an uninterrupted one would);
- ``<run>/config.yaml`` (the config, readable by ``--config``) and ``<run>/metrics.jsonl``: every
  ``log_every`` steps the window's mean loss over all processes, the task's other metrics (a metric
  ``n_X`` is a count, logged as ``X_per_s`` per process), the learning rate and the elapsed time;
  evaluations every ``eval_every`` steps and at the end;
- the final model, which the task exports to ``<run>/final/``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedDataParallelKwargs, DistributedType, set_seed
from torch import nn
from tqdm.auto import tqdm

from adcopilot.errors import AdcopilotError
from adcopilot.train.checkpoint import checkpoint_folder, load_training_state, save_training_state
from adcopilot.train.config import LoopConfig, save_config

log = logging.getLogger(__name__)


class Task(Protocol):
    """What a stage provides to the loop."""

    def build(self) -> nn.Module:
        """The model, its frozen parameters marked ``requires_grad=False`` (Accelerate's state is ready)."""
        ...

    def total_steps(self) -> int:
        """Optimizer steps of the whole run (called after :meth:`build`)."""
        ...

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """AdamW parameter groups of the trained parameters."""
        ...

    def batches(self, start: int, process_index: int) -> Iterator[tuple[int, Any]]:
        """(micro-step, batch) from micro-step ``start`` on; a pure function of the micro-step."""
        ...

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]: ...

    def evaluate(self, model: nn.Module) -> dict[str, float]: ...

    def export(self, model: nn.Module, folder: Path, metrics: dict[str, Any]) -> None: ...


class SingleRateTask:
    """A stage of ``cfg.steps`` optimizer steps that trains every parameter it leaves unfrozen at the
    config's learning rate and weight decay (the nano stages)."""

    cfg: LoopConfig

    def total_steps(self) -> int:
        return self.cfg.steps  # type: ignore[return-value]

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "lr": self.cfg.lr,
                 "weight_decay": self.cfg.weight_decay}]


def cosine_schedule(total: int, warmup: int, floor: float) -> Callable[[int], float]:
    """Learning-rate factor: linear warm-up over ``warmup`` steps, then cosine decay to ``floor``."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        t = (step - warmup) / max(1, total - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return f


def is_sharded(state: Accelerator | AcceleratorState) -> bool:
    """Whether the strategy splits parameters and optimizer state across processes (FSDP, DeepSpeed)."""
    return state.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


class _Window:
    """Metrics summed between two log lines."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, float] = {}
        self.n = 0
        self.t0 = time.time()

    def add(self, loss: torch.Tensor, metrics: dict[str, float]) -> None:
        for k, v in {"loss": float(loss.detach()), **metrics}.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.n += 1

    def row(self, accelerator: Accelerator) -> dict[str, float]:
        # Collective: every process calls it at the same steps.
        loss = accelerator.reduce(torch.tensor(self.sums["loss"] / self.n, device=accelerator.device), "mean")
        seconds = max(1e-9, time.time() - self.t0)
        row = {"loss": round(float(loss), 5)}
        for k, v in self.sums.items():
            if k.startswith("n_"):
                row[f"{k[2:]}_per_s"] = round(v / seconds, 1)
            elif k != "loss":
                row[k] = round(v / self.n, 5)
        self.reset()
        return row


def train(task: Task, cfg: LoopConfig, *, resume: bool = False) -> Path:
    """Run (or resume) training; returns the folder of the exported final model (the checkpoint when
    ``stop_after`` stopped the run early)."""
    # Several processes started by `accelerate launch` on a machine without CUDA join as CPU (gloo)
    # processes; without cpu=True each would train alone, unaware of the others. A single process keeps
    # Accelerate's own device choice (e.g. Apple's MPS).
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    accelerator = Accelerator(
        cpu=cfg.cpu or (several and not torch.cuda.is_available()),
        gradient_accumulation_steps=cfg.grad_accum,
        mixed_precision=cfg.mixed_precision,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=cfg.find_unused_parameters)],
    )
    set_seed(cfg.seed)
    if accelerator.device.type == "cuda":
        # TF32 matrix products for float32 weights: ample precision here, several times faster.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    run = cfg.run_folder()
    ckpt = checkpoint_folder(run)
    if ckpt.exists() and not resume:
        raise AdcopilotError(f"{run}: a run already exists there; pass --resume to continue it or choose another run folder")
    if accelerator.is_main_process:
        run.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run / "config.yaml")

    model = task.build()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    trained = set(names)
    if not names:
        raise AdcopilotError(f"stage {cfg.stage}: nothing to train (every parameter is frozen)")
    total = task.total_steps()
    optimizer = torch.optim.AdamW(task.param_groups(model))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_schedule(total, cfg.warmup(total), cfg.lr_floor))
    start, elapsed_before = 0, 0.0
    if resume:
        meta = load_training_state(ckpt, model, optimizer, scheduler, names)
        start, elapsed_before = int(meta["step"]), float(meta.get("elapsed_s", 0.0))
        log.info("resumed from step %d", start)
    model, optimizer = accelerator.prepare(model, optimizer)
    params = [p for p in model.parameters() if p.requires_grad]

    def checkpoint(step: int, elapsed: float) -> None:
        state = accelerator.get_state_dict(model)  # collective under FSDP / DeepSpeed: every process calls it
        opt_state = None if is_sharded(accelerator) else optimizer.state_dict()
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            tensors = state if cfg.whole_checkpoints else {k: v for k, v in state.items() if k in trained}
            save_training_state(ckpt, tensors, cfg.whole_checkpoints, opt_state, scheduler,
                                {"step": step, "elapsed_s": round(elapsed, 1), "stage": cfg.stage,
                                 "world_size": accelerator.num_processes})
        accelerator.wait_for_everyone()

    def log_metrics(row: dict[str, Any]) -> None:
        if accelerator.is_main_process:
            with (run / "metrics.jsonl").open("a") as f:
                f.write(json.dumps(row) + "\n")

    def evaluate(**extra: Any) -> dict[str, float]:
        model.eval()
        ev = task.evaluate(accelerator.unwrap_model(model))
        model.train()
        if ev:
            log_metrics({"step": step, "eval": ev, **extra})
            log.info("step %d eval %s", step, ev)
        return ev

    # Background jobs ignore SIGINT; make SIGTERM (kill, a scheduler's pre-emption) save a checkpoint too.
    previous_handler = None
    if threading.current_thread() is threading.main_thread():
        previous_handler = signal.signal(signal.SIGTERM, _raise_interrupt)
    t0 = time.time()
    step = start
    window = _Window()
    bar = tqdm(total=total, initial=start, desc=f"stage {cfg.stage}", disable=not accelerator.is_main_process)
    try:
        model.train()
        for micro, batch in task.batches(start * cfg.grad_accum, accelerator.process_index):
            if micro // cfg.grad_accum >= total:
                break
            with accelerator.accumulate(model):
                loss, m = task.loss(model, batch)
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.grad_clip:
                    accelerator.clip_grad_norm_(params, cfg.grad_clip)
                optimizer.step()  # Accelerate's optimizer skips the step until the last micro-batch
                optimizer.zero_grad(set_to_none=True)
            window.add(loss, m)
            if (micro + 1) % cfg.grad_accum:
                continue
            scheduler.step()
            step = micro // cfg.grad_accum + 1
            elapsed = elapsed_before + time.time() - t0
            bar.update(1)
            if step % cfg.log_every == 0 or step == total:
                row = window.row(accelerator)
                log_metrics({"step": step, **row, "lr": max(scheduler.get_last_lr()), "elapsed_s": round(elapsed, 1)})
                bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{max(scheduler.get_last_lr()):.2e}")
            if cfg.eval_every and step % cfg.eval_every == 0 and step < total:
                evaluate()
            if step % cfg.checkpoint_every == 0 and step < total:
                checkpoint(step, elapsed)
            if cfg.stop_after and step - start >= cfg.stop_after and step < total:
                bar.close()
                checkpoint(step, elapsed)
                log.info("stopped after %d steps at step %d; continue with --resume", cfg.stop_after, step)
                return ckpt
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
        ev = evaluate(final=True)
        task.export(accelerator.unwrap_model(model), final, {"eval": ev, "steps": step, "train_seconds": round(elapsed)})
    accelerator.wait_for_everyone()
    return final
