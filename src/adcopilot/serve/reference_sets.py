"""Where the service keeps registered reference sets: in its memory, or in a folder its workers share.

A set is ``{"id", "name", "count", "files", "data", "created"}`` (``data``: the images' bytes), at
most ``limit`` sets, the least recently used pushed out first. One process keeps them in memory
(:class:`MemorySets`). Several worker processes (``serve --workers N``) must all know a set that
any of them registered, so they keep them in a shared folder (:class:`FolderSets`): one folder per
set, written under a temporary name and renamed into place, so a reader never sees half a set.

Usage::

    sets = FolderSets(Path("/tmp/sets"), limit=64)
    dropped = sets.put(entry); sets.get(entry["id"]); sets.pop(entry["id"])
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

Entry = dict[str, Any]


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
