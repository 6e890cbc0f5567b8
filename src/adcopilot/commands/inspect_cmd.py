"""``adcopilot inspect QUERY --ref REF [--ref ...]``: verdict, score, boxes, annotated image."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console


def register(app: typer.Typer) -> None:
    @app.command("inspect")
    def inspect(
        query: Path = typer.Argument(..., help="The image to inspect."),
        ref: list[Path] = typer.Option(..., "--ref", "-r", help="A normal reference image (repeatable)."),
        model: str = typer.Option("default", "--model", "-m", help="'default', 'baseline' or a checkpoint folder."),
        threshold: float = typer.Option(None, "--threshold", help="Decision threshold (default: calibrated, else the model's for the number of references)."),
        calibration: Path = typer.Option(None, "--calibration", help="Use this calibration.json (from adcopilot calibrate)."),
        no_register: bool = typer.Option(False, "--no-register", help="Do not align the query onto the reference."),
        refocus: bool = typer.Option(
            False, "--refocus",
            help="Compare a query much softer than its references (a camera out of focus) with them softened to match.",
        ),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
        save: Path = typer.Option(None, "--save", help="Write the annotated query image here."),
        ask: str = typer.Option(None, "--ask", help="A question about the pair, answered in words."),
        product: str = typer.Option(None, "--product", help="What the references show (e.g. 'bottle'): object questions use it."),
        material: str = typer.Option(None, "--material", help="The product's material (e.g. 'brown glass')."),
        knowledge: list[Path] = typer.Option(None, "--knowledge", help="Extra knowledge: YAML, or MMAD's domain_knowledge.json."),
    ) -> None:
        """Compare QUERY with normal reference images and report defects."""
        from adcopilot.api import Copilot
        from adcopilot.errors import require_finite
        from adcopilot.language.answering import context_options
        from adcopilot.protocols import require_answerer
        from adcopilot.visualize import save_annotated

        if threshold is not None:
            require_finite(threshold, "--threshold")
        cp = Copilot.load(model, threshold=threshold, registration=not no_register, calibration=calibration)
        cp.refocus = refocus
        answerer = require_answerer(cp) if ask else None
        context = context_options(answerer if ask else cp, product, material, [str(k) for k in knowledge or []])
        if answerer is not None:
            answerer.preload_language()  # loads while the pair is inspected
        result = cp.inspect(query, ref)
        if answerer is not None:
            result.answer = answerer.ask(query, ref, ask, result=result, **context)
        if save is not None:
            save_annotated(query, result, save)
        if as_json:
            d = result.to_dict()
            if save is not None:
                d["annotated_image"] = str(save)
            typer.echo(__import__("json").dumps(d, indent=2))
            return
        con = Console()
        colour = {"anomalous": "red", "normal": "green"}.get(result.verdict, "yellow")
        con.print(f"[bold {colour}]{result.verdict.upper()}[/]  score {result.score:.4f}  "
                  f"(threshold {result.threshold:.4f}, model {result.model})")
        for b in result.boxes:
            con.print(f"  {b.label:<14} bbox_2d={b.bbox_2d}  score {b.score:.3f}")
        con.print(result.description)
        for note in result.notes:
            con.print(f"[yellow]Note:[/] {note}")
        if result.verdict == "unknown" and result.raw_answer is not None:
            con.print(f"[bold]The model's answer (no verdict could be read from it):[/] {result.raw_answer}")
        if result.answer:
            con.print(f"[bold]Answer:[/] {result.answer}")
        if save is not None:
            con.print(f"annotated image: {save}")
