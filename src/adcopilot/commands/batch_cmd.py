"""``adcopilot batch QUERIES --refs NORMALS [--out DIR]``: inspect a whole lot, resumably, with a report.

``--mutual`` scores every image against the lot's other images instead (no reference needed), or
together with the references when ``--refs`` is given too (:mod:`adcopilot.line.lot`).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("batch")
    def batch(
        queries: list[Path] = typer.Argument(..., help="Folders (searched recursively), images or CSV lists."),
        refs: list[Path] = typer.Option(None, "--refs", help="Normal reference images or folders (repeatable)."),
        mutual: bool = typer.Option(
            False, "--mutual",
            help="Score each image against its most similar other images of the lot (no references needed; "
            "with --refs both must agree it is normal).",
        ),
        mutual_k: float = typer.Option(
            None, "--mutual-k", help="With --mutual: the lot's threshold is median + K robust deviations (default 1.5)."
        ),
        lot_refs: int = typer.Option(
            0, "--lot-refs",
            help="With --mutual and no --refs: also inspect each image with the model against its N nearest images "
            "the lot judged normal, both scores joined on the lot's scale (helps aligned parts; 3 is a good start).",
        ),
        aligned: bool = typer.Option(
            False, "--aligned",
            help="With --mutual and no --refs: the lot's parts are aligned (cells, parts in a fixture); PaDiM fitted "
            "on the lot itself joins the score. Ranks worse on loose parts; best with 50 images or more.",
        ),
        out: Path = typer.Option(Path("batch-results"), "--out", "-o", help="Output folder (re-runs resume here)."),
        shots: int = typer.Option(1, "--shots", "-k", help="Nearest normal references per query."),
        shard: str = typer.Option(None, "--shard", help="Process only shard i of n, e.g. 2/4 (deterministic)."),
        model: str = typer.Option("default", "--model", "-m", help="'default', 'baseline' or a checkpoint folder."),
        threshold: float = typer.Option(
            None, "--threshold",
            help="Decision threshold (default: calibrated, else the model's; with --mutual alone: of the mutual "
            "score, or with --lot-refs or --aligned of the joined score, default the lot's own).",
        ),
        calibration: Path = typer.Option(None, "--calibration", help="Use this calibration.json."),
        no_register: bool = typer.Option(False, "--no-register", help="Do not align queries onto references."),
        no_images: bool = typer.Option(False, "--no-images", help="Do not write annotated images."),
        refocus: bool = typer.Option(
            False, "--refocus",
            help="Compare a query much softer than its references (a camera out of focus) with them softened to match.",
        ),
        workers: int = typer.Option(2, "--workers", help="Image-loading threads (per actor with --engine ray)."),
        threads: int = typer.Option(
            None, "--threads",
            help="Model compute threads (default: the cores left by --workers; with --engine ray: CPUs per actor, 1).",
        ),
        chunk: int = typer.Option(8, "--chunk", help="Queries per model step; results are written after each."),
        engine: str = typer.Option("local", "--engine", help="'local' (this process) or 'ray' (a pool of actors)."),
        address: str = typer.Option(None, "--address", help="Ray cluster to run on (with --engine ray; default: a local Ray)."),
        actors: int = typer.Option(None, "--actors", help="Ray actors, one model each (default: CPUs / --threads)."),
        restart: bool = typer.Option(False, "--restart", help="Discard this shard's earlier results."),
        no_check_refs: bool = typer.Option(
            False, "--no-check-refs",
            help="Do not compare a pool of references among themselves before the run (it names a defective, blank "
            "or foreign one; the references are used as given either way).",
        ),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
        as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    ) -> None:
        """Inspect every query against its nearest normal reference(s); CSV, JSONL, images, HTML report."""
        from adcopilot.errors import AdcopilotError, require_finite
        from adcopilot.line.batch import BatchConfig, run_batch
        from adcopilot.line.runtime import ModelLoader, set_compute_threads
        from adcopilot.line.sources import collect, parse_shard

        if threshold is not None:
            require_finite(threshold, "--threshold")
        if engine not in ("local", "ray"):
            raise AdcopilotError(f"--engine '{engine}': use local or ray")
        for name, value in (("--chunk", chunk), ("--actors", actors), ("--threads", threads)):
            if value is not None and value < 1:
                raise AdcopilotError(f"{name} must be at least 1, got {value}")
        if lot_refs and (lot_refs < 0 or not mutual or refs):
            raise AdcopilotError(f"--lot-refs needs --mutual, no --refs (the references are the lot's own) and a "
                                 f"positive count, got {lot_refs}")
        if aligned and (not mutual or refs):
            raise AdcopilotError("--aligned needs --mutual and no --refs (PaDiM is fitted on the lot itself; with normal "
                                 "references, adcopilot adapt fits it on them)")
        if not refs and not mutual:
            raise AdcopilotError("give normal references with --refs, or score the lot against itself with --mutual")
        if mutual_k is not None:
            require_finite(mutual_k, "--mutual-k")
            if not mutual or mutual_k <= 0:
                raise AdcopilotError(f"--mutual-k needs --mutual and a positive number, got {mutual_k}")
        if mutual and engine == "ray":
            raise AdcopilotError("--mutual needs --engine local: every image is scored against the whole lot, "
                                 "which one process holds")
        if engine != "ray" and (address or actors):
            raise AdcopilotError("--address and --actors need --engine ray")
        if engine == "ray":  # Ray is imported only when asked for: it is an optional extra, slow to import
            from adcopilot.line.ray_engine import RayConfig, require_ray, run_batch_ray

            require_ray()
        cfg = BatchConfig(
            shots=shots, shard=parse_shard(shard), workers=workers, chunk=chunk, save_images=not no_images,
            restart=restart, progress=not quiet, check_references=not no_check_refs,
        )
        items = collect(queries)
        # With --mutual alone, --threshold is the lot score's: the model (asked with --lot-refs) keeps its own.
        model_threshold = None if mutual and not refs else threshold
        loader = ModelLoader(model, model_threshold, not no_register, None if calibration is None else str(calibration),
                             refocus)
        if engine == "ray":
            rcfg = RayConfig(address=address, actors=actors, cpus_per_actor=threads or 1)
            s = run_batch_ray(loader, items, refs, out, cfg, rcfg)
        elif mutual:
            from adcopilot.line.lot import MutualConfig, run_mutual_batch
            from adcopilot.model.mutual import MAD_K

            set_compute_threads(threads, reserve=max(1, workers))
            mcfg = MutualConfig(mad_k=MAD_K if mutual_k is None else mutual_k,
                                threshold=None if refs else threshold, lot_refs=lot_refs, aligned=aligned)
            s = run_mutual_batch(loader(), items, refs or None, out, cfg, mcfg)
        else:
            set_compute_threads(threads, reserve=max(1, workers))
            s = run_batch(loader(), items, refs, out, cfg)
        summary = json.loads(s.files["summary"].read_text()) if "summary" in s.files else {}
        if as_json:
            typer.echo(json.dumps({
                "out": str(out), "shard": list(cfg.shard), "in_shard": s.total, "done_before": s.done_before,
                "processed": s.processed, "skipped": [{"file": f, "reason": r} for f, r in s.skipped],
                "lot_notes": s.lot_notes,
                "seconds": round(s.seconds, 2), "images_per_second": round(s.images_per_second, 2),
                "report": {k: str(v) for k, v in s.files.items()}, "summary": summary,
            }, indent=2))
            return
        typer.echo(
            f"shard {cfg.shard[0]}/{cfg.shard[1]}: {s.total} queries, {s.done_before} done before, "
            f"{s.processed} inspected in {s.seconds:.1f} s ({s.images_per_second:.1f} images/s), {len(s.skipped)} skipped"
        )
        for f, reason in s.skipped[:10]:
            typer.echo(f"  skipped {f}: {reason}")
        if len(s.skipped) > 10:
            typer.echo(f"  ... {len(s.skipped) - 10} more in {s.files['skipped']}")
        for note in s.reference_notes:
            typer.echo(f"  look at {note}")
        for note in s.lot_notes:
            typer.echo(f"  note: {note}")
        if summary:
            line = f"lot so far: {summary['inspected']} inspected, {summary['anomalous']} anomalous, {summary['normal']} normal"
            t = summary.get("truth")
            if t:
                ok = t["overkill_rate"] if t["overkill_rate"] is not None else 0.0
                ms = t["miss_rate"] if t["miss_rate"] is not None else 0.0
                line += f"; overkill {t['overkill']}/{t['normal']} ({100 * ok:.1f}%), miss {t['miss']}/{t['defective']} ({100 * ms:.1f}%)"
            typer.echo(line)
            typer.echo(f"report: {s.files['html']}  table: {s.files['csv']}")
