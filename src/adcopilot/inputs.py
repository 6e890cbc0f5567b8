"""Image inputs as the copilots take them: a display name, a cache key and the list of references.

An input is a path, encoded bytes, a PIL image or an array, or one of these cut to a centred box
(:class:`adcopilot.imaging.Framed`) (:data:`adcopilot.imaging.ImageInput`).
Both the detector's reference cache and the language side's per-pair cache key on
:func:`cache_key`, so the two agree on when an input is "the same image".
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from adcopilot.errors import AdcopilotError
from adcopilot.imaging import Framed, ImageInput


def source_name(src: ImageInput, fallback: str) -> str:
    """The path of a file input (also one cut to a frame), else ``fallback`` (e.g. "query", "reference 2")."""
    if isinstance(src, Framed):
        return source_name(src.source, fallback)
    return str(src) if isinstance(src, (str, os.PathLike)) else fallback


def reference_names(references: Sequence[ImageInput]) -> list[str]:
    """Display names of references, numbered from 1 where they are not files."""
    return [source_name(r, f"reference {i + 1}") for i, r in enumerate(references)]


def cache_key(src: ImageInput, size: int) -> str | None:
    """A key for ``src`` resized to ``size``: a file's path, mtime and size, or the bytes' hash;
    None when the input cannot be keyed (it is then never cached)."""
    if isinstance(src, Framed):  # the source's key and the box kept
        key = cache_key(src.source, size)
        return None if key is None else f"{key}#{src.keep[0]:.4f}x{src.keep[1]:.4f}"
    h = hashlib.sha1(str(size).encode())
    if isinstance(src, (str, os.PathLike)):
        p = Path(src)
        try:
            st = p.stat()
        except OSError:
            return None
        h.update(os.fsencode(p.resolve()) + f"|{st.st_mtime_ns}|{st.st_size}".encode())  # bytes: any file name
    elif isinstance(src, (bytes, bytearray)):
        h.update(bytes(src))
    elif isinstance(src, np.ndarray):
        h.update(np.ascontiguousarray(src).tobytes())
        h.update(str(src.shape).encode())
    else:
        return None
    return h.hexdigest()


def frame_key(src: ImageInput, first: ImageInput | None, size: int) -> str | None:
    """:func:`cache_key` of ``src``, or with ``first`` the key of ``src`` brought into that image's frame
    ("KEY@FIRST_KEY"; ``inspection.into_frame``); None when either cannot be keyed."""
    key = cache_key(src, size)
    if first is None or key is None:
        return key
    first_key = cache_key(first, size)
    return None if first_key is None else f"{key}@{first_key}"


def smoothed_key(key: str | None, smooth: float, mark: str = "~") -> str | None:
    """The key of an input smoothed by ``smooth`` px before use (``imaging.deblock_sigma``; ``mark`` tells one
    smoothing from another): ``key`` itself at 0."""
    return key if key is None or not smooth else f"{key}{mark}{smooth:g}"


def pair_key(query: ImageInput, references: Sequence[ImageInput], size: int) -> str | None:
    """A key for a (query, references) pair, or None when any part cannot be keyed."""
    keys = [cache_key(x, size) for x in [query, *references]]
    return None if any(k is None for k in keys) else "|".join(keys)  # type: ignore[arg-type]


def as_references(references: ImageInput | Sequence[ImageInput]) -> list[ImageInput]:
    """One reference or a sequence of them as a non-empty list."""
    if isinstance(references, (str, os.PathLike, bytes, bytearray, np.ndarray)) or not isinstance(
        references, Sequence
    ):
        refs = [references]
    else:
        refs = list(references)
    if not refs:
        raise AdcopilotError("at least one normal reference image is needed (--ref)")
    return refs
