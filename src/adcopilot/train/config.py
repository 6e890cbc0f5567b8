"""Training configuration: a YAML file of known keys, validated, saved into each run folder."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from adcopilot.errors import AdcopilotError
from adcopilot.yaml_config import read_yaml_config


@dataclass
class TrainConfig:
    stage: int = 1
    name: str = "nano"
    seed: int = 0
    steps: int = 3000
    batch_size: int = 16
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 100
    grad_clip: float = 1.0
    checkpoint_every: int = 200
    log_every: int = 10
    eval_every: int = 500
    eval_pairs: int = 96
    # Background processes drawing the training batches; 0 draws them in the training process. They are
    # spawned, so a script that trains through the Python API with workers needs `if __name__ == "__main__":`.
    num_workers: int = 0
    run_dir: str = "runs/stage1"
    init_from: str | None = None  # a checkpoint folder to start from (adapt, later stages)
    model: dict[str, Any] = field(default_factory=dict)  # NanoConfig overrides
    data: dict[str, Any] = field(default_factory=dict)  # task-specific data options
    loss: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a YAML config; unknown keys and wrong types are reported with the file's name."""
    raw = read_yaml_config(path, TrainConfig)
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        cfg = TrainConfig(**raw)
    except TypeError as exc:
        raise AdcopilotError(f"{path}: {exc}") from None
    for name in ("steps", "batch_size", "checkpoint_every", "log_every"):
        if not isinstance(getattr(cfg, name), int) or getattr(cfg, name) <= 0:
            raise AdcopilotError(f"{path}: '{name}' must be a positive integer, got {getattr(cfg, name)!r}")
    if not isinstance(cfg.num_workers, int) or isinstance(cfg.num_workers, bool) or cfg.num_workers < 0:
        raise AdcopilotError(f"{path}: 'num_workers' must be 0 or a positive integer, got {cfg.num_workers!r}")
    return cfg


def save_config(cfg: TrainConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
