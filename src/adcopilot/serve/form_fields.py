"""The multipart endpoints' fields checked by name: a misspelt or repeated field is refused.

FastAPI ignores form fields it was not told about and keeps the last of a repeated one. For an
inspection service both are silent wrong answers: ``thresold=0.3`` would be judged at the model's
threshold, and two ``query`` files would inspect one of them while the client believes both were.
So each endpoint names its fields, and which of them may repeat (the references).

Usage::

    @app.post("/v1/inspect", dependencies=[Depends(form_fields(("query", "threshold"), repeatable=("references",)))])
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Iterable

from fastapi import Request

from adcopilot.serve.service import ServiceError

_FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


def form_fields(single: Iterable[str], repeatable: Iterable[str] = ()) -> Callable[[Request], Awaitable[None]]:
    """A dependency refusing (422) a form field outside ``single`` and ``repeatable``, and one of
    ``single`` given more than once. Requests that are not forms are left to the endpoint's own checks."""
    once, many = tuple(single), tuple(repeatable)
    known = once + many

    async def check(request: Request) -> None:
        if not request.headers.get("content-type", "").startswith(_FORM_TYPES):
            return
        form = await request.form()  # parsed once by FastAPI already; this is its cached copy
        counts = Counter(name for name, _ in form.multi_items())
        unknown = sorted(name for name in counts if name not in known)
        if unknown:
            names = ", ".join(repr(n) for n in unknown)
            raise ServiceError(f"unknown field{'s' if len(unknown) > 1 else ''} {names} "
                               f"(this endpoint takes: {', '.join(known)})")
        repeated = [name for name in once if counts[name] > 1]
        if repeated:
            raise ServiceError(f"{repeated[0]}: given {counts[repeated[0]]} times; send it once")

    return check
