"""Resumable training checkpoints in safetensors (model, optimizer, scheduler, step); never pickle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from adcopilot.model.training_state import load_optimizer_state, partial_folder, save_optimizer_state, swap_in


def save_training_state(
    folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, step: int, extra: dict
) -> None:
    """Atomically write model + optimizer tensors (safetensors) and counters (JSON) to ``folder``."""
    tmp = partial_folder(folder)
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
    meta = {
        "step": step,
        **save_optimizer_state(optimizer.state_dict(), tmp),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        **extra,
    }
    (tmp / "state.json").write_text(json.dumps(meta, indent=1))
    swap_in(tmp, folder)


def load_training_state(
    folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> dict:
    """Restore what :func:`save_training_state` wrote; returns the JSON metadata (with ``step``)."""
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    meta = json.loads((folder / "state.json").read_text())
    optimizer.load_state_dict(load_optimizer_state(folder, meta))
    if scheduler is not None and meta.get("scheduler") is not None:
        scheduler.load_state_dict(meta["scheduler"])
    return meta
