"""The conversation history a client sends with a question: read it, bounded, before any model work.

The language model's time grows with the prompt, so an unbounded history would let one request
hold the model for minutes. ``history`` is a JSON list of ``{"role", "content"}`` turns; it is
refused (422) when it has more than ``max_turns`` turns or ``max_chars`` characters of content, and
when it nests deeper than a list of objects, which is checked on the raw text before parsing (a
deeply nested document would otherwise exhaust the JSON reader's recursion).

Usage::

    turns = parse_history('[{"role": "user", "content": "Is it cracked?"}]', max_turns=16, max_chars=8000)
"""

from __future__ import annotations

import json

from adcopilot.errors import AdcopilotError

#: A list of objects holding strings: two levels of brackets.
MAX_DEPTH = 2


def nesting_depth(text: str, stop_after: int) -> int:
    """Deepest bracket nesting of a JSON text (strings skipped); stops counting past ``stop_after``."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > stop_after:
                break
        elif ch in "]}":
            depth -= 1
    return deepest


def parse_history(text: str | None, *, max_turns: int, max_chars: int) -> list[dict[str, str]] | None:
    """The turns of ``text`` (None when empty), or an error naming the limit it breaks."""
    if not text:
        return None
    # JSON escapes (\\uXXXX) may take six characters for one: allow for them, refuse far more.
    if len(text) > 6 * max_chars + 64 * max_turns:
        raise AdcopilotError(f"history: too long ({len(text):,} characters of JSON, limit {max_chars:,} of content)")
    if nesting_depth(text, MAX_DEPTH) > MAX_DEPTH:
        raise AdcopilotError('history: nested too deeply; expected a list of {"role": ..., "content": ...}')
    try:
        turns = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AdcopilotError(f"history: malformed JSON ({exc.msg})") from None
    ok = isinstance(turns, list) and all(
        isinstance(t, dict) and t.get("role") in ("user", "assistant") and isinstance(t.get("content"), str)
        for t in turns
    )
    if not ok:
        raise AdcopilotError('history: expected a list of {"role": "user"|"assistant", "content": "..."}')
    if len(turns) > max_turns:
        raise AdcopilotError(f"history: too many turns ({len(turns)}, limit {max_turns})")
    chars = sum(len(t["content"]) for t in turns)
    if chars > max_chars:
        raise AdcopilotError(f"history: too long ({chars:,} characters, limit {max_chars:,})")
    return [{"role": t["role"], "content": t["content"]} for t in turns]
