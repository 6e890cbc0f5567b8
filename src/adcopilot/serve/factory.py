"""The service built from settings in the environment: how each process of ``serve --workers N`` gets its app.

uvicorn starts worker processes itself and needs the application as an import string; each worker
calls :func:`app_from_environment`, which reads the settings ``serve`` put in
``$ADCOPILOT_SERVE_SETTINGS`` (JSON) and builds its own app with its own model, loaded in the
background (``/v1/ready`` answers 503 until it is). Each worker uses ``threads`` compute threads.

Usage::

    os.environ[SETTINGS_ENV] = ServeSettings(model="baseline", workers=2).to_json()
    uvicorn.run(APP_FACTORY, factory=True, workers=2)
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from fastapi import FastAPI

from adcopilot.api import Copilot
from adcopilot.errors import AdcopilotError
from adcopilot.line.runtime import default_threads, prepare_for_inference, set_compute_threads
from adcopilot.protocols import Inspector
from adcopilot.serve.app import create_app
from adcopilot.serve.service import ServeConfig

SETTINGS_ENV = "ADCOPILOT_SERVE_SETTINGS"
APP_FACTORY = "adcopilot.serve.factory:app_from_environment"


@dataclass
class ServeSettings:
    """What a worker needs to load its model and build its app."""

    model: str = "default"
    threshold: float | None = None
    calibration: str | None = None
    registration: bool = True
    threads: int | None = None  # per worker; None: the cores left by the server, shared among workers
    workers: int = 1
    config: dict[str, Any] = field(default_factory=dict)  # ServeConfig fields

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    def apply_threads(self) -> int:
        """Set this process's compute threads: ``threads``, else ``$OMP_NUM_THREADS``, else the
        cores but one (the servers' own work) shared among the workers."""
        threads = self.threads
        if threads is None and not os.environ.get("OMP_NUM_THREADS"):
            threads = max(1, default_threads(1) // max(1, self.workers))
        return set_compute_threads(threads)

    def load(self) -> Inspector:
        return prepare_for_inference(Copilot.load(
            self.model, threshold=self.threshold, registration=self.registration, calibration=self.calibration
        ))


def settings_from_environment() -> ServeSettings:
    raw = os.environ.get(SETTINGS_ENV)
    if not raw:
        raise AdcopilotError(f"${SETTINGS_ENV} is not set: start the service with 'adcopilot serve'")
    try:
        return ServeSettings(**json.loads(raw))
    except (json.JSONDecodeError, TypeError) as exc:
        raise AdcopilotError(f"${SETTINGS_ENV}: not the settings 'adcopilot serve' writes ({exc})") from None


def app_from_environment() -> FastAPI:
    """One worker's app: its own model, loading in the background."""
    s = settings_from_environment()
    s.apply_threads()
    return create_app(s.load, ServeConfig(**s.config))
