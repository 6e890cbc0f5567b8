"""Resumable training checkpoints of both scales, in safetensors and JSON; never pickle.

A checkpoint folder holds the model's tensors (``model.safetensors``: the whole state of a nano model;
``trainable.safetensors``: only the trained tensors of the full-scale model, whose frozen base stays
in its own checkpoint), the optimizer's state (tensors in ``optimizer.safetensors``, step counters and
groups in JSON; absent where a sharded strategy keeps it in pieces) and the counters
(``state.json``: step, scheduler, elapsed time, ...). It is written beside the old one and swapped in
whole, so an interruption leaves one of them complete.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from adcopilot.errors import AdcopilotError

log = logging.getLogger(__name__)

OPTIMIZER_FILE = "optimizer.safetensors"
WHOLE_FILE = "model.safetensors"
TRAINED_FILE = "trainable.safetensors"


def checkpoint_folder(run: Path) -> Path:
    """The resumable checkpoint of the run folder ``run``."""
    return run / "checkpoint"


def partial_folder(folder: Path) -> Path:
    """An empty folder beside ``folder`` to write the next checkpoint into."""
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def swap_in(tmp: Path, folder: Path) -> None:
    """Replace ``folder`` by the finished ``tmp``; an interruption leaves one of them whole."""
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def save_optimizer_state(opt_state: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    """Write ``opt_state``'s tensors to ``folder``; returns the JSON part (``param_groups``, ``scalars``)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, float]] = {}
    for idx, st in opt_state["state"].items():
        for name, val in st.items():
            if torch.is_tensor(val) and val.dim() > 0:
                tensors[f"{idx}.{name}"] = val.detach().contiguous().cpu()
            else:  # step counters: 0-d tensors or numbers
                scalars.setdefault(str(idx), {})[name] = float(val)
    save_file(tensors, str(folder / OPTIMIZER_FILE))
    return {"param_groups": opt_state["param_groups"], "scalars": scalars}


def load_optimizer_state(folder: Path, saved: Mapping[str, Any]) -> dict[str, Any]:
    """The optimizer state dict from ``folder``'s tensors and the JSON part :func:`save_optimizer_state` returned."""
    state: dict[int, dict[str, Any]] = {}
    for key, val in load_file(str(folder / OPTIMIZER_FILE)).items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = val
    for idx, sc in saved["scalars"].items():
        for name, val in sc.items():
            state.setdefault(int(idx), {})[name] = torch.tensor(val)
    return {"state": state, "param_groups": saved["param_groups"]}


def save_training_state(folder: Path, tensors: dict[str, torch.Tensor], whole: bool,
                        opt_state: Mapping[str, Any] | None, scheduler: Any, meta: dict[str, Any]) -> None:
    """Atomically write the model's ``tensors`` (all of its state when ``whole``, else the trained ones),
    the optimizer state (None: not saved) and the counters ``meta`` (with ``step``) to ``folder``."""
    tmp = partial_folder(folder)
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()},
              str(tmp / (WHOLE_FILE if whole else TRAINED_FILE)))
    info = {**meta, "scheduler": scheduler.state_dict(), "optimizer": None}
    if opt_state is not None:
        info["optimizer"] = save_optimizer_state(opt_state, tmp)
    (tmp / "state.json").write_text(json.dumps(info, indent=1))
    swap_in(tmp, folder)


def trained_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """The tensors a checkpoint holds (whole model or trained tensors only)."""
    whole = folder / WHOLE_FILE
    return load_file(str(whole if whole.is_file() else folder / TRAINED_FILE))


def load_training_state(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                        names: list[str]) -> dict[str, Any]:
    """Restore what :func:`save_training_state` wrote into the (unprepared) model, optimizer and scheduler;
    ``names`` are the trained tensors the checkpoint must hold. Returns the counters (with ``step``)."""
    if not (folder / "state.json").is_file():
        raise AdcopilotError(f"{folder}: nothing to resume (no checkpoint yet)")
    meta = json.loads((folder / "state.json").read_text())
    tensors = trained_tensors(folder)
    missing = sorted(set(names) - set(tensors))
    if missing:
        raise AdcopilotError(f"{folder}: the checkpoint lacks {len(missing)} trained tensors ({missing[0]}, ...); "
                             "was it written by another stage or LoRA setting?")
    model.load_state_dict(tensors, strict=(folder / WHOLE_FILE).is_file())
    # Checkpoints written before the optimizer's part had its own key kept it at the top level.
    opt = meta.get("optimizer", meta if "param_groups" in meta else None)
    if opt is not None and (folder / OPTIMIZER_FILE).is_file():
        optimizer.load_state_dict(load_optimizer_state(folder, opt))
    else:
        log.warning("%s: no optimizer state (sharded run): the optimizer's moments restart", folder)
    if meta.get("scheduler") is not None:
        scheduler.load_state_dict(meta["scheduler"])
    return meta
