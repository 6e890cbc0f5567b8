"""The ``adcopilot`` command line: a thin layer that parses, calls the API and prints.

User mistakes (bad files, unknown options, missing assets) print one line on stderr and exit
with status 2; an interruption exits with 130. Tracebacks are shown only with ``--debug``.
"""

from __future__ import annotations

import logging
import os
import sys

import typer

try:  # typer >= 0.26 vendors click
    from typer._click import exceptions as click_exc
except ImportError:  # pragma: no cover
    from click import exceptions as click_exc

from adcopilot import __version__
from adcopilot.errors import AdcopilotError

app = typer.Typer(
    name="adcopilot",
    help="AD-Copilot: find, box and explain defects by comparing a query with normal references.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_DEBUG = {"on": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"adcopilot {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    _DEBUG["on"] = debug
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


#: Every command module under adcopilot.commands, in the order of the help listing.
COMMANDS = (
    "inspect", "chat", "demo", "batch", "calibrate", "serve", "adapt", "curate", "train", "eval", "export", "models",
    "full",
)


def _register_commands() -> None:
    import importlib

    for name in COMMANDS:
        importlib.import_module(f"adcopilot.commands.{name}_cmd").register(app)


_register_commands()


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        code = app(args=argv, standalone_mode=False)
        # Without standalone mode typer *returns* the status of an Exit (130 after Ctrl-C).
        if isinstance(code, int) and not isinstance(code, bool) and code != 0:
            if code == 130:
                typer.echo("interrupted", err=True)
            sys.exit(code)
    except AdcopilotError as exc:
        if _DEBUG["on"]:
            raise
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except click_exc.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
