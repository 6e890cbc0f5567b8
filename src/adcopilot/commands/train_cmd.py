"""``adcopilot train --stage N [--config FILE] [--resume]``: the multi-stage trainer."""

from __future__ import annotations

import os
from pathlib import Path

import typer


def default_config(stage: int) -> Path:
    return Path(__file__).resolve().parent.parent / "configs" / f"stage{stage}.yaml"


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train_cmd(
        stage: int = typer.Option(..., "--stage", help="Training stage: 1 (visual comparison), 2 (alignment), 3 (instruction tuning)."),
        config: Path = typer.Option(None, "--config", "-c", help="YAML config (default: the stage's bundled one)."),
        run_dir: str = typer.Option(None, "--run-dir", help="Run folder (checkpoints, metrics, final model)."),
        steps: int = typer.Option(None, "--steps", help="Override the number of steps."),
        batch_size: int = typer.Option(None, "--batch-size", help="Override the batch size."),
        seed: int = typer.Option(None, "--seed", help="Override the seed."),
        init_from: str = typer.Option(None, "--init-from", help="Start from this checkpoint folder."),
        resume: bool = typer.Option(False, "--resume", help="Continue the run in --run-dir from its checkpoint."),
    ) -> None:
        """Train one stage; resumable; runs under `accelerate launch` on several GPUs too."""
        from adcopilot.errors import AdcopilotError
        from adcopilot.train.config import load_config
        from adcopilot.train.loop import train

        cfg_path = config or default_config(stage)
        if not cfg_path.exists():
            raise AdcopilotError(f"no bundled config for stage {stage}; pass --config")
        cfg = load_config(
            cfg_path,
            {"run_dir": run_dir, "steps": steps, "batch_size": batch_size, "seed": seed, "init_from": init_from},
        )
        if cfg.stage != stage:
            raise AdcopilotError(f"{cfg_path}: config is for stage {cfg.stage}, not --stage {stage}")
        if stage == 1:
            from adcopilot.train.card import stage1_card
            from adcopilot.train.stage1 import Stage1Task

            task = Stage1Task(cfg, card_writer=stage1_card)
        elif stage in (2, 3):
            from adcopilot.train.stage_language import LanguageTask

            task = LanguageTask(cfg)
        else:
            raise AdcopilotError(f"--stage {stage}: unknown stage (known: 1, 2, 3)")
        final = train(task, cfg, resume=resume)
        if os.environ.get("RANK", "0") == "0":  # under `accelerate launch`, once rather than per process
            typer.echo(f"final model: {final}")
