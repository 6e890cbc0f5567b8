"""``adcopilot curate --source ... --out DIR``: labelled images -> Chat-AD samples; ``curate check-leaks``."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table


def register(app: typer.Typer) -> None:
    curate_app = typer.Typer(
        help="Turn sparsely labelled images into captions, VQA, boxes and MMAD-style questions (JSONL).",
        invoke_without_command=True,
    )

    @curate_app.callback()
    def curate(
        ctx: typer.Context,
        source: list[str] = typer.Option(None, "--source", "-s", help=(
            "A source, [kind:]PATH with kind mvtec, labels, normal or mmad (detected when left out); repeatable.")),
        out: Path = typer.Option(None, "--out", "-o", help="Output folder (resumed when it exists)."),
        seed: int = typer.Option(0, "--seed", help="Seed of the split, references, phrasing and synthetic defects."),
        test_fraction: float = typer.Option(0.2, "--test-fraction", help="Share of images (instances) in the test split."),
        references: int = typer.Option(1, "--references", help="Normal reference images per sample."),
        variants: int = typer.Option(1, "--variants", help="Synthetic defects per image of a 'normal' source."),
        task: list[str] = typer.Option(None, "--task", help="Only these tasks: caption, vqa, localization, mcq, comparison."),
        knowledge: list[Path] = typer.Option(None, "--knowledge", help="Your own defect/object knowledge YAML (repeatable)."),
        workers: int = typer.Option(min(2, os.cpu_count() or 1), "--workers", help="Processes reading images."),
        fresh: bool = typer.Option(False, "--fresh", help="Start over instead of resuming in --out."),
        no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
    ) -> None:
        """Curate Chat-AD samples (JSONL) and a dataset card from labelled image folders."""
        if ctx.invoked_subcommand is not None:
            return
        from adcopilot.data.curate import CurateConfig, clear_out
        from adcopilot.data.curate import curate as run
        from adcopilot.data.samples import TASKS
        from adcopilot.errors import AdcopilotError

        if not source:
            raise AdcopilotError("--source: give at least one source folder or mmad.json")
        if out is None:
            raise AdcopilotError("--out: give the output folder")
        if fresh:
            clear_out(out)
        report = run(CurateConfig(
            sources=list(source), out=out, seed=seed, test_fraction=test_fraction, references=references,
            variants=variants, tasks=tuple(task) if task else TASKS,
            knowledge=[str(k) for k in knowledge or []], workers=workers, progress=not no_progress,
        ))
        con = Console()
        con.print(f"curated {report.n_samples} samples from {report.n_images} images in {report.seconds:.1f} s")
        table = Table()
        table.add_column("task")
        table.add_column("samples", justify="right")
        for k, v in sorted(report.counts["task"].items()):
            table.add_row(k, str(v))
        con.print(table)
        for p in report.source_problems:
            con.print(f"[yellow]source skipped:[/] {p['reason']}")
        if report.skipped:
            con.print(f"[yellow]{len(report.skipped)} image(s) skipped[/] (see {out / 'skipped.jsonl'})")
        con.print(f"card: {out / 'card.md'}")

    @curate_app.command("check-leaks")
    def check_leaks(
        images: list[Path] = typer.Argument(..., help="Test images or folders of them."),
        train: list[Path] = typer.Option(..., "--train", help="A curated folder (or its hashes.json) used for training."),
        strict: bool = typer.Option(False, "--strict", help="Exit with an error when a test image was trained on."),
    ) -> None:
        """Warn (or refuse with --strict) when test images were in a curated training split."""
        import logging

        from adcopilot.data.leak import check_leaks as run

        logging.getLogger("adcopilot.data.leak").setLevel(logging.WARNING)
        if not logging.getLogger().handlers:
            logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
        leaks = run(images, train, strict=strict)
        typer.echo(f"{len(leaks)} leaked test image(s)" if leaks else "no leaks: no test image is in a training split")

    app.add_typer(curate_app, name="curate")
