"""``adcopilot tolerance``: how far a line's light, camera and part placement may drift, on its own images."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("tolerance")
    def tolerance(
        good: list[Path] = typer.Option(None, "--good", help="Good parts: folders, images or CSV lists (repeatable)."),
        refs: list[Path] = typer.Option(
            None, "--refs", help="Normal references: each image is compared with all of them (or its --shots nearest)."),
        defects: list[Path] = typer.Option(None, "--defects", help="Defective parts, for misses and AUROC (optional)."),
        conditions: list[str] = typer.Option(
            None, "--condition", "-c", help="Only this condition (repeatable; the baselines always run)."),
        shots: int = typer.Option(
            None, "--shots", "-k", help="Compare each image with its k nearest references only (as batch does)."),
        model: str = typer.Option("default", "--model", "-m", help="'default', 'baseline' or a checkpoint folder."),
        no_register: bool = typer.Option(False, "--no-register", help="Do not align images onto references."),
        seed: int = typer.Option(0, "--seed", help="Seed of the sensor noise."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
        as_json: bool = typer.Option(False, "--json", help="Print the sheet as JSON."),
    ) -> None:
        """Each capture condition (exposure, gamma, light ramp, noise, defocus, JPEG, shift, turn, zoom) applied
        to every image: the false alarms it causes at the model's threshold, against the images as taken."""
        from rich.console import Console
        from rich.table import Table

        from adcopilot.api import Copilot
        from adcopilot.errors import AdcopilotError
        from adcopilot.line.references import reference_paths
        from adcopilot.line.runtime import prepare_for_inference, set_compute_threads
        from adcopilot.line.sources import collect
        from adcopilot.line.tolerance import COSTLY, HIGH_BASE, choose_conditions, measure_tolerance

        # Every argument checked before the model loads.
        choose_conditions(256, conditions)
        if shots is not None and shots < 1:
            raise AdcopilotError(f"--shots must be at least 1, got {shots}")
        if not good:
            raise AdcopilotError("--good is needed: images of good parts, on which the false alarms are counted")
        references = reference_paths(refs)
        good_paths = [it.path for it in collect(good)]
        bad_paths = [it.path for it in collect(defects)] if defects else []
        set_compute_threads(None)
        cp = prepare_for_inference(Copilot.load(model, registration=not no_register))
        report = measure_tolerance(cp, good_paths, references, bad_paths, conditions, seed=seed, progress=not quiet,
                                   shots=shots)
        if as_json:
            typer.echo(json.dumps(report.to_dict(), indent=2))
            return
        con = Console()
        against = f"the nearest {report.shots} of {report.references}" if report.shots != report.references else str(
            report.references)
        table = Table(title=f"tolerance of {report.good} good and {report.defective} defective images, "
                            f"{against} reference(s), threshold {report.threshold:.4f} ({report.model})")
        for col in ("condition", "false alarms", "median normal score", "not the product", "misses", "AUROC"):
            table.add_column(col, justify="left" if col == "condition" else "right")
        for r in report.rows:
            table.add_row(r.condition, f"{100 * r.false_alarms:.1f} %", f"{r.median_normal_score:.3f}",
                          f"{100 * r.not_the_product:.0f} %", "-" if r.misses is None else f"{100 * r.misses:.1f} %",
                          "-" if r.auroc is None else f"{r.auroc:.3f}")
        con.print(table)
        taken = report.rows[0]
        if taken.false_alarms > HIGH_BASE:
            con.print(f"the good images as taken are flagged {100 * taken.false_alarms:.0f} % of the time: give more "
                      "references, or run `adcopilot calibrate`, before reading the rises below")
        costly = report.costly()
        if costly:
            con.print(f"hold steady (false alarms {100 * COSTLY:.0f} points or more above their baseline): "
                      + "; ".join(f"{r.condition} +{100 * rise:.0f}" for r, rise in costly))
        else:
            con.print(f"no condition raised the false alarms by {100 * COSTLY:.0f} points or more")
        if report.good < 20:
            con.print(f"with {report.good} good images one false alarm is {100 / report.good:.0f} points: "
                      "give 20 or more for a steadier sheet")
        for s in report.skipped:
            con.print(f"skipped {s}")
