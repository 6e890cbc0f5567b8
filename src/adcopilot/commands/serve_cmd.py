"""``adcopilot serve [--host --port]``: the REST service and web page (FastAPI + uvicorn)."""

from __future__ import annotations

import os
from pathlib import Path

import typer


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
        threads: int = typer.Option(None, "--threads", help="Model compute threads (default: all cores but one)."),
    ) -> None:
        """Serve the model over HTTP: /v1/inspect, /v1/ask, /v1/references, /v1/health, /v1/models, and a web page at /."""
        import uvicorn

        from adcopilot.api import Copilot
        from adcopilot.errors import AdcopilotError, require_finite
        from adcopilot.serve.app import create_app
        from adcopilot.serve.service import ServeConfig

        if threshold is not None:
            require_finite(threshold, "--threshold")
        if not 0 < port < 65536:
            raise AdcopilotError(f"--port {port}: not a TCP port (1-65535)")
        if max_upload_mb <= 0 or max_pixels <= 0 or max_references <= 0:
            raise AdcopilotError("--max-upload-mb, --max-pixels and --max-references must be positive")
        from adcopilot.line.runtime import prepare_for_inference, set_compute_threads

        set_compute_threads(threads, reserve=1)  # one core for the server's own work
        cp = prepare_for_inference(
            Copilot.load(model, threshold=threshold, registration=not no_register, calibration=calibration)
        )
        cfg = ServeConfig(api_key=api_key or None, max_upload_bytes=int(max_upload_mb * 2**20),
                          max_pixels=max_pixels, max_references=max_references)
        typer.echo(f"adcopilot serving model {cp.model_name} (threshold {cp.threshold:.4f}) on http://{host}:{port}/"
                   + ("  [API key required]" if cfg.api_key else ""))
        if host not in ("127.0.0.1", "localhost", "::1") and not cfg.api_key:
            typer.echo("warning: listening beyond this machine without an API key", err=True)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        uvicorn.run(create_app(cp, cfg), host=host, port=port, log_level="warning")
