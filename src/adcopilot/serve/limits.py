"""A cap on the request body of the service, enforced while the body streams in.

A ``Content-Length`` above the cap is refused at once with a JSON 413; a body without one
(chunked) is counted as it arrives and refused when it passes the cap, before the application has
buffered it all (the HTTP 413 raised from ``receive`` reaches the app's exception handlers).

Usage::

    app.add_middleware(BodyLimit, max_bytes=32 * 2**20)
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import HTTPException


def too_large_message(max_bytes: int) -> str:
    return f"request too large (limit {max_bytes:,} bytes)"


class BodyLimit:
    """ASGI middleware: 413 for request bodies over ``max_bytes``."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for k, v in scope.get("headers", []):
            if k == b"content-length" and v.isdigit() and int(v) > self.max_bytes:
                message = too_large_message(self.max_bytes)
                error: dict[str, Any] = {"detail": message}
                if scope.get("path", "").startswith("/v1/chat/"):  # OpenAI's error shape for its API
                    error = {"error": {"message": message, "type": "invalid_request_error", "param": None,
                                       "code": "request_too_large"}}
                body = json.dumps(error).encode()
                await send({"type": "http.response.start", "status": 413, "headers": [
                    (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close")]})
                await send({"type": "http.response.body", "body": body})
                return
        received = 0

        async def limited_receive() -> Any:
            nonlocal received
            msg = await receive()
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, too_large_message(self.max_bytes))
            return msg

        await self.app(scope, limited_receive, send)
