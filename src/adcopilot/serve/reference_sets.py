"""Where the service keeps registered reference sets (in its memory, or in a folder its workers
share), and the product context a set carries.

A set is ``{"id", "name", "count", "files", "data", "created", "product", "material"}`` (``data``:
the images' bytes; ``product`` and ``material``: what the references show, or None), at most
``limit`` sets, the least recently used pushed out first. One process keeps them in memory
(:class:`MemorySets`). Several worker processes (``serve --workers N``) must all know a set that
any of them registered, so they keep them in a shared folder (:class:`FolderSets`): one folder per
set, written under a temporary name and renamed into place, so a reader never sees half a set.

A question about a set's pair uses the set's product context for object questions unless the
request gives its own (:func:`request_context`).

Usage::

    sets = FolderSets(Path("/tmp/sets"), limit=64)
    entry = {..., **new_set_context("bottle", "brown glass")}
    dropped = sets.put(entry); sets.get(entry["id"]); sets.pop(entry["id"])
    cp.ask(query, refs, question, **request_context(sets.get(rid), None, None, cp))
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Protocol

from adcopilot.errors import AdcopilotError
from adcopilot.language.answering import LanguageAnswers, context_options

Entry = dict[str, Any]
MAX_CONTEXT_CHARS = 200  # a product's name or material, after collapsing whitespace


def new_set_context(product: str | None, material: str | None) -> dict[str, str | None]:
    """The product context a new set carries, ``{"product", "material"}`` (whitespace collapsed,
    None when not given); an error for a material without a product or a text that is too long."""
    out: dict[str, str | None] = {}
    for key, value in (("product", product), ("material", material)):
        text = " ".join(value.split()) if value else ""
        if len(text) > MAX_CONTEXT_CHARS:
            raise AdcopilotError(f"{key}: too long ({len(text)} characters, limit {MAX_CONTEXT_CHARS})")
        out[key] = text or None
    if out["material"] and not out["product"]:
        raise AdcopilotError("material describes a product: give the product too")
    return out


def request_context(entry: Entry | None, product: str | None, material: str | None, answerer: object) -> dict[str, str]:
    """The ``product``/``material`` keyword arguments of ``ask`` for a request: its own product (and
    material) when it gives one (an error when ``answerer`` cannot use them), else the product of
    its reference set ``entry`` (with the request's material, if any, else the set's) when the
    model reads product context; nothing without either."""
    own = bool(product and product.strip())
    if own or not (entry and entry.get("product")):
        return context_options(answerer, product, material)
    if not isinstance(answerer, LanguageAnswers):
        return {}  # the set's label is there for models that read it
    return context_options(answerer, entry["product"], material if material and material.strip() else entry.get("material"))


class ReferenceSets(Protocol):
    def put(self, entry: Entry) -> list[Entry]:
        """Store a set (most recently used now); return the sets pushed out."""

    def get(self, rid: str) -> Entry | None:
        """The set (now the most recently used), or None."""

    def pop(self, rid: str) -> Entry | None:
        """Remove a set and return it, or None."""

    def values(self) -> list[Entry]:
        """Every set, least recently used first."""

    def __len__(self) -> int: ...


class MemorySets:
    """Sets in this process's memory."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._sets: OrderedDict[str, Entry] = OrderedDict()

    def put(self, entry: Entry) -> list[Entry]:
        with self._lock:
            self._sets[entry["id"]] = entry
            self._sets.move_to_end(entry["id"])
            return [self._sets.popitem(last=False)[1] for _ in range(len(self._sets) - self.limit)]

    def get(self, rid: str) -> Entry | None:
        with self._lock:
            e = self._sets.get(rid)
            if e is not None:
                self._sets.move_to_end(rid)
            return e

    def pop(self, rid: str) -> Entry | None:
        with self._lock:
            return self._sets.pop(rid, None)

    def values(self) -> list[Entry]:
        with self._lock:
            return list(self._sets.values())

    def __len__(self) -> int:
        return len(self._sets)


class FolderSets:
    """Sets in a folder shared by the service's worker processes (``<root>/<id>/``: meta.json, 0, 1, ...);
    a folder's modification time is its last use."""

    def __init__(self, root: Path, limit: int) -> None:
        self.root = Path(root)
        self.limit = limit
        self.root.mkdir(parents=True, exist_ok=True)

    def _dir(self, rid: str) -> Path:
        if not rid.isalnum():  # ids are hex digests: nothing else may name a folder
            raise KeyError(rid)
        return self.root / rid

    def put(self, entry: Entry) -> list[Entry]:
        final = self._dir(entry["id"])
        if not final.exists():
            tmp = self.root / f".tmp-{os.getpid()}-{threading.get_ident()}-{entry['id']}"
            tmp.mkdir()
            for i, data in enumerate(entry["data"]):
                (tmp / str(i)).write_bytes(data)
            (tmp / "meta.json").write_text(json.dumps({k: v for k, v in entry.items() if k != "data"}))
            try:
                os.rename(tmp, final)
            except OSError:  # another worker registered the same set meanwhile
                shutil.rmtree(tmp, ignore_errors=True)
        try:
            os.utime(final)
        except FileNotFoundError:  # pushed out by another worker at once: it is still registered below
            return self.put(entry)
        sets = self._listed()
        return [e for e in (self.pop(rid) for rid, _ in sets[: max(0, len(sets) - self.limit)]) if e is not None]

    def _listed(self) -> list[tuple[str, float]]:
        out = []
        for d in self.root.iterdir():
            if not d.name.startswith("."):
                try:
                    out.append((d.name, d.stat().st_mtime))
                except FileNotFoundError:  # removed by another worker meanwhile
                    continue
        return sorted(out, key=lambda x: x[1])

    def _read(self, rid: str) -> Entry | None:
        try:
            d = self._dir(rid)
            meta = json.loads((d / "meta.json").read_text())
            meta["data"] = [(d / str(i)).read_bytes() for i in range(meta["count"])]
        except (KeyError, OSError, ValueError):
            return None
        return meta

    def get(self, rid: str) -> Entry | None:
        e = self._read(rid)
        if e is not None:
            try:
                os.utime(self._dir(rid), (time.time(), time.time()))
            except OSError:
                return None
        return e

    def pop(self, rid: str) -> Entry | None:
        e = self._read(rid)
        if e is None:
            return None
        gone = self.root / f".del-{os.getpid()}-{threading.get_ident()}-{rid}"
        try:
            os.rename(self._dir(rid), gone)  # atomic: one worker wins, readers see all or nothing
        except OSError:
            return None
        shutil.rmtree(gone, ignore_errors=True)
        return e

    def values(self) -> list[Entry]:
        return [e for e in (self._read(rid) for rid, _ in self._listed()) if e is not None]

    def __len__(self) -> int:
        return len(self._listed())
