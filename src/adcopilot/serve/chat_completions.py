"""``POST /v1/chat/completions``: OpenAI's chat API in front of the copilot, whole or streamed.

How a request is read (images, query, question, history, options) is :mod:`adcopilot.serve.chat_request`.
How it is answered:

- a multiple-choice question (MMAD's block of lettered options) by ``Copilot.answer_choice``,
  exactly as the ``nano`` evaluation backend answers it, so a benchmark run through this endpoint
  scores what the backend scores; the reply is the option's letter;
- any other question by ``Copilot.ask`` after the earlier turns, streamed token by token with
  ``"stream": true`` (server-sent events in OpenAI's chunk format, ending with ``data: [DONE]``);
- object questions with the product context of the request (``product``, ``material``) or, without
  it, of its reference set (registered with one);
- by a model without a language model, from its detector where it can: the defect yes/no and
  defect-location choices as the evaluation backend's grounded rules give them, and a free
  yes/no or "where" question with the inspection's verdict and description; anything else is a 501.

The limits, reference sets and API key are the service's (:mod:`adcopilot.serve.service`). Errors
are OpenAI's JSON, ``{"error": {"message", "type", "param", "code"}}``: 400 (a malformed request,
the service's 422 included), 401 (API key), 404 (unknown reference set), 413 (body or image too
large), 415 (not an image), 501 (no language model for the question), 503 (the model is not loaded
yet), 500 (a fault of ours, logged). One that happens after a stream has begun is sent as an
``{"error": ...}`` event before ``data: [DONE]``.

Usage counts are in the language model's tokens: the prompt is the messages' text plus the
positions the model gives the images, the completion one per token it wrote (a letter: 1); a model
without a language model reads no tokens (0 and 0). ``finish_reason`` is "length" when the answer
used all of ``max_tokens``.

Usage::

    app.include_router(chat_completions_router(service, require_key))
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import closing
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from adcopilot.errors import AdcopilotError, ImageError
from adcopilot.grounding import detector_choice, grounded_start, verdict_question
from adcopilot.protocols import Answerer, StreamingAnswerer
from adcopilot.serve.chat_request import ChatLimits, ChatRequest, OpenAIError, parse_chat_request
from adcopilot.serve.reference_sets import request_context
from adcopilot.serve.service import InspectionService, ServiceError

log = logging.getLogger(__name__)

_WHERE = re.compile(r"\bwhere\b", re.IGNORECASE)
_CODES = {400: "invalid_request_error", 401: "invalid_api_key", 404: "not_found", 413: "request_too_large",
          415: "unsupported_media_type", 501: "not_implemented", 503: "service_unavailable", 500: "server_error"}


# --------------------------------------------------------------------------- errors
def error_body(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """(HTTP status, OpenAI's error JSON) for any error of a chat request."""
    param = code = None
    if isinstance(exc, OpenAIError):
        status, message, param, code = exc.status, str(exc), exc.param, exc.code
    elif isinstance(exc, ServiceError):
        status, message = (400 if exc.status == 422 else exc.status), str(exc)
    elif isinstance(exc, AdcopilotError):
        status, message = 400, str(exc)
    elif isinstance(exc, StarletteHTTPException):
        status, message = exc.status_code, str(exc.detail)
    else:
        log.error("chat completion failed: %s: %s", type(exc).__name__, exc, exc_info=exc)
        status, message = 500, f"internal error ({type(exc).__name__}); the service log has the details"
    kind = "invalid_request_error" if status < 500 else "not_implemented_error" if status == 501 else "server_error"
    return status, {"error": {"message": message, "type": kind, "param": param, "code": code or _CODES.get(status)}}


def _error_response(exc: BaseException) -> JSONResponse:
    status, body = error_body(exc)
    return JSONResponse(body, status_code=status)


class _OpenAIErrors(APIRoute):
    """A route whose every error, the API-key check's included, is OpenAI's error JSON."""

    def get_route_handler(self) -> Callable[[Request], Any]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:  # every error becomes an answer in the same shape
                return _error_response(exc)

        return handle


# --------------------------------------------------------------------------- answering
def limits(svc: InspectionService) -> ChatLimits:
    """The service's caps for chat requests. History and answer caps are the service
    configuration's where it defines them (``max_history_turns``, ``max_history_chars``,
    ``max_new_tokens``), else the same defaults."""
    cfg, d = svc.config, ChatLimits()
    return ChatLimits(
        max_images=cfg.max_references + 1, max_question_chars=cfg.max_question_chars,
        max_history_turns=getattr(cfg, "max_history_turns", d.max_history_turns),
        max_history_chars=getattr(cfg, "max_history_chars", d.max_history_chars),
        max_new_tokens=getattr(cfg, "max_new_tokens", d.max_new_tokens),
    )


def _detector_answer(cp: Any, query: bytes, refs: list[bytes], req: ChatRequest) -> str:
    """What a model without a language model can say from its inspection, else a 501."""
    no_lm = f"model '{cp.model_name}' has no language model: it answers only whether there is a defect and where"
    if req.options is not None:
        letter = detector_choice(cp.inspect(query, refs), req.question, req.options)
        if letter is None:
            raise ServiceError(f"{no_lm} (this question is neither)", 501)
        return letter
    if verdict_question(req.question) or _WHERE.search(req.question):
        r = cp.inspect(query, refs)
        return " ".join(filter(None, [grounded_start(r, req.question), r.description]))
    raise ServiceError(f"{no_lm}; ask 'Is there a defect?' or 'Where is the defect?'", 501)


def answer_pieces(cp: Any, req: ChatRequest) -> Iterator[str]:
    """The copilot's answer to ``req`` in pieces: one for a letter, one per token of a free answer."""
    query, refs = req.query[1], [d for _, d in req.references]
    if not isinstance(cp, Answerer):
        yield _detector_answer(cp, query, refs, req)
    elif req.options is not None:
        # As the nano evaluation backend asks it, so that scores through here equal its scores.
        yield str(cp.answer_choice(query, refs, req.question, req.options, **req.context))
    elif isinstance(cp, StreamingAnswerer):
        yield from cp.ask_stream(query, refs, req.question, history=req.history or None, max_new_tokens=req.max_tokens,
                                 **req.context)
    else:  # a model that answers only whole (the full-scale copilot)
        yield str(cp.ask(query, refs, req.question, history=req.history or None, max_new_tokens=req.max_tokens,
                         **req.context))


def _image_positions(cfg: Any, n_images: int) -> int:
    """Positions the nano language model gives ``n_images`` images (see language/model.py): per
    image a global token and G x G base tokens, once the comparison and anomaly-map tokens."""
    if not cfg.use_images:
        return 0
    g2 = cfg.grid * cfg.grid
    compare = cfg.num_compare + g2 + (2 if cfg.anchored else 0) if cfg.use_compare else 0
    return n_images * (1 + g2) + compare


def usage(cp: Any, req: ChatRequest, pieces: int) -> tuple[dict[str, int], str]:
    """(OpenAI's usage counts, finish reason) of an answer written in ``pieces`` (one per token
    of a free answer; see the module docstring)."""
    lang = getattr(cp, "language", None) if isinstance(cp, Answerer) else None
    model = getattr(lang, "model", None)  # the nano language model (loaded by now: it answered)
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        return {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}, "stop"
    n_images = len(req.references) + 1
    prompt = len(tok(req.text, add_special_tokens=False)["input_ids"]) + _image_positions(model.cfg, n_images)
    finish = "length" if req.options is None and pieces >= req.max_tokens else "stop"
    return {"prompt_tokens": prompt, "completion_tokens": pieces, "total_tokens": prompt + pieces}, finish


class ChatRun:
    """One answer computed in a worker thread that holds the model (one request at a time, as
    every model call of the service); its pieces reach the event loop as they are written.
    Stopping early (the client went away) ends the work after the current token."""

    _END = object()

    def __init__(self, svc: InspectionService, req: ChatRequest) -> None:
        self.svc, self.req = svc, req
        self.started = time.monotonic()  # the service's time limit counts from here
        self.usage: dict[str, int] = {}
        self.finish_reason = "stop"
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._stop = threading.Event()
        self._loop = asyncio.get_running_loop()
        threading.Thread(target=self._work, daemon=True, name="adcopilot-chat").start()

    def _put(self, item: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the event loop is gone (server shutting down): nobody is listening
            self._stop.set()

    def _work(self) -> None:
        svc, req = self.svc, self.req
        try:
            cp = svc.copilot
            n = 0
            with svc._model(self.started):
                try:
                    with closing(answer_pieces(cp, req)) as pieces:
                        for piece in pieces:
                            if self._stop.is_set():
                                break
                            n += 1
                            if piece:  # an empty one: a token whose text waits for the next
                                self._put(piece)
                except ImageError as exc:
                    raise ServiceError(svc._name_refs(str(exc), req.references)) from None
                self.usage, self.finish_reason = usage(cp, req, n)
            self._put(self._END)
        except Exception as exc:  # handed to the request, which answers it as OpenAI's error JSON
            self._put(exc)

    def stop(self) -> None:
        """No more pieces are wanted: the work ends after the current token."""
        self._stop.set()

    async def pieces(self) -> AsyncIterator[str]:
        while True:
            item = await self._queue.get()
            if item is self._END:
                return
            if isinstance(item, Exception):
                raise item
            yield item


def _check_images(svc: InspectionService, req: ChatRequest) -> None:
    """The service's checks of the query and references (format, pixels, count, reference set),
    and the product context (the request's, else its reference set's). The model is then given the
    bytes, not the decoded query: its caches know images by content."""
    svc._query(req.query)
    entry = svc._sets.get(req.reference_set) if req.reference_set else None
    req.references = svc._references(req.references, req.reference_set)
    req.context = request_context(entry, req.product, req.material, svc.copilot)


# --------------------------------------------------------------------------- responses
def _event(obj: Any) -> str:
    return f"data: {json.dumps(obj)}\n\n"


async def _sse(run: ChatRun, first: str | None, rest: AsyncIterator[str], head: dict[str, Any]) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk format; the answer's first piece is already known."""
    extra = {"usage": None} if run.req.include_usage else {}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _event({**head, "object": "chat.completion.chunk", "choices": [choice], **extra})

    yield chunk({"role": "assistant", "content": ""})
    try:
        if first is not None:
            yield chunk({"content": first})
        async for piece in rest:
            yield chunk({"content": piece})
    except Exception as exc:
        yield _event(error_body(exc)[1])
        yield "data: [DONE]\n\n"
        return
    finally:
        run.stop()  # also when the client has gone away and the response is cancelled
    yield chunk({}, run.finish_reason)
    if run.req.include_usage:
        yield _event({**head, "object": "chat.completion.chunk", "choices": [], "usage": run.usage})
    yield "data: [DONE]\n\n"


_SCHEMA = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["model", "messages"],
    "properties": {
        "model": {"type": "string"},
        "messages": {"type": "array", "items": {"type": "object"},
                     "description": "OpenAI chat messages; images as image_url data URLs, the last image the query."},
        "max_tokens": {"type": "integer", "minimum": 1},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2, "description": "Ignored: answers are greedy."},
        "stream": {"type": "boolean"},
        "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
        "reference_set": {"type": "string", "description": "Id of registered references (then one image: the query)."},
    }}}}}}


def chat_completions_router(svc: InspectionService, require_key: Callable[..., None]) -> APIRouter:
    """The ``/v1/chat/completions`` route over ``svc``, behind the service's API-key check."""
    router = APIRouter(route_class=_OpenAIErrors)

    @router.post("/v1/chat/completions", tags=["chat"], dependencies=[Depends(require_key)], openapi_extra=_SCHEMA)
    async def chat_completions(request: Request) -> Response:
        """OpenAI's chat completions: reference image(s) and the query (last) as data URLs, a
        question; the answer whole or, with ``"stream": true``, as server-sent events."""
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            raise OpenAIError(f"request body: malformed JSON ({type(exc).__name__})") from None
        req = parse_chat_request(body, limits(svc))
        model = svc.copilot.model_name
        await run_in_threadpool(_check_images, svc, req)
        run = ChatRun(svc, req)
        rest = run.pieces()
        try:
            first = await anext(rest, None)  # an error before the first piece is an HTTP error
        except BaseException:
            run.stop()
            raise
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": model}
        if req.stream:
            return StreamingResponse(_sse(run, first, rest, head), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            text = (first or "") + "".join([p async for p in rest])
        finally:
            run.stop()
        message = {"role": "assistant", "content": text}
        return JSONResponse({**head, "object": "chat.completion", "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": run.finish_reason}],
            "usage": run.usage})

    return router
