"""Training configuration of both scales: YAML files of known keys and ``--key-name`` flags, validated,
saved into each run folder.

:class:`LoopConfig` holds the keys :func:`adcopilot.train.loop.train` reads; :class:`TrainConfig`
(the nano stages) and :class:`FullTrainConfig` (the full-scale Qwen2.5-VL model) add their own.

Usage::

    cfg = load_config("stage1.yaml", {"steps": 100})                  # nano, flags override the file
    cfg = load_config("configs/full/stage3.yaml", flag_overrides(["--lr", "1e-4"], FullTrainConfig),
                      FullTrainConfig)
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml

from adcopilot.errors import AdcopilotError

C = TypeVar("C", bound="LoopConfig")


@dataclass
class LoopConfig:
    """The keys the shared training loop reads (each scale's config sets its own defaults)."""

    #: The learning rate decays to this fraction of its peak (cosine, after a linear warm-up).
    lr_floor: ClassVar[float] = 0.05
    #: Checkpoints hold the whole model state (True) or only the trained tensors (a large frozen base).
    whole_checkpoints: ClassVar[bool] = True

    stage: int = 1
    seed: int = 0
    steps: int | None = 3000  # optimizer steps
    batch_size: int = 16  # per process
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float | None = 3e-4
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    checkpoint_every: int = 200
    log_every: int = 10
    eval_every: int = 500
    stop_after: int | None = None  # stop (with a checkpoint) after this many steps of this run; resume later
    cpu: bool = False  # train on CPU processes (gloo) even where a GPU is present
    mixed_precision: str | None = None  # no / bf16 / fp16; None: accelerate's config decides
    find_unused_parameters: bool = True  # DDP: some parameters get no gradient in some batches

    def run_folder(self) -> Path:
        """Where checkpoints, metrics and the final model go."""
        raise NotImplementedError

    def warmup(self, total: int) -> int:
        """Warm-up steps of a run of ``total`` optimizer steps."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TrainConfig(LoopConfig):
    """A nano training stage (``src/adcopilot/configs/stage*.yaml``)."""

    name: str = "nano"
    warmup_steps: int = 100
    eval_pairs: int = 96
    # Background processes drawing the training batches; 0 draws them in the training process. They are
    # spawned, so a script that trains through the Python API with workers needs `if __name__ == "__main__":`.
    num_workers: int = 0
    run_dir: str = "runs/stage1"
    init_from: str | None = None  # a checkpoint folder to start from (adapt, later stages)
    model: dict[str, Any] = field(default_factory=dict)  # NanoConfig overrides
    data: dict[str, Any] = field(default_factory=dict)  # task-specific data options
    loss: dict[str, Any] = field(default_factory=dict)

    def run_folder(self) -> Path:
        return Path(self.run_dir)

    def warmup(self, total: int) -> int:
        return self.warmup_steps


@dataclass
class FullTrainConfig(LoopConfig):
    """A full-scale training stage (``configs/full/stage*.yaml``)."""

    lr_floor: ClassVar[float] = 0.1
    whole_checkpoints: ClassVar[bool] = False  # the 7B base stays in its own checkpoint folder

    stage: int = 3
    steps: int | None = None  # default: epochs over the data
    batch_size: int = 1
    lr: float | None = None  # scales every group's stage learning rate to this base rate
    weight_decay: float = 0.0
    checkpoint_every: int = 500
    eval_every: int = 0
    find_unused_parameters: bool = False  # set when some batches have no images
    model: str = ""  # checkpoint folder to start from (base Qwen2.5-VL or AD-Copilot)
    data: str = ""  # Chat-AD JSONL
    output: str = "runs/full"
    full_finetune: bool = False  # stage 3: train the LLM itself instead of LoRA adapters
    tasks: list[str] | None = None  # Chat-AD tasks to read (default: the stage's)
    split: str | None = "train"
    epochs: float = 1.0
    warmup_ratio: float = 0.03
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    max_length: int = 4096
    max_image_size: int = 512
    min_pixels: int = 64 * 28 * 28
    max_pixels: int = 1280 * 28 * 28
    dtype: str = "float32"  # weights as loaded: float32, bfloat16 (GPU), float16
    gradient_checkpointing: bool = False
    attn_implementation: str | None = None  # eager / sdpa / flash_attention_2
    compare_position: str | None = None  # override the checkpoint's M-RoPE placement
    compare_attention_layout: str | None = None  # override the checkpoint's head merge (release / standard)
    extra: dict[str, Any] = field(default_factory=dict)

    def run_folder(self) -> Path:
        return Path(self.output)

    def warmup(self, total: int) -> int:
        return int(self.warmup_ratio * total)


# ---------------------------------------------------------------------------- reading
def read_yaml_config(path: str | os.PathLike | None, config_class: type) -> dict[str, Any]:
    """The file's mapping (``{}`` without a file); a missing or malformed file, a file that is not a
    mapping, or a key that is not a field of ``config_class`` raises naming the file."""
    if path is None:
        return {}
    p = Path(path)
    if not p.is_file():
        raise AdcopilotError(f"{p}: no such config file")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise AdcopilotError(f"{p}: malformed YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise AdcopilotError(f"{p}: a config must be a mapping of keys to values")
    unknown = sorted(set(raw) - {f.name for f in dataclasses.fields(config_class)})
    if unknown:
        raise AdcopilotError(f"{p}: unknown config key(s) {', '.join(unknown)}")
    return raw


def _field_types(config_class: type) -> dict[str, tuple[type, bool]]:
    """Each field's value type and whether it may be None (``int | None`` -> ``(int, True)``)."""
    hints = typing.get_type_hints(config_class)
    out: dict[str, tuple[type, bool]] = {}
    for f in dataclasses.fields(config_class):
        hint = hints[f.name]
        args = typing.get_args(hint) if isinstance(hint, types.UnionType) else ()
        kinds = [a for a in args if a is not type(None)]
        kind = kinds[0] if kinds else hint
        out[f.name] = (typing.get_origin(kind) or kind, type(None) in args)
    return out


def _type_error(name: str, kind: type, value: Any) -> str | None:
    """Why ``value`` cannot be field ``name`` of type ``kind`` (None when it can)."""
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    elif kind is list:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    else:
        ok = isinstance(value, kind)
    what = {bool: "true or false", int: "an integer", float: "a finite number", list: "a list of names",
            str: "a text", dict: "a mapping"}.get(kind, kind.__name__)
    return None if ok else f"'{name}' must be {what}, got {value!r}"


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None,
                config_class: type[C] = TrainConfig) -> C:  # type: ignore[assignment]
    """Read a YAML config and apply ``overrides`` (None values are skipped); unknown keys and wrong
    types are reported with the file's name."""
    raw = read_yaml_config(path, config_class)
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    given = {k for k, v in (overrides or {}).items() if v is not None}

    def where(name: str) -> str:  # the flag that set a value, else the file it came from
        if name in given:
            return "--" + name.replace("_", "-")
        return str(path) if path is not None else "training configuration"

    kinds = _field_types(config_class)
    for name, value in raw.items():
        kind, optional = kinds[name]
        problem = None if value is None and optional else _type_error(name, kind, value)
        if problem:
            raise AdcopilotError(f"{where(name)}: {problem}")
    cfg = config_class(**raw)
    for name in ("steps", "batch_size", "grad_accum", "checkpoint_every", "log_every", "stop_after"):
        value = getattr(cfg, name)
        if not (value is None and kinds[name][1]) and value <= 0:
            raise AdcopilotError(f"{where(name)}: '{name}' must be a positive integer, got {value!r}")
    if getattr(cfg, "num_workers", 0) < 0:
        raise AdcopilotError(f"{where('num_workers')}: 'num_workers' must be 0 or a positive integer, got {cfg.num_workers!r}")  # type: ignore[attr-defined]
    # A NaN or negative rate trains nothing but NaN weights, silently, for as long as the run lasts.
    lr = getattr(cfg, "lr", None)
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise AdcopilotError(f"{where('lr')}: 'lr' must be a positive number, got {lr!r}")
    for name in ("weight_decay", "grad_clip"):
        value = getattr(cfg, name, 0.0)
        if not (math.isfinite(value) and value >= 0):
            raise AdcopilotError(f"{where(name)}: '{name}' must be 0 or a positive number, got {value!r}")
    return cfg


def _flag_value(flag: str, kind: type, text: str) -> Any:
    try:
        return int(text) if kind is int else float(text) if kind is float else text
    except ValueError:
        raise AdcopilotError(f"{flag}: expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None


def flag_overrides(args: Sequence[str], config_class: type) -> dict[str, Any]:
    """``--key-name VALUE`` flags for the fields of ``config_class``: a boolean flag takes no value, a list
    the values up to the next flag; an unknown flag or a value of the wrong type raises naming the flag."""
    kinds = {name: k for name, (k, _) in _field_types(config_class).items() if k is not dict}
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        flag, _, inline = args[i].partition("=")
        name = flag[2:].replace("-", "_") if flag.startswith("--") else ""
        if name not in kinds:
            raise AdcopilotError(f"{flag}: unknown option")
        kind = kinds[name]
        values = [inline] if inline else []
        i += 1
        while kind is not bool and not inline and i < len(args) and not args[i].startswith("--"):
            values.append(args[i])
            i += 1
            if kind is not list:
                break
        if kind is bool:
            out[name] = True
        elif not values:
            raise AdcopilotError(f"{flag}: needs a value")
        else:
            out[name] = values if kind is list else _flag_value(flag, kind, values[0])
    return out


def save_config(cfg: LoopConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
