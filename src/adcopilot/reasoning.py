"""The answer inside a reasoning model's reply: ``<think>...</think>`` first, then the answer.

AD-Copilot-Thinking (and other reasoning models served to ``eval``) write their reasoning between
``<think>`` and ``</think>`` before the answer; some wrap the answer in ``<answer>...</answer>``,
and some chat templates open the ``<think>`` in the prompt so only ``</think>`` appears. Every
consumer of an answer (``inspect``, ``ask``, the eval backends) reads it with :func:`final_answer`.

Usage::

    split_reasoning("<think>The crack is at the top.</think>A")   # ("The crack is at the top.", "A")
    final_answer("<think>unfinished")                             # "" (no answer was reached)
    final_answer("B")                                             # "B"
"""

from __future__ import annotations

import re

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
_ANSWER = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.S)


def split_reasoning(text: str) -> tuple[str | None, str]:
    """(reasoning or None, answer) of a reply.

    The answer is what follows the last ``</think>`` (inside ``<answer>`` tags when present); a
    reply whose reasoning never closed has an empty answer; a reply without tags is all answer."""
    close = text.rfind(THINK_CLOSE)
    if close >= 0:
        head, answer = text[:close], text[close + len(THINK_CLOSE):]
        open_at = head.find(THINK_OPEN)
        reasoning = head[open_at + len(THINK_OPEN):] if open_at >= 0 else head
    elif THINK_OPEN in text:  # cut off while reasoning: no answer
        return text[text.find(THINK_OPEN) + len(THINK_OPEN):].strip(), ""
    else:
        reasoning, answer = None, text
    tagged = _ANSWER.search(answer)
    if tagged:
        answer = tagged.group(1)
    return (reasoning.strip() if reasoning is not None else None), answer.strip()


def final_answer(text: str) -> str:
    """The answer after the reasoning (the whole reply, stripped, when there is none)."""
    return split_reasoning(text)[1]
