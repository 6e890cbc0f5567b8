"""The ``adcopilot`` command line: a thin layer that parses, calls the API and prints.

User mistakes (bad files, unknown options, missing assets) print one line on stderr and exit
with status 2; an interruption exits with 130. A file-system error on a named path that no command
turned into its own message (an output folder where a file is, a read-only disk) is the same one
line, naming the path. Tracebacks are shown only with ``--debug``.
"""

from __future__ import annotations

import errno
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
from adcopilot.paths import readable

app = typer.Typer(
    name="adcopilot",
    help="AD-Copilot: find, box and explain defects by comparing a query with normal references.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_DEBUG = {"on": False}

#: Plain words for the file-system errors a user's path causes (errno -> text).
_PATH_ERRORS = {
    errno.EEXIST: "a file is there, not a folder",
    errno.ENOTDIR: "part of the path is a file, not a folder",
    errno.EISDIR: "is a folder, not a file",
    errno.ENOENT: "no such file or folder",
    errno.EACCES: "permission denied",
    errno.EPERM: "not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on the device",
    errno.ENAMETOOLONG: "file name too long",
}


def path_error_line(exc: OSError) -> str | None:
    """One line for an OSError about a named path (``None`` when it names none: a real fault)."""
    if exc.filename is None:
        return None
    reason = _PATH_ERRORS.get(exc.errno or 0, exc.strerror or type(exc).__name__)
    if exc.errno == errno.EEXIST and os.path.isdir(exc.filename):
        reason = "already exists"  # a folder made without exist_ok: not the file-for-a-folder mix-up
    return f"{readable(os.fsdecode(exc.filename))}: {reason}"


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
    "inspect", "chat", "demo", "batch", "calibrate", "tolerance", "serve", "adapt", "curate", "train", "eval", "export", "models",
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
    except OSError as exc:
        line = path_error_line(exc)
        if line is None or _DEBUG["on"]:
            raise
        typer.echo(f"error: {line}", err=True)
        sys.exit(2)
