"""``adcopilot demo``: inspect a real pair of ELPV solar cells (one normal, one defective)."""

from __future__ import annotations

import shutil

import typer


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        model: str = typer.Option("default", "--model", "-m", help="'default', 'baseline' or a checkpoint folder."),
        kind: str = typer.Option("mono", "--kind", help="Cell type: mono or poly."),
    ) -> None:
        """Inspect a defective ELPV cell against a normal one of the same type."""
        from adcopilot import assets
        from adcopilot.api import Copilot
        from adcopilot.data.elpv import split
        from adcopilot.errors import AdcopilotError
        from adcopilot.visualize import save_annotated

        if kind not in ("mono", "poly"):
            raise AdcopilotError(f"--kind must be mono or poly, not '{kind}'")
        cells = split(seed=0)["test"]
        normal = next(c for c in cells if c.kind == kind and c.probability == 0.0)
        defective = next(c for c in cells if c.kind == kind and c.probability == 1.0)
        out = assets.home() / "demo"
        out.mkdir(parents=True, exist_ok=True)
        ref = shutil.copyfile(normal.path, out / f"reference_{normal.name}")
        query = shutil.copyfile(defective.path, out / f"query_{defective.name}")
        cp = Copilot.load(model)
        result = cp.inspect(query, [ref])
        annotated = save_annotated(query, result, out / f"annotated_{defective.name}")
        typer.echo(f"reference (normal):  {ref}")
        typer.echo(f"query (defective):   {query}")
        typer.echo(f"verdict: {result.verdict}  score {result.score:.4f}  threshold {result.threshold:.4f}  model {result.model}")
        for b in result.boxes:
            typer.echo(f"  {b.label} bbox_2d={b.bbox_2d} score {b.score:.3f}")
        typer.echo(result.description)
        typer.echo(f"annotated image: {annotated}")
