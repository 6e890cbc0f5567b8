"""``adcopilot train [--scale nano|full] --stage N [--config FILE] [--resume] [--KEY VALUE ...]``: both trainers.

Every key of the scale's config is also a flag (``--grad-accum 4``, ``--tasks vqa caption``,
``--gradient-checkpointing``); flags override the YAML file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from adcopilot.errors import AdcopilotError

# Imported by the functions below, when a run starts: YAML, torch and the stage's model are not
# needed for `adcopilot --help`.
if TYPE_CHECKING:
    from adcopilot.train.config import FullTrainConfig, TrainConfig

SCALES = ("nano", "full")
EPILOG = ("Every key of the scale's config is also a flag: --scale nano reads TrainConfig's keys (--lr, "
          "--warmup-steps, --num-workers, --stop-after, ...), --scale full FullTrainConfig's (--model, --data, "
          "--output, --grad-accum, --lora-rank, --dtype, --gradient-checkpointing, --tasks A B, ...); "
          "see adcopilot.train.config and docs/scale.md.")


def default_config(stage: int) -> Path:
    return Path(__file__).resolve().parent.parent / "configs" / f"stage{stage}.yaml"


def _nano(stage: int | None, config: Path | None, args: list[str], flags: dict) -> tuple[object, TrainConfig]:
    from adcopilot.train.config import TrainConfig, flag_overrides, load_config

    if stage is None:
        raise AdcopilotError("--stage: required for --scale nano (1, 2 or 3)")
    cfg_path = config or default_config(stage)
    if not cfg_path.exists():
        raise AdcopilotError(f"no bundled config for stage {stage}; pass --config")
    cfg = load_config(cfg_path, {**flags, **flag_overrides(args, TrainConfig)}, TrainConfig)
    if cfg.stage != stage:
        raise AdcopilotError(f"{cfg_path}: config is for stage {cfg.stage}, not --stage {stage}")
    if stage == 1:
        from adcopilot.train.card import stage1_card
        from adcopilot.train.stage1 import Stage1Task

        return Stage1Task(cfg, card_writer=stage1_card), cfg
    if stage in (2, 3):
        from adcopilot.train.stage_language import LanguageTask  # transformers

        return LanguageTask(cfg), cfg
    raise AdcopilotError(f"--stage {stage}: unknown stage (known: 1, 2, 3)")


def _full(stage: int | None, config: Path | None, args: list[str], flags: dict) -> tuple[object, FullTrainConfig]:
    from adcopilot.train.config import FullTrainConfig, flag_overrides, load_config
    from adcopilot.train.full_scale import FullTask  # transformers, peft

    cfg = load_config(config, {**flags, **flag_overrides(args, FullTrainConfig), "stage": stage}, FullTrainConfig)
    return FullTask(cfg), cfg


def register(app: typer.Typer) -> None:
    @app.command("train", epilog=EPILOG,
                 context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def train_cmd(
        ctx: typer.Context,
        scale: str = typer.Option("nano", "--scale", help="nano (the CPU model's stages) or full (Qwen2.5-VL; "
                                  "GPUs and nodes under `accelerate launch -m adcopilot train --scale full`)."),
        stage: int = typer.Option(None, "--stage", help="Training stage: 1 (visual comparison), 2 (alignment), 3 (instruction tuning)."),
        config: Path = typer.Option(None, "--config", "-c", help="YAML config (nano default: the stage's bundled one)."),
        run_dir: str = typer.Option(None, "--run-dir", help="nano: run folder (checkpoints, metrics, final model)."),
        steps: int = typer.Option(None, "--steps", help="Override the number of optimizer steps."),
        batch_size: int = typer.Option(None, "--batch-size", help="Override the batch size (per process)."),
        seed: int = typer.Option(None, "--seed", help="Override the seed."),
        init_from: str = typer.Option(None, "--init-from", help="nano: start from this checkpoint folder."),
        resume: bool = typer.Option(False, "--resume", help="Continue the run in the run folder from its checkpoint."),
    ) -> None:
        """Train one stage; resumable; runs under `accelerate launch` on several GPUs or nodes too."""
        from adcopilot.train.loop import train  # torch, accelerate

        if scale not in SCALES:
            raise AdcopilotError(f"--scale {scale}: unknown scale (known: {', '.join(SCALES)})")
        flags = {"steps": steps, "batch_size": batch_size, "seed": seed}
        if scale == "nano":
            task, cfg = _nano(stage, config, ctx.args, {**flags, "run_dir": run_dir, "init_from": init_from})
        elif run_dir or init_from:
            raise AdcopilotError("--run-dir and --init-from are nano flags; the full scale reads --output and --model")
        else:
            task, cfg = _full(stage, config, ctx.args, flags)
        final = train(task, cfg, resume=resume)  # type: ignore[arg-type]
        if os.environ.get("RANK", "0") == "0":  # under `accelerate launch`, once rather than per process
            typer.echo(f"{'final model' if final.name == 'final' else 'stopped; checkpoint'}: {final}")
