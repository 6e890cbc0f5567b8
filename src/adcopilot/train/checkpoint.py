"""Resumable training checkpoints in safetensors (model, optimizer, scheduler, step); never pickle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


def save_training_state(
    folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, step: int, extra: dict
) -> None:
    """Atomically write model + optimizer tensors (safetensors) and counters (JSON) to ``folder``."""
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
    opt = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, float]] = {}
    for idx, st in opt["state"].items():
        for name, val in st.items():
            if torch.is_tensor(val) and val.dim() > 0:
                tensors[f"{idx}.{name}"] = val.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(idx), {})[name] = float(val)
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    meta = {
        "step": step,
        "param_groups": opt["param_groups"],
        "scalars": scalars,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        **extra,
    }
    (tmp / "state.json").write_text(json.dumps(meta, indent=1))
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def load_training_state(
    folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> dict:
    """Restore what :func:`save_training_state` wrote; returns the JSON metadata (with ``step``)."""
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    meta = json.loads((folder / "state.json").read_text())
    tensors = load_file(str(folder / "optimizer.safetensors"))
    state: dict[int, dict[str, Any]] = {}
    for key, val in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = val
    for idx, sc in meta["scalars"].items():
        for name, val in sc.items():
            state.setdefault(int(idx), {})[name] = torch.tensor(val)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    if scheduler is not None and meta.get("scheduler") is not None:
        scheduler.load_state_dict(meta["scheduler"])
    return meta
