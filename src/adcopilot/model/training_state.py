"""How both trainers store a resumable checkpoint folder: written beside it and swapped in whole, and
the optimizer's state split into a safetensors file (tensors) and JSON (step counters, groups); never pickle.

Usage::

    tmp = partial_folder(folder)
    meta = {"step": step, **save_optimizer_state(optimizer.state_dict(), tmp)}
    (tmp / "state.json").write_text(json.dumps(meta))
    swap_in(tmp, folder)
    ...
    optimizer.load_state_dict(load_optimizer_state(folder, meta))
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

OPTIMIZER_FILE = "optimizer.safetensors"


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
