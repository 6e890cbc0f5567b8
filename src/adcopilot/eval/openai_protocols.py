"""How the benchmark's published runs talked to a chat endpoint: the ``qwen`` and ``gpt4o`` protocols.

The ``openai`` evaluation backend sends MMAD's questions in one of two ways, each the request of
one of the benchmark's own query scripts (or a third, ``files``, for this project's own server):

``qwen`` (the Qwen2.5-VL script, one question per request)
    The instruction, the template sentence, the template(s), the query and one question
    (:func:`adcopilot.eval.mmad.official_prompt`); images as PNG after the resize the script's
    ``qwen_vl_utils`` applies on the client (sides rounded to multiples of 28 within
    4 x 28^2 .. 16384 x 28^2 pixels; the server's processor then applies its own ``min_pixels`` /
    ``max_pixels``); greedy decoding (temperature 0) and 128 new tokens. The script rendered
    the chat template with ``add_vision_id=True`` ("Picture 1: " before each image); an
    OpenAI-compatible server that renders the template itself (vLLM) is asked for the same
    through ``chat_template_kwargs``.

``gpt4o`` (the GPT-4o script, questions accumulated turn by turn)
    All images first (templates, then the query), each a JPEG fitted into a 512 x 512 box
    (scaled up or down, OpenCV's area interpolation) with ``detail: low``, then one text block:
    the script's own instruction (it asks for a numbered list of answers), the template
    sentence, "The last image is the query image", the question list. Question *i* is asked
    with questions 1..i of the image in the same block, and its answer is the reply's last
    option letter. ``max_tokens`` 200 and nothing else (the server's default temperature, as
    the script). A reply containing a refusal word ("please", "sorry", "today",
    "cannot assist") is asked again.

``files`` (the ``qwen`` request with the images as they are)
    The ``qwen`` protocol's request, each image sent as its file's own bytes (no resize, no
    re-encoding, no "Picture N:" labels): for a server that decodes and resizes images itself,
    such as ``adcopilot serve``, so that it sees what a local backend reads from the files.

Usage::

    proto = protocol("gpt4o")
    url, size = proto.encode(path, max_image_size=None)
    text = gpt4o_text(n_refs=1, questions=[*item.earlier(q), q])
"""

from __future__ import annotations

import base64
import io
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from adcopilot.errors import AdcopilotError
from adcopilot.eval.mmad import Question
from adcopilot.imaging import load_image

PROTOCOLS = ("qwen", "gpt4o", "files")

#: The GPT-4o script's instruction, verbatim (leading and trailing newlines included).
GPT4O_INSTRUCTION = (
    "\nYou are an industrial inspector who checks products by images. You should judge whether there is a "
    "defect in the query image and answer the questions about it.\n"
    "Answer with the option's letter from the given choices directly!\n\n"
    "Finally, you should output a list of answer, such as:\n"
    "1. Answer: B.\n2. Answer: B.\n3. Answer: A.\n...\n"
)
#: Words that make the GPT-4o script ask again (compared with the lower-cased reply).
REFUSAL_WORDS = ("please", "sorry", "today", "cannot assist")
GPT4O_BOX = 512  # the side of the box every image is fitted into
GPT4O_MAX_TOKENS = 200
QWEN_MAX_TOKENS = 128

# qwen_vl_utils' defaults for an image given by path (the Qwen script sets no bounds per image).
QWEN_FACTOR = 28
QWEN_CLIENT_MIN_PIXELS = 4 * 28 * 28
QWEN_CLIENT_MAX_PIXELS = 16384 * 28 * 28


def gpt4o_text(n_refs: int, questions: Sequence[Question]) -> str:
    """The GPT-4o script's text block for the questions asked so far (its spacing kept)."""
    intro = (
        f"The first {n_refs} image is the normal sample, which can be used as a template to compare."
        if n_refs else ""
    )
    listed = "".join(q.formatted() + "\n" for q in questions)
    return GPT4O_INSTRUCTION + intro + "The last image is the query image" + "Following is the question list: " + "\n" + listed


def is_refusal(text: str) -> bool:
    """Whether the GPT-4o script would ask again after this reply."""
    low = text.lower()
    return any(w in low for w in REFUSAL_WORDS)


def smart_resize(w: int, h: int, factor: int = 28, min_pixels: int = 56 * 56, max_pixels: int = 28 * 28 * 1280) -> tuple[int, int]:
    """Qwen2-VL's resize rule: sides multiples of ``factor``, pixel count within the bounds -> (w, h)."""
    hb, wb = max(factor, round(h / factor) * factor), max(factor, round(w / factor) * factor)
    if hb * wb > max_pixels:
        beta = math.sqrt((h * w) / max_pixels)
        hb, wb = max(factor, math.floor(h / beta / factor) * factor), max(factor, math.floor(w / beta / factor) * factor)
    elif hb * wb < min_pixels:
        beta = math.sqrt(min_pixels / (h * w))
        hb, wb = math.ceil(h * beta / factor) * factor, math.ceil(w * beta / factor) * factor
    return wb, hb


def qwen_client_size(w: int, h: int) -> tuple[int, int]:
    """(w, h) after ``qwen_vl_utils``' resize of an image given by path (its default bounds)."""
    return smart_resize(w, h, QWEN_FACTOR, QWEN_CLIENT_MIN_PIXELS, QWEN_CLIENT_MAX_PIXELS)


def _data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def qwen_image(path: str | os.PathLike, max_image_size: int | None) -> tuple[str, tuple[int, int]]:
    """A PNG data URL of the image as the Qwen script's client sends it, and its size (w, h).

    ``max_image_size`` first thumbnails the long side to that many pixels (None: the file's size).
    """
    img = load_image(path)
    if max_image_size and max(img.size) > max_image_size:
        img = img.copy()
        img.thumbnail((max_image_size, max_image_size))
    size = qwen_client_size(*img.size)
    if size != img.size:
        img = img.resize(size)  # PIL's default filter, as qwen_vl_utils
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return _data_url("image/png", buf.getvalue()), img.size


def gpt4o_image(path: str | os.PathLike, max_image_size: int | None) -> tuple[str, tuple[int, int]]:
    """A JPEG data URL of the image fitted into a ``max_image_size`` box (default 512) as the
    GPT-4o script encodes it (scale = min(box / w, box / h), sides truncated, area interpolation),
    and the size sent (w, h)."""
    box = max_image_size or GPT4O_BOX
    rgb = np.asarray(load_image(path))  # validates the file (one clear error when it is bad)
    # Decoded by OpenCV as the script decodes it (JPEG decoders differ by a grey level or so);
    # the validated pixels where OpenCV cannot read the path.
    bgr = cv2.imread(os.fspath(path), cv2.IMREAD_COLOR)
    if bgr is None or bgr.shape[:2] != rgb.shape[:2]:
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    h, w = bgr.shape[:2]
    scale = min(box / w, box / h)
    size = (max(1, int(w * scale)), max(1, int(h * scale)))
    resized = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(".jpg", resized)
    if not ok:
        raise AdcopilotError(f"{path}: cannot encode as JPEG")
    return _data_url("image/jpeg", encoded.tobytes()), size


def file_image(path: str | os.PathLike, max_image_size: int | None) -> tuple[str, tuple[int, int]]:
    """The image file's own bytes as a data URL of its format, and its size (w, h); an image
    larger than ``max_image_size`` is thumbnailed and sent as PNG instead."""
    img = load_image(path)  # validates the file (one clear error when it is bad)
    if max_image_size and max(img.size) > max_image_size:
        img = img.copy()
        img.thumbnail((max_image_size, max_image_size))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return _data_url("image/png", buf.getvalue()), img.size
    data = Path(path).read_bytes()
    with Image.open(io.BytesIO(data)) as im:
        fmt = (im.format or "PNG").lower()
    return _data_url(f"image/{fmt}", data), img.size


@dataclass(frozen=True)
class Protocol:
    """What differs between the two published ways of asking."""

    name: str
    encode: Callable[[str | os.PathLike, int | None], tuple[str, tuple[int, int]]]
    image_detail: str | None  # "low" for gpt4o; None sends no detail field
    max_tokens: int
    greedy: bool  # send temperature 0 and a seed (qwen) or leave sampling to the server (gpt4o)
    accumulate: bool  # ask question i with questions 1..i in one text block
    retry_refusals: bool


_PROTOCOLS = {
    "qwen": Protocol("qwen", qwen_image, None, QWEN_MAX_TOKENS, greedy=True, accumulate=False, retry_refusals=False),
    "gpt4o": Protocol("gpt4o", gpt4o_image, "low", GPT4O_MAX_TOKENS, greedy=False, accumulate=True, retry_refusals=True),
    "files": Protocol("files", file_image, None, QWEN_MAX_TOKENS, greedy=True, accumulate=False, retry_refusals=False),
}


def protocol(name: str) -> Protocol:
    """The protocol called ``name``; raises for an unknown one."""
    if name not in _PROTOCOLS:
        raise AdcopilotError(f"unknown --protocol '{name}'; use {' or '.join(PROTOCOLS)}")
    return _PROTOCOLS[name]
