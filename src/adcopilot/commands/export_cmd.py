"""``adcopilot export onnx|openvino --model M --out FILE``: the dense path as an ONNX file or an OpenVINO IR pair."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
        from adcopilot.model.onnx_export import export_onnx

        detector, meta = _nano(model)
        path = export_onnx(detector, out, name=meta.get("name"))
        note = " (without its product memory)" if detector.memory is not None else ""
        typer.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB){note}; inspect with --model {path}")

    @export.command("openvino")
    def openvino(
        model: str = typer.Option("default", "--model", "-m", help="'default' or a nano checkpoint folder."),
        out: Path = typer.Option(..., "--out", "-o", help="The .xml file to write (its weights beside it, .bin)."),
    ) -> None:
        """The same graph as `export onnx`, converted for OpenVINO's runtime (float32)."""
        from adcopilot.model.openvino_export import export_openvino

        detector, meta = _nano(model)
        path = export_openvino(detector, out, name=meta.get("name"))
        size = (path.stat().st_size + path.with_suffix(".bin").stat().st_size) / 1e6
        note = " (without its product memory)" if detector.memory is not None else ""
        typer.echo(f"wrote {path} and {path.with_suffix('.bin').name} ({size:.1f} MB){note}; inspect with --model {path}")

    app.add_typer(export, name="export")


def _nano(model: str) -> tuple[Any, dict[str, Any]]:
    """The nano detector ``model`` names, or a one-line refusal."""
    from adcopilot.model.nano import NanoDetector
    from adcopilot.model.registry import load_detector, resolve_model

    detector, meta = load_detector(resolve_model(model))
    if not isinstance(detector, NanoDetector):
        raise AdcopilotError(f"{model}: only a nano model (the default or an adapted one) has a dense path to export")
    return detector, meta
