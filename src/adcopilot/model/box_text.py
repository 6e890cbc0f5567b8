"""Boxes written as text: the localization prompt and the parser of box answers.

The prompt asks for Qwen2.5-VL's box JSON, ``[{"bbox_2d": [x1, y1, x2, y2], "label": ...}]``; the
parser reads such an answer leniently (code fences and text around the JSON ignored, small JSON
faults repaired, bare ``[x1, y1, x2, y2]`` lists accepted) into raw coordinates in the answer's
own frame. The full-scale model and the nano language model answer with it at run time; the
MMAD-BBox scorer (:mod:`adcopilot.eval.bbox`) maps the coordinates to query pixels.

Usage::

    bbox_prompt(1)                                       # "The first image is a normal sample. ..."
    parse_box_text('[{"bbox_2d": [1, 2, 30, 40]}]')      # [[1.0, 2.0, 30.0, 40.0]]
"""

from __future__ import annotations

import json
import re
from typing import Any

#: The localization prompt (after the images): AD-Copilot's pair wording, Qwen2.5-VL's box format.
BBOX_PROMPT = (
    "{intro} The last image is the query sample. Compare the query with the normal {ref} and "
    "locate every defect in the query image. Output the bounding boxes in JSON: "
    '[{{"bbox_2d": [x1, y1, x2, y2], "label": "defect name"}}], in pixel coordinates of the query '
    "image. Output [] if the query image has no defect."
)

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.S)
_KEYED = re.compile(r"[\"']?(?:bbox_2d|bbox|box)[\"']?\s*:\s*\[\s*([^\[\]]*?)\s*\]")
_BARE = re.compile(r"\[\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*\]")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_EMPTY = re.compile(r"^\s*\[\s*\]\s*$")


def bbox_prompt(n_refs: int) -> str:
    """The localization prompt for ``n_refs`` normal references followed by the query."""
    if n_refs == 1:
        intro, ref = "The first image is a normal sample.", "sample"
    else:
        intro, ref = f"The first {n_refs} images are normal samples.", "samples"
    return BBOX_PROMPT.format(intro=intro, ref=ref)


def _repair(text: str) -> str:
    t = text.strip().replace("'", '"')
    t = re.sub(r",\s*([\]}])", r"\1", t)  # trailing commas
    # Close brackets a truncated reply left open, innermost first.
    stack = []
    for ch in t:
        if ch in "[{":
            stack.append("]" if ch == "[" else "}")
        elif ch in "]}" and stack and stack[-1] == ch:
            stack.pop()
    return t + "".join(reversed(stack))


def _boxes_from_json(obj: Any) -> list[list[float]] | None:
    """Boxes from a decoded JSON value, or None when it holds no box-shaped data."""
    if isinstance(obj, dict):
        for key in ("bbox_2d", "bbox", "box"):
            if key in obj:
                return _boxes_from_json(obj[key])
        for v in obj.values():  # e.g. {"defect_details": [...]}
            found = _boxes_from_json(v)
            if found is not None:
                return found
        return None
    if isinstance(obj, list):
        if len(obj) == 4 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in obj):
            return [[float(v) for v in obj]]
        out: list[list[float]] = []
        seen = False
        for v in obj:
            found = _boxes_from_json(v)
            if found is not None:
                seen = True
                out += found
        return out if seen or not obj else None
    return None


def parse_box_text(text: str) -> list[list[float]] | None:
    """Raw box coordinates in the reply's own frame; [] for an explicit empty answer; None if unparsable."""
    if not text or not text.strip():
        return None
    fenced = _FENCE.findall(text)
    candidates = [*fenced, text]
    for cand in candidates:
        if _EMPTY.match(cand):
            return []
        for attempt in (cand, _repair(cand)):
            start = min((i for i in (attempt.find("["), attempt.find("{")) if i >= 0), default=-1)
            if start < 0:
                continue
            try:
                obj, _ = json.JSONDecoder().raw_decode(attempt[start:])
            except json.JSONDecodeError:
                continue
            found = _boxes_from_json(obj)
            if found is not None:
                return found
    # Last resort: box-shaped fragments anywhere in the text.
    keyed = [[float(v) for v in _NUMBER.findall(m.group(1))] for m in _KEYED.finditer(text)]
    keyed = [b for b in keyed if len(b) == 4]
    if keyed:
        return keyed
    bare = [[float(v) for v in m.groups()] for m in _BARE.finditer(text)]
    return bare or None
