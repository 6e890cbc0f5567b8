"""An OpenAI chat-completions request read into what the copilot needs: images, question, history.

The rules (the README's "Serve" section says the same):

- **Images** are the ``image_url`` parts of user messages, as data URLs
  (``data:image/png;base64,...``; any format the service reads). An http(s) URL is refused: the
  service never fetches. Over the whole conversation, in order, the **last image is the query and
  every earlier one a normal reference** (MMAD's order: templates first, query last). With
  ``reference_set`` (an id from ``POST /v1/references``) the conversation holds one image, the query.
- **Product context**: ``product`` and ``material`` (strings, this service's own fields) label what
  the references show, for object questions; without them a reference set's own label is used.
- **The question** is the text of the last message, which must be the user's. When that text ends
  with a multiple-choice block as MMAD writes it (``"Question: <text> \\n"`` then one
  ``"A. <option>"`` line per option; the last block when it lists several), the question is that
  block's and the answer is an option letter.
- **History**: the text of the earlier user and assistant messages. System and developer messages
  are ignored (the copilot has its own instructions).
- ``max_tokens`` (or ``max_completion_tokens``) is lowered to the service's answer cap;
  ``temperature`` may be anything in [0, 2] and is ignored (answers are always greedy, so
  repeatable); ``n`` must be 1; ``stream`` and ``stream_options.include_usage`` as OpenAI's.
  Tools, log-probabilities, stop sequences and non-text response formats are refused; other fields
  (``seed``, ``top_p``, ``user``, ``chat_template_kwargs``, ...) are ignored.

Every violation is an :class:`OpenAIError` naming the field (``param``) and the problem.

Usage::

    req = parse_chat_request(json.loads(body), ChatLimits(max_images=17))
    req.query, req.references, req.question, req.options, req.history
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from typing import Any

Upload = tuple[str, bytes]  # (name, content), as the service takes uploads


class OpenAIError(Exception):
    """A refused request, answered as OpenAI's error JSON with ``status``."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None) -> None:
        super().__init__(" ".join(message.split()))
        self.status, self.param, self.code = status, param, code


@dataclass
class ChatLimits:
    """The service's caps, as they apply to a chat request."""

    max_images: int = 17  # the query and up to 16 references
    max_question_chars: int = 2000
    max_history_turns: int = 16
    max_history_chars: int = 8000
    max_new_tokens: int = 64


@dataclass
class ChatRequest:
    """What a chat request asks of the copilot."""

    query: Upload
    references: list[Upload]
    reference_set: str | None
    question: str
    options: dict[str, str] | None  # a multiple-choice question's options, letter -> text
    history: list[dict[str, str]] = field(default_factory=list)
    max_tokens: int = 64
    stream: bool = False
    include_usage: bool = False
    text: str = ""  # every message's text, for the usage counts
    product: str | None = None  # what the references show, as the request gives it
    material: str | None = None
    context: dict[str, str] = field(default_factory=dict)  # ask's product/material arguments (set by the service)


_ROLES = ("system", "developer", "user", "assistant")
_REFUSED = {  # field -> why; refused when set to anything but null / false / empty
    "tools": "tools are not supported",
    "functions": "functions are not supported",
    "tool_choice": "tools are not supported",
    "logprobs": "log-probabilities are not supported",
    "top_logprobs": "log-probabilities are not supported",
    "stop": "stop sequences are not supported",
}
# MMAD's question block: "Question: <text> \n" then "A. <option>\n" lines, at the end of the text.
_MCQ = re.compile(r"Question: (?P<q>[^\n]*?) ?\n(?P<opts>(?:[A-Z]\. [^\n]*(?:\n|$))+)\s*$")
_OPTION = re.compile(r"^([A-Z])\. (.*)$", re.M)


def parse_mcq(text: str) -> tuple[str, dict[str, str]] | None:
    """(question, options) of the last MMAD-style question block ending ``text``, or None."""
    at = text.rfind("Question: ")
    if at < 0:
        return None
    m = _MCQ.match(text, at)
    if m is None:
        return None
    options: dict[str, str] = {}
    for letter, option in _OPTION.findall(m.group("opts")):
        if letter in options:
            return None
        options[letter] = option
    return (m.group("q"), options) if len(options) >= 2 else None


def decode_data_url(url: str, param: str) -> bytes:
    """The bytes of a base64 ``data:image/...`` URL; refuses other URLs in one line."""
    low = url[:16].lower()
    if low.startswith(("http://", "https://")):
        raise OpenAIError(f"{param}: image URLs are not fetched; send the image as a data URL "
                          "(data:image/png;base64,...)", param=param, code="image_url_not_supported")
    head, sep, data = url.partition(",")
    if not low.startswith("data:") or not sep:
        raise OpenAIError(f"{param}: not a data URL; expected data:image/<format>;base64,<data>", param=param)
    kind, *params = head[5:].split(";")
    if "base64" not in params:
        raise OpenAIError(f"{param}: the data URL is not base64 (expected data:image/<format>;base64,...)", param=param)
    if kind and not kind.lower().startswith("image/"):
        raise OpenAIError(f"{param}: '{kind}' is not an image type", 415, param)
    try:
        raw = base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        raise OpenAIError(f"{param}: malformed base64 in the data URL", param=param) from None
    if not raw:
        raise OpenAIError(f"{param}: the data URL holds no data", param=param)
    return raw


def _text_and_images(content: Any, param: str, images: list[Upload] | None) -> str:
    """The text of a message's ``content`` (a string or parts); its images are appended to
    ``images`` (None: images are not allowed in this message)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise OpenAIError(f"{param}: expected a string or a list of content parts", param=param)
    texts = []
    for j, part in enumerate(content):
        p = f"{param}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise OpenAIError(f"{p}.text: expected a string", param=f"{p}.text")
            texts.append(part["text"])
        elif kind == "image_url":
            if images is None:
                raise OpenAIError(f"{p}: only user messages may hold images", param=p)
            spec = part.get("image_url")
            url = spec.get("url") if isinstance(spec, dict) else spec
            if not isinstance(url, str):
                raise OpenAIError(f"{p}.image_url.url: expected a string (a data URL)", param=f"{p}.image_url.url")
            images.append((p, decode_data_url(url, f"{p}.image_url.url")))
        else:
            raise OpenAIError(f"{p}: unsupported content part type {kind!r}; use 'text' or 'image_url'", param=p)
    return "".join(texts)


def _int(body: dict[str, Any], key: str, low: int) -> int | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise OpenAIError(f"{key}: expected an integer of at least {low}, got {v!r}", param=key)
    return v


def _options(body: dict[str, Any]) -> None:
    """Checks of the sampling and feature fields (see the module docstring)."""
    for key, why in _REFUSED.items():
        if body.get(key) not in (None, False, [], {}):
            raise OpenAIError(f"{key}: {why} by this service", param=key, code="unsupported_parameter")
    t = body.get("temperature")
    if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t <= 2):
        raise OpenAIError(f"temperature: expected a number from 0 to 2, got {t!r}", param="temperature")
    n = _int(body, "n", 1)
    if n not in (None, 1):
        raise OpenAIError(f"n: only 1 choice per request (answers are greedy), got {n}", param="n")
    fmt = body.get("response_format")
    if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type") != "text"):
        raise OpenAIError("response_format: only {'type': 'text'} is supported", param="response_format")


def parse_chat_request(body: Any, limits: ChatLimits) -> ChatRequest:
    """The copilot's reading of a chat-completions request body (parsed JSON)."""
    if not isinstance(body, dict):
        raise OpenAIError("the request body must be a JSON object")
    if not isinstance(body.get("model"), str):
        raise OpenAIError("model: required, a string (any name: the service answers with its one model)", param="model")
    _options(body)
    stream = body.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise OpenAIError(f"stream: expected true or false, got {stream!r}", param="stream")
    so = body.get("stream_options") or {}
    if not isinstance(so, dict) or not isinstance(so.get("include_usage", False), bool):
        raise OpenAIError("stream_options: expected {'include_usage': true|false}", param="stream_options")
    rset = body.get("reference_set")
    if rset is not None and not isinstance(rset, str):
        raise OpenAIError("reference_set: expected the id of a registered reference set", param="reference_set")
    for key in ("product", "material"):
        if body.get(key) is not None and not isinstance(body[key], str):
            raise OpenAIError(f"{key}: expected a string (what the references show)", param=key)
    asked = _int(body, "max_completion_tokens", 1) or _int(body, "max_tokens", 1)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise OpenAIError("messages: required, a non-empty list", param="messages")
    images: list[Upload] = []
    turns: list[dict[str, str]] = []
    for i, m in enumerate(messages):
        p = f"messages[{i}]"
        role = m.get("role") if isinstance(m, dict) else None
        if role not in _ROLES:
            raise OpenAIError(f"{p}.role: expected one of {', '.join(_ROLES)}, got {role!r}", param=f"{p}.role")
        text = _text_and_images(m.get("content"), f"{p}.content", images if role == "user" else None)
        if role in ("user", "assistant"):
            turns.append({"role": role, "content": text})
    if messages[-1].get("role") != "user":
        raise OpenAIError("messages: the last message must be the user's question", param=f"messages[{len(messages) - 1}]")
    if not images:
        raise OpenAIError("messages: no image; send the normal reference(s) and the query (last) as image_url data URLs",
                          param="messages")
    if len(images) > limits.max_images:
        raise OpenAIError(f"messages: too many images ({len(images)}, limit {limits.max_images})", param="messages")
    last = turns.pop()["content"]
    mcq = parse_mcq(last)
    question = mcq[0] if mcq else last.strip()
    if not question.strip():
        raise OpenAIError("messages: the last user message has no text (the question)", param=f"messages[{len(messages) - 1}]")
    if len(question) > limits.max_question_chars:
        raise OpenAIError(f"the question is too long ({len(question):,} characters, limit {limits.max_question_chars:,})",
                          param=f"messages[{len(messages) - 1}]")
    history = [t for t in turns if t["content"].strip()]
    if len(history) > limits.max_history_turns:
        raise OpenAIError(f"messages: too many earlier turns ({len(history)}, limit {limits.max_history_turns})",
                          param="messages")
    chars = sum(len(t["content"]) for t in history)
    if chars > limits.max_history_chars:
        raise OpenAIError(f"messages: earlier turns too long ({chars:,} characters, limit {limits.max_history_chars:,})",
                          param="messages")
    return ChatRequest(
        query=images[-1], references=images[:-1], reference_set=rset, question=question,
        options=mcq[1] if mcq else None, history=history,
        max_tokens=min(asked or limits.max_new_tokens, limits.max_new_tokens), stream=bool(stream),
        include_usage=bool(so.get("include_usage", False)),
        text="".join(t["content"] for t in turns) + last, product=body.get("product"), material=body.get("material"),
    )
