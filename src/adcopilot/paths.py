"""File names as the file system has them, and as text: bytes-safe keys, readable names, why a path is missing.

On Linux a file name is bytes; one that is not valid UTF-8 reaches Python as a ``str`` holding
lone surrogates (``surrogateescape``), which ``str.encode()`` refuses. Such a name must still be
hashed (cache keys, shards), written (CSV, HTML, JSON) and reported. Hashes use the name's exact
bytes (:func:`name_bytes`); text meant for people or for UTF-8 files shows the undecodable bytes
as ``\\xNN`` escapes (:func:`readable`), which leaves every valid name unchanged.

Usage::

    hashlib.sha1(name_bytes(path))       # the same digest for the same file name, whatever its bytes
    readable("lot/\\udcff.png")          # 'lot/\\\\xff.png'
    missing_reason(Path("loop.png"))     # 'symlink loop' / 'broken symlink (to x.png)' / 'no such file'
"""

from __future__ import annotations

import errno
import os


def name_bytes(name: str | os.PathLike[str]) -> bytes:
    """The exact bytes of a file name (a valid name: its UTF-8)."""
    return os.fsencode(name)


def readable(name: str | os.PathLike[str]) -> str:
    """The name as valid text: undecodable bytes shown as ``\\xNN`` (valid names unchanged)."""
    return os.fspath(name).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def missing_reason(path: str | os.PathLike[str]) -> str:
    """Why ``path`` cannot be opened although it was named: a symlink loop, a broken symlink, or
    simply no such file (call it when ``path.exists()`` is False)."""
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symlink loop"
        if os.path.islink(path):
            return f"broken symlink (to {readable(os.readlink(path))})"
        if exc.errno == errno.EACCES:
            return "permission denied"
        return "no such file"
    return "no such file"
