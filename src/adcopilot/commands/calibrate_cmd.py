"""``adcopilot calibrate``: the threshold of least expected cost from labelled normal and defective images,
or, from normal images only, the most sensitive threshold within a false-alarm rate."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("calibrate")
    def calibrate(
        normals: list[Path] = typer.Option(None, "--normals", help="Labelled normal images: folders, files or CSV (repeatable)."),
        defects: list[Path] = typer.Option(None, "--defects", help="Labelled defective images (repeatable)."),
        refs: list[Path] = typer.Option(None, "--refs", help="Normal reference images or folders to compare with."),
        results: Path = typer.Option(None, "--results", help="Reuse the scores of a batch folder (truth from folder names)."),
        miss_cost: float = typer.Option(1.0, "--miss-cost", help="Cost of a missed defect."),
        false_alarm_cost: float = typer.Option(1.0, "--false-alarm-cost", help="Cost of a false alarm (overkill)."),
        target_miss_rate: float = typer.Option(None, "--target-miss-rate", help="Instead of costs: the highest threshold with at most this miss rate."),
        target_false_alarm_rate: float = typer.Option(
            None, "--target-false-alarm-rate",
            help="Instead of costs: the lowest threshold with at most this false-alarm rate on the normals "
            "(--defects then optional).",
        ),
        prevalence: float = typer.Option(None, "--prevalence", help="Share of defective parts on the line (default: that of the labelled set)."),
        shots: int = typer.Option(1, "--shots", "-k", help="Nearest normal references per image (with --results: the batch's)."),
        model: str = typer.Option("default", "--model", "-m", help="'default', 'baseline' or a checkpoint folder."),
        no_register: bool = typer.Option(False, "--no-register", help="Do not align images onto references."),
        out: Path = typer.Option(Path("calibration-run"), "--out", "-o", help="Work folder: scores, roc.png, cost.png."),
        save_to: Path = typer.Option(None, "--save", help="Write calibration.json here instead of the model's place."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Report only; do not store the threshold."),
        restart: bool = typer.Option(False, "--restart", help="Discard the scores --out holds (of other images or settings)."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
        as_json: bool = typer.Option(False, "--json", help="Print the calibration as JSON."),
    ) -> None:
        """Choose and store the decision threshold used by inspect, batch and serve."""
        from rich.console import Console
        from rich.table import Table

        from adcopilot.api import Copilot
        from adcopilot.errors import AdcopilotError
        from adcopilot.line import labelled_calibration as run
        from adcopilot.line.report import load_results, results_shots, scored_against_lot
        from adcopilot.line.runtime import prepare_for_inference, set_compute_threads

        # Check the arguments before loading the model.
        run.check_settings(miss_cost=miss_cost, false_alarm_cost=false_alarm_cost, target_miss_rate=target_miss_rate,
                           target_false_alarm_rate=target_false_alarm_rate, prevalence=prevalence)
        if results is not None:
            if normals or defects:
                raise AdcopilotError("use either --results or --normals/--defects, not both")
            if not results.is_dir():
                what = "a file, not a batch folder" if results.exists() else "no such batch folder"
                raise AdcopilotError(f"{results}: {what}")
        elif not normals or (not defects and target_false_alarm_rate is None):
            raise AdcopilotError(
                "calibration needs --normals and --defects (or --results from a batch); "
                "with --normals only, give --target-false-alarm-rate"
            )
        elif not refs:
            raise AdcopilotError("--refs is needed: the normal references the images are compared with")
        lot_run = False  # scores of a lot against itself: not the model's scale, never saved as its threshold
        set_compute_threads(None, reserve=2)  # as batch: two image-loading threads
        cp = prepare_for_inference(Copilot.load(model, registration=not no_register))  # scores: any threshold
        if results is not None:
            records, _ = load_results(results)
            source = f"batch results {results}"
            models = {r.get("model") for r in records} - {None}
            if models and models != {cp.model_name}:
                raise AdcopilotError(f"{results}: scored by model {sorted(models)}, not by '{cp.model_name}' (--model)")
            shots = results_shots(records, results)
            lot_run = scored_against_lot(records)
        else:
            records = run.score_items(cp, run.labelled_items(normals, defects), refs, out, shots=shots, progress=not quiet,
                                      restart=restart)
            source = f"normals {', '.join(map(str, normals))}"
            if defects:
                source += f"; defects {', '.join(map(str, defects))}"
        choice = run.choose_from_records(
            records, miss_cost=miss_cost, false_alarm_cost=false_alarm_cost,
            target_miss_rate=target_miss_rate, target_false_alarm_rate=target_false_alarm_rate, prevalence=prevalence,
        )
        charts = run.write_curves(choice, out, cp.model_name)
        record = run.calibration_record(cp, choice, shots=shots, source=source)
        path = None if dry_run or lot_run else run.save(record, model, save_to)
        if as_json:
            typer.echo(json.dumps({**record, "saved": str(path) if path else None, "lot_scores": lot_run,
                                   "charts": {k: str(v) for k, v in charts.items()}}, indent=2))
            return
        m, c = choice.metrics, choice.metrics["confusion"]
        con = Console()
        count = f"{shots} reference{'s' if shots > 1 else ''}" if shots else "any number of references"
        if lot_run:
            con.print(f"[bold]threshold {choice.threshold:.4f}[/] (of a lot scored against itself, batch --mutual)")
        else:
            con.print(f"[bold]threshold {choice.threshold:.4f}[/] (model {cp.model_name}; its own with {count} "
                      f"{cp.detector.threshold_for(shots or 1):.4f})")
        table = Table(title="confusion matrix", show_lines=True)
        table.add_column("")
        table.add_column("verdict normal")
        table.add_column("verdict anomalous")
        table.add_row("truly normal", str(c["tn"]), f"{c['fp']} (overkill)")
        table.add_row("truly defective", f"{c['fn']} (miss)", str(c["tp"]))
        con.print(table)
        bound = f" (95% upper bound {100 * m['overkill_upper95']:.1f}%)"
        if m["n_defective"]:
            con.print(f"overkill {c['fp']}/{m['n_normal']} ({100 * m['overkill']:.1f}%){bound}  miss {c['fn']}/{m['n_defective']} "
                      f"({100 * m['miss']:.1f}%)  AUROC {m['auroc']:.4f}  expected cost per part {choice.expected_cost:.4f}")
        else:
            con.print(f"overkill {c['fp']}/{m['n_normal']} ({100 * m['overkill']:.1f}%){bound}  miss unknown "
                      "(no defective images)")
        con.print("curves: " + "  ".join(str(v) for v in charts.values()))
        alike = f" with {count} and any count the model scores alike" if shots else ""
        if lot_run:
            con.print(f"not saved: these scores are on the lot's scale, not the model's; give the threshold to a lot "
                      f"scored the same way: batch --mutual --threshold {choice.threshold:.4f}")
        else:
            con.print(f"saved: {path} (used by inspect, batch and serve{alike})" if path else "not saved (--dry-run)")
