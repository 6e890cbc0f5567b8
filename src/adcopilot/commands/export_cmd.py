"""``adcopilot export onnx --model M --out model.onnx``: the dense path as an ONNX file."""

from __future__ import annotations

from pathlib import Path

import typer

from adcopilot.errors import AdcopilotError


def register(app: typer.Typer) -> None:
    export = typer.Typer(help="Export a model for other runtimes.", no_args_is_help=True)

    @export.command("onnx")
    def onnx(
        model: str = typer.Option("default", "--model", "-m", help="'default' or a nano checkpoint folder."),
        out: Path = typer.Option(..., "--out", "-o", help="The .onnx file to write."),
    ) -> None:
        """Vision tower + Comparison Encoder + dense head, the references' features as an input."""
        from adcopilot.model.nano import NanoDetector
        from adcopilot.model.onnx_export import export_onnx
        from adcopilot.model.registry import load_detector, resolve_model

        detector, meta = load_detector(resolve_model(model))
        if not isinstance(detector, NanoDetector):
            raise AdcopilotError(f"{model}: only a nano model (the default or an adapted one) has a dense path to export")
        path = export_onnx(detector, out, name=meta.get("name"))
        note = " (without its product memory)" if detector.memory is not None else ""
        typer.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB){note}; inspect with --model {path}")

    app.add_typer(export, name="export")
