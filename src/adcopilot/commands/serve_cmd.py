"""``adcopilot serve [--host --port --workers N]``: the REST service and web page (FastAPI + uvicorn)."""

from __future__ import annotations

import errno
import os
import socket
import tempfile
from pathlib import Path

import typer


def listen_problem(host: str, port: int) -> str | None:
    """Why the service could not listen on ``host:port`` (None when a socket binds there now), as uvicorn
    binds: address reuse on, so a port left in TIME_WAIT by the last run is free."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"--host {host}: not an address of this machine ({exc.strerror})"
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            reason = {errno.EADDRINUSE: "already in use (another server?)",
                      errno.EACCES: "permission denied (ports below 1024 need privileges)",
                      errno.EADDRNOTAVAIL: "not an address of this machine"}.get(exc.errno or 0, exc.strerror)
            return f"--host {host} --port {port}: {reason}"
    return None


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0 for every interface)."),
        port: int = typer.Option(8000, "--port", "-p", help="TCP port."),
        model: str = typer.Option("default", "--model", "-m", help="'default', 'baseline' or a checkpoint folder."),
        threshold: float = typer.Option(None, "--threshold", help="Decision threshold (default: calibrated, else the model's)."),
        calibration: Path = typer.Option(None, "--calibration", help="Use this calibration.json."),
        no_register: bool = typer.Option(False, "--no-register", help="Do not align queries onto references."),
        api_key: str = typer.Option(None, "--api-key", envvar="ADCOPILOT_API_KEY",
                                    help="Require this key (X-API-Key header); also from $ADCOPILOT_API_KEY."),
        max_upload_mb: float = typer.Option(32.0, "--max-upload-mb", help="Largest request body, MB."),
        max_pixels: int = typer.Option(40_000_000, "--max-pixels", help="Largest image, in pixels."),
        max_references: int = typer.Option(16, "--max-references", help="Most references per request or set."),
        request_timeout: float = typer.Option(
            60.0, "--request-timeout", help="Longest a request may wait for and use the model, seconds (then 503)."),
        batch_window_ms: float = typer.Option(
            2.0, "--batch-window-ms", help="Longest an inspection waits for others arriving to share its model pass, ms "
            "(only while others are being received; 0: no waiting)."),
        max_batch: int = typer.Option(4, "--max-batch", help="Most inspections in one model pass."),
        max_queue: int = typer.Option(0, "--max-queue", help="Most inspections waiting for the model; more are "
                                      "answered 503 with Retry-After at once (0: no bound)."),
        max_history_turns: int = typer.Option(16, "--max-history-turns", help="Most earlier turns a question may carry."),
        max_new_tokens: int = typer.Option(64, "--max-new-tokens", help="Longest answer, in tokens."),
        workers: int = typer.Option(1, "--workers", help="Server processes, each with its own model."),
        sets_dir: Path = typer.Option(None, "--reference-sets", help="Keep registered reference sets in this folder "
                                      "(kept across restarts; default: in memory, or a temporary folder the workers share)."),
        threads: int = typer.Option(None, "--threads", help="Model compute threads per process (default: the cores "
                                    "but one, shared among the workers)."),
    ) -> None:
        """Serve the model over HTTP: /v1/inspect, /v1/ask, /v1/references, /v1/health, /v1/models, and a web page at /."""
        import uvicorn

        from adcopilot.errors import AdcopilotError, require_finite
        from adcopilot.serve.app import create_app
        from adcopilot.serve.factory import APP_FACTORY, SETTINGS_ENV, ServeSettings
        from adcopilot.serve.service import ServeConfig

        if threshold is not None:
            require_finite(threshold, "--threshold")
        if not 0 < port < 65536:
            raise AdcopilotError(f"--port {port}: not a TCP port (1-65535)")
        problem = listen_problem(host, port)  # before the model loads: a taken port is known in a second
        if problem:
            raise AdcopilotError(problem)
        if max_upload_mb <= 0 or max_pixels <= 0 or max_references <= 0:
            raise AdcopilotError("--max-upload-mb, --max-pixels and --max-references must be positive")
        if not require_finite(request_timeout, "--request-timeout") > 0:
            raise AdcopilotError(f"--request-timeout must be positive, got {request_timeout}")
        if not require_finite(batch_window_ms, "--batch-window-ms") >= 0:
            raise AdcopilotError(f"--batch-window-ms must be 0 or more, got {batch_window_ms}")
        if max_queue < 0:
            raise AdcopilotError(f"--max-queue must be 0 (no bound) or more, got {max_queue}")
        for flag, value in (("--max-history-turns", max_history_turns), ("--max-new-tokens", max_new_tokens),
                            ("--workers", workers), ("--max-batch", max_batch)):
            if value < 1:
                raise AdcopilotError(f"{flag} must be at least 1, got {value}")
        if sets_dir is not None:
            try:
                sets_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise AdcopilotError(f"{sets_dir}: cannot create the reference-set folder ({exc})") from None
        cfg = ServeConfig(api_key=api_key or None, max_upload_bytes=int(max_upload_mb * 2**20),
                          max_pixels=max_pixels, max_references=max_references, request_timeout_s=request_timeout,
                          max_history_turns=max_history_turns, max_new_tokens=max_new_tokens,
                          batch_window_ms=batch_window_ms, max_batch=max_batch, max_queue=max_queue or None,
                          sets_dir=None if sets_dir is None else str(sets_dir.absolute()))
        settings = ServeSettings(model=model, threshold=threshold, calibration=None if calibration is None else str(calibration),
                                 registration=not no_register, threads=threads, workers=workers, config=vars(cfg))
        settings.apply_threads()
        cp = settings.load()  # here too with several workers: a bad model or calibration fails now, in one line
        where = f"http://{host}:{port}/" + ("  [API key required]" if cfg.api_key else "")
        typer.echo(f"adcopilot serving model {cp.model_name} (threshold {cp.threshold:.4f}) on {where}"
                   + (f"  [{workers} worker processes; /v1/ready answers 200 once each has loaded]" if workers > 1 else ""))
        if host not in ("127.0.0.1", "localhost", "::1") and not cfg.api_key:
            typer.echo("warning: listening beyond this machine without an API key", err=True)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        if workers == 1:
            uvicorn.run(create_app(cp, cfg), host=host, port=port, log_level="warning")
            return
        del cp  # each worker process loads its own
        with tempfile.TemporaryDirectory(prefix="adcopilot-sets-") as shared:
            # A set registered with one worker must be known to all: they share a folder.
            settings.config["sets_dir"] = cfg.sets_dir or shared
            os.environ[SETTINGS_ENV] = settings.to_json()
            uvicorn.run(APP_FACTORY, factory=True, workers=workers, host=host, port=port, log_level="warning")
