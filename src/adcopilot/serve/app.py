"""The REST service and web page (FastAPI): inspect pairs, register reference sets, ask questions.

Endpoints (OpenAPI schema at ``/openapi.json``)::

    GET  /                       the web page (upload or drop a pair, verdict, heat-map, boxes, chat)
    GET  /v1/health              liveness, readiness (model loaded or not) and the loaded model
    GET  /v1/ready               200 once the model is loaded, 503 before (for load balancers)
    GET  /v1/models              the model, its threshold and calibration
    POST /v1/inspect             multipart: query + reference(s) or reference_set [+ threshold, heatmap]
    POST /v1/ask                 multipart: query + reference(s) or reference_set + question [+ history]
    POST /v1/references          multipart: references (+ name, product, material) -> {"id": ...}
    GET  /v1/references          registered sets;   DELETE /v1/references/{id}
    POST /v1/chat/completions    OpenAI's chat API, streamed or not (see chat_completions.py)

Errors are JSON ``{"detail": "<one line>"}``: 401 (API key), 404 (unknown reference set), 413 (body
or image too large), 415 (unsupported format), 422 (bad input), 501 (no language model), 503 (model
not loaded yet, the request ran past its time limit, or the queue for the model is full: then with
``Retry-After``), 500 (a fault of ours, logged).
With an API key configured, every ``/v1`` endpoint but ``/v1/health`` needs ``X-API-Key: KEY`` (or
``Authorization: Bearer KEY``). The model runs one batch at a time (inspections that arrive
together share it); uploads are read, decoded and registered in parallel.
A request that takes longer than ``request_timeout_s`` is answered 503 (its model work, bounded by
the caps on questions, history and answer length, finishes in the background).

Usage::

    app = create_app(Copilot.load(), ServeConfig(api_key="secret"))
    app = create_app(lambda: Copilot.load("baseline"))   # loads in the background; /v1/ready says when
    uvicorn.run(app, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

import functools
import hmac
import logging
import threading
from collections.abc import Callable
from importlib import resources
from typing import Annotated, Any, TypeVar

import anyio
from fastapi import Depends, FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from adcopilot import __version__
from adcopilot.errors import AdcopilotError
from adcopilot.protocols import Inspector
from adcopilot.serve.chat_completions import chat_completions_router
from adcopilot.serve.form_fields import form_fields
from adcopilot.serve.limits import BodyLimit
from adcopilot.serve.page import page_html
from adcopilot.serve.service import InspectionService, ServeConfig, ServiceError, Upload

log = logging.getLogger(__name__)
T = TypeVar("T")

_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="The service's API key, if one is set.")
_bearer = HTTPBearer(auto_error=False, description="The API key as a bearer token (alternative to X-API-Key).")


def _page() -> str:
    return page_html(resources.files("adcopilot.serve").joinpath("static"))


async def _read(files: list[UploadFile] | None) -> list[Upload]:
    return [(f.filename or f"upload {i + 1}", await f.read()) for i, f in enumerate(files or [])]


def _load_in_background(svc: InspectionService, load: Callable[[], Inspector]) -> None:
    def run() -> None:
        try:
            svc.set_copilot(load())
        except AdcopilotError as exc:
            svc.set_copilot(None, str(exc))
        except Exception as exc:  # the service stays up and says why it is not ready
            log.exception("loading the model failed")
            svc.set_copilot(None, f"{type(exc).__name__}: {exc}")

    threading.Thread(target=run, daemon=True, name="adcopilot-model-load").start()


def create_app(copilot: Inspector | Callable[[], Inspector], config: ServeConfig | None = None) -> FastAPI:
    """The FastAPI application serving ``copilot``, or the copilot that ``copilot()`` loads (in a
    background thread: the service answers at once and is ready when the model is)."""
    cfg = config or ServeConfig()
    svc = InspectionService(copilot if isinstance(copilot, Inspector) else None, cfg)
    if not isinstance(copilot, Inspector):
        _load_in_background(svc, copilot)

    async def in_time(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run model work in a thread; past the time limit answer 503 and leave it to finish alone."""
        try:
            with anyio.fail_after(cfg.request_timeout_s):
                return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs), abandon_on_cancel=True)
        except TimeoutError:
            raise ServiceError(f"the request took longer than its time limit ({cfg.request_timeout_s:g} s)", 503) from None
    app = FastAPI(
        title="adcopilot",
        version=__version__,
        description="Industrial anomaly detection by comparison with normal references: verdict, boxes, answers.",
        docs_url=None,  # the interactive docs load scripts from a CDN; the line is offline
        redoc_url=None,
        form_limits={"max_files": cfg.max_references + 2, "max_fields": 16},
    )
    app.add_middleware(BodyLimit, max_bytes=cfg.max_upload_bytes)
    app.state.service = svc
    page = _page()

    def require_key(
        key: Annotated[str | None, Depends(_key_header)],
        bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        if cfg.api_key is None:
            return
        given = key or (bearer.credentials if bearer else None)
        if not given or not hmac.compare_digest(given.encode(), cfg.api_key.encode()):
            raise ServiceError("missing or wrong API key (send X-API-Key)", 401)

    app.include_router(chat_completions_router(svc, require_key))  # its errors in OpenAI's shape

    @app.exception_handler(AdcopilotError)
    async def _adcopilot_error(_: Request, exc: AdcopilotError) -> JSONResponse:
        status = exc.status if isinstance(exc, ServiceError) else 422
        retry = exc.retry_after_s if isinstance(exc, ServiceError) else None
        return JSONResponse({"detail": str(exc)}, status_code=status,
                            headers={"Retry-After": str(retry)} if retry is not None else None)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for e in exc.errors():
            loc_parts = list(e.get("loc", ()))
            if loc_parts and loc_parts[0] in ("body", "query", "path", "header", "cookie"):
                loc_parts = loc_parts[1:]  # where it came from; the field name follows
            loc = ".".join(str(x) for x in loc_parts)
            parts.append(f"{loc}: {e.get('msg', 'invalid')}" if loc else str(e.get("msg", "invalid")))
        return JSONResponse({"detail": "; ".join(parts) or "invalid request"}, status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.error("internal error: %s: %s", type(exc).__name__, exc)
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}); the service log has the details"},
                            status_code=500)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/v1/health", tags=["service"])
    def health() -> dict[str, Any]:
        """Liveness, readiness (model loaded), the model, uptime, requests served, cached reference sets."""
        return svc.health()

    @app.get("/v1/ready", tags=["service"])
    def ready() -> dict[str, Any]:
        """200 once the model is loaded; 503 while it loads or when it could not be loaded."""
        return {"ready": True, "model": svc.copilot.model_name}  # svc.copilot: 503 until loaded

    @app.get("/v1/models", tags=["service"], dependencies=[Depends(require_key)])
    def models() -> dict[str, Any]:
        """The loaded model: image size, threshold (and whether it is calibrated), language model."""
        return svc.models()

    inspect_fields = form_fields(("query", "reference_set", "threshold", "heatmap", "preview"), repeatable=("references",))
    ask_fields = form_fields(("query", "question", "reference_set", "history", "product", "material"),
                             repeatable=("references",))
    set_fields = form_fields(("name", "product", "material"), repeatable=("references",))

    @app.post("/v1/inspect", tags=["inspection"], dependencies=[Depends(require_key), Depends(inspect_fields)])
    async def inspect(
        query: Annotated[UploadFile, File(description="The image to inspect.")],
        references: Annotated[list[UploadFile] | None, File(description="Normal reference image(s).")] = None,
        reference_set: Annotated[str | None, Form(description="Id of a registered reference set.")] = None,
        threshold: Annotated[float | None, Form(description="Decision threshold (default: the model's).")] = None,
        heatmap: Annotated[bool, Form(description="Also return the anomaly map: a PNG overlay and a coarse grid of its values.")] = False,
        preview: Annotated[bool, Form(description="Also return the query and the first reference as JPEGs (for formats a browser cannot show).")] = False,
    ) -> dict[str, Any]:
        """Compare the query with normal references: verdict, score, boxes (query pixels), description."""
        q = (await _read([query]))[0]
        refs = await _read(references)
        return await in_time(svc.inspect, q, refs, reference_set, threshold=threshold, heatmap=heatmap, preview=preview)

    @app.post("/v1/ask", tags=["inspection"], dependencies=[Depends(require_key), Depends(ask_fields)])
    async def ask(
        query: Annotated[UploadFile, File(description="The image the question is about.")],
        question: Annotated[str, Form(description="The question, in words.")],
        references: Annotated[list[UploadFile] | None, File(description="Normal reference image(s).")] = None,
        reference_set: Annotated[str | None, Form(description="Id of a registered reference set.")] = None,
        history: Annotated[str | None, Form(description='Earlier turns, JSON: [{"role": "user", "content": "..."}, ...]')] = None,
        product: Annotated[str | None, Form(description="What the references show (e.g. 'bottle'): object questions "
                                            "use it (default: the reference set's, if it has one).")] = None,
        material: Annotated[str | None, Form(description="The product's material (e.g. 'brown glass').")] = None,
    ) -> dict[str, Any]:
        """Answer a question about the pair (needs a model with a language model; 501 otherwise). A question
        with lettered options in its text ("... A. Yes B. No") is answered with one: ``choice`` and ``options``."""
        q = (await _read([query]))[0]
        refs = await _read(references)
        return await in_time(svc.ask, q, refs, reference_set, question, history, product, material)

    @app.post("/v1/references", tags=["references"], dependencies=[Depends(require_key), Depends(set_fields)])
    async def add_references(
        references: Annotated[list[UploadFile], File(description="Normal reference image(s).")],
        name: Annotated[str | None, Form(description="A name for the set.")] = None,
        product: Annotated[str | None, Form(description="What the references show (e.g. 'bottle'): object questions "
                                            "about the set's pairs use it unless a request gives its own.")] = None,
        material: Annotated[str | None, Form(description="The product's material (e.g. 'brown glass').")] = None,
    ) -> dict[str, Any]:
        """Register normal references once (optionally labelled with the product they show); inspect
        and ask with their id (their features stay cached)."""
        refs = await _read(references)
        return await in_time(svc.register_references, refs, name, product, material)

    @app.get("/v1/references", tags=["references"], dependencies=[Depends(require_key)])
    def list_references() -> dict[str, Any]:
        """The registered reference sets, most recently used last."""
        return svc.reference_sets()

    @app.delete("/v1/references/{set_id}", tags=["references"], dependencies=[Depends(require_key)])
    def delete_references(set_id: str) -> dict[str, Any]:
        """Forget a reference set and free its cached reference encodings."""
        return {"deleted": set_id, "freed_references": svc.delete_references(set_id)}

    return app
