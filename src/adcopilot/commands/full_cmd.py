"""``adcopilot full parity``: one pair through every variant of the full-scale model, dumped to a folder."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table


def register(app: typer.Typer) -> None:
    full = typer.Typer(help="Tools for the full-scale model (Qwen2.5-VL + Comparison Encoder).", no_args_is_help=True)

    @full.command("parity")
    def parity(
        model: Path = typer.Option(..., "--model", "-m", help="A full-scale checkpoint folder."),
        query: Path = typer.Option(..., "--query", help="The query image."),
        ref: list[Path] = typer.Option(..., "--ref", "-r", help="A normal reference image (repeatable)."),
        out: Path = typer.Option(..., "--out", "-o", help="Folder for parity.safetensors and parity.json."),
        prompt: str = typer.Option(None, "--prompt", help="The question (default: the authors' yes/no question)."),
        max_new_tokens: int = typer.Option(8, "--max-new-tokens", help="Greedy tokens generated per variant."),
        device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1, ..."),
        dtype: str = typer.Option("auto", "--dtype", help="auto (the checkpoint's), float32, bfloat16, float16."),
    ) -> None:
        """Run QUERY and its references through every attention layout x position scheme and dump
        the comparison tokens, position ids, last-token logits and first generated tokens of each."""
        from adcopilot.full.parity import run_parity

        summary = run_parity(model, query, ref, out, prompt=prompt, max_new_tokens=max_new_tokens,
                             device=device, dtype=dtype)
        table = Table(title=f"{model}: checkpoint variant {summary['checkpoint_variant']}")
        for col in ("variant", "first generated tokens"):
            table.add_column(col)
        for name, v in summary["variants"].items():
            table.add_row(name, repr(v["generated_text"]))
        Console().print(table)
        typer.echo(f"written: {out / 'parity.safetensors'}, {out / 'parity.json'}")

    app.add_typer(full, name="full")
