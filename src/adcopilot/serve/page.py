"""The web page as one self-contained HTML document.

Its parts are kept as separate files under ``static/`` (markup, styles, scripts); the page links
them, and here every link is replaced by the file's text, so the page served (or saved from the
browser) needs nothing else, from this service or from outside.
"""

from __future__ import annotations

import re
from importlib.resources.abc import Traversable

_LINKED = re.compile(r'<link rel="stylesheet" href="/static/([\w.-]+)">|<script src="/static/([\w.-]+)"></script>')


def page_html(static: Traversable) -> str:
    """``static``/index.html with its styles and scripts (files in ``static``) written in."""

    def inline(m: re.Match[str]) -> str:
        if m[1]:
            return f"<style>\n{static.joinpath(m[1]).read_text(encoding='utf-8')}</style>"
        return f"<script>\n{static.joinpath(m[2]).read_text(encoding='utf-8')}</script>"

    return _LINKED.sub(inline, static.joinpath("index.html").read_text(encoding="utf-8"))
