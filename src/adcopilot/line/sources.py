"""A lot of images to inspect: folders (searched recursively) or a CSV list, with the truth when known.

Truth from folder names: a file under a folder named ``good``, ``ok``, ``normal``, ... is normal;
under ``bad``, ``defect``, ``ng``, ... it is defective. In MVTec-style lots (``test/good``,
``test/crack``, ``test/scratch``) the folders beside a normal-named one are defect types, so their
files are defective. Files whose folders say nothing have no truth (``None``).

A CSV list has a header row with a ``path`` column (or ``file`` / ``image``) and optionally a
``label`` column (``normal``/``good``/``ok``/``0`` or ``defective``/``bad``/``anomalous``/``1``);
relative paths are relative to the CSV's folder.

Sharding splits a lot deterministically by a hash of each file's key (its path relative to the
lot's root), so every process or machine given the same lot and ``--shard i/n`` gets the same files.

Usage::

    items = collect(["lot/"])              # [LotItem(path, key="good/001.png", truth="normal"), ...]
    mine = shard(items, *parse_shard("2/4"))
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from adcopilot.errors import AdcopilotError
from adcopilot.imaging import IMAGE_SUFFIXES, not_taken_note
from adcopilot.paths import missing_reason, name_bytes, readable

log = logging.getLogger(__name__)

NORMAL_NAMES = {"good", "ok", "normal", "pass", "passed", "nominal", "negative", "clean"}
DEFECT_NAMES = {
    "bad", "defect", "defects", "defective", "ng", "nok", "anomaly", "anomalies", "anomalous",
    "abnormal", "fail", "failed", "reject", "rejected", "positive", "broken",
}
_LABEL_WORDS = {
    **{w: "normal" for w in NORMAL_NAMES | {"0", "false", "no"}},
    **{w: "defective" for w in DEFECT_NAMES | {"1", "true", "yes"}},
}


@dataclass(frozen=True)
class LotItem:
    """One query of a lot: its file, a stable key (relative path, posix) and the truth if known."""

    path: Path
    key: str
    truth: str | None = None  # "normal", "defective" or None


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def list_images(root: Path) -> list[Path]:
    """Image files under ``root`` (recursive, hidden folders skipped), sorted by relative path."""
    out = []
    others: list[str] = []  # visible files not taken by their names, for one warning
    seen: set[tuple[int, int]] = set()  # (device, inode) of the folders walked: a linked folder once
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:  # a symlink back to a folder already walked (a loop), or a 2nd link
            log.warning("%s: symlink loop or second link to a folder already searched, not followed", readable(dirpath))
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        visible = [f for f in filenames if not f.startswith(".")]
        out.extend(Path(dirpath) / f for f in visible if is_image(Path(f)))
        others.extend(f for f in visible if not is_image(Path(f)))
    if note := not_taken_note(others):
        log.warning("%s: %s", readable(root), note)
    return sorted(out, key=lambda p: p.relative_to(root).as_posix())


def parse_label(value: str, where: str) -> str | None:
    v = value.strip().lower()
    if not v:
        return None
    if v not in _LABEL_WORDS:
        raise AdcopilotError(f"{where}: unknown label '{value}'; use normal/good/ok/0 or defective/bad/1")
    return _LABEL_WORDS[v]


def truth_from_folders(rel_dirs: Sequence[str], normal_parents: set[tuple[str, ...]]) -> str | None:
    """Truth of a file from its folder names (relative to the lot's root), deepest folder first."""
    parts = [p.lower() for p in rel_dirs]
    for j in range(len(parts), 0, -1):
        name = parts[j - 1]
        if name in NORMAL_NAMES:
            return "normal"
        if name in DEFECT_NAMES:
            return "defective"
        if tuple(parts[: j - 1]) in normal_parents:  # a sibling of a good/ folder: a defect type
            return "defective"
    return None


def _from_folder(root: Path, prefix: str) -> list[LotItem]:
    files = list_images(root)
    rels = [f.relative_to(root) for f in files]
    # Folders that contain a normal-named folder (MVTec's test/ holding good/ and defect types).
    normal_parents = {
        tuple(p.lower() for p in r.parts[: i]) for r in rels for i, d in enumerate(r.parts[:-1])
        if d.lower() in NORMAL_NAMES
    }
    return [
        LotItem(f.absolute(), prefix + r.as_posix(), truth_from_folders(r.parts[:-1], normal_parents))
        for f, r in zip(files, rels, strict=True)
    ]


def _from_csv(path: Path) -> list[LotItem]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise AdcopilotError(f"{path}: cannot read the CSV list ({exc})") from None
    reader = csv.DictReader(text.splitlines())
    fields = {(f or "").strip().lower(): f for f in (reader.fieldnames or [])}
    col = next((fields[c] for c in ("path", "file", "image", "filename") if c in fields), None)
    if col is None:
        raise AdcopilotError(f"{path}: the CSV list needs a header with a 'path' column (got {list(fields)})")
    label_col = next((fields[c] for c in ("label", "truth", "class") if c in fields), None)
    items = []
    for n, row in enumerate(reader, start=2):
        value = (row.get(col) or "").strip()
        if not value:
            continue
        p = Path(value)
        full = p if p.is_absolute() else path.parent / p
        truth = parse_label(row.get(label_col) or "", f"{path}:{n}") if label_col else None
        items.append(LotItem(full.absolute(), p.as_posix(), truth))
    return items


def distinct_tails(paths: Sequence[Path], start: int = 1) -> list[str]:
    """For each path the shortest run of its last parts (at least ``start``) that no other path
    shares: ``[a/good, b/good]`` -> ``["a/good", "b/good"]``; equal paths get equal tails."""
    parts = [p.parts for p in paths]
    tails: list[str | None] = [None] * len(paths)
    for n in range(start, max((len(x) for x in parts), default=start) + 1):
        cand = ["/".join(x[-n:]) for x in parts]
        owners: dict[str, set[tuple[str, ...]]] = {}
        for c, x in zip(cand, parts, strict=True):
            owners.setdefault(c, set()).add(x)
        for i, c in enumerate(cand):
            if tails[i] is None and len(owners[c]) == 1:
                tails[i] = c
    return [t if t is not None else "/".join(x) for t, x in zip(tails, parts, strict=True)]


def _unique_keys(items: list[LotItem]) -> list[LotItem]:
    """One item per file; files that share a key get keys long enough to tell them apart (their
    parent folders), so no query is dropped. The same file named twice is one query."""
    by_key: dict[str, list[LotItem]] = {}
    for it in items:
        group = by_key.setdefault(it.key, [])
        if all(other.path != it.path for other in group):
            group.append(it)
    out: list[LotItem] = []
    for key, group in by_key.items():
        if len(group) == 1:
            out.append(group[0])
            continue
        tails = distinct_tails([it.path for it in group], start=len(key.split("/")) + 1)
        out.extend(LotItem(it.path, t, it.truth) for it, t in zip(group, tails, strict=True))
    if len({it.key for it in out}) < len(out):  # a longer key met another file's key: use whole paths
        out = [LotItem(it.path, it.path.as_posix().lstrip("/"), it.truth) for it in out]
    return out


def collect(sources: Sequence[str | os.PathLike]) -> list[LotItem]:
    """Queries from folders, single images and CSV lists; keys unique, order deterministic.

    With several folders each one's keys start with the shortest end of its path that tells it
    from the others (``lineA/good/001.png``, ``lineB/good/001.png``)."""
    if not sources:
        raise AdcopilotError("no queries given: pass folders, images or a CSV list")
    paths = [Path(src) for src in sources]
    folders = [p for p in paths if p.is_dir()]
    labels = dict(zip(folders, distinct_tails([p.resolve() for p in folders]), strict=True))
    several = len(sources) > 1
    items: list[LotItem] = []
    for p in paths:
        if p.is_dir():
            items.extend(_from_folder(p, f"{labels[p]}/" if several else ""))
        elif p.suffix.lower() == ".csv":
            if not p.exists():
                raise AdcopilotError(f"{p}: {missing_reason(p).replace('no such file', 'no such CSV list')}")
            items.extend(_from_csv(p))
        elif p.exists() or is_image(p):
            items.append(LotItem(p.absolute(), p.name))  # a missing image is reported by the batch
        elif os.path.islink(p):
            raise AdcopilotError(f"{p}: {missing_reason(p)}")
        else:
            raise AdcopilotError(f"{p}: no such folder, image or CSV list")
    return _unique_keys(items)


def parse_shard(spec: str | None) -> tuple[int, int]:
    """"i/n" (1 <= i <= n) -> (i, n); None -> (1, 1)."""
    if spec is None or spec == "":
        return 1, 1
    try:
        i_s, n_s = spec.split("/")
        i, n = int(i_s), int(n_s)
    except ValueError:
        raise AdcopilotError(f"--shard '{spec}': expected i/n, e.g. 1/4") from None
    if n < 1 or not 1 <= i <= n:
        raise AdcopilotError(f"--shard '{spec}': i must be between 1 and n (got {i}/{n})")
    return i, n


def shard_of(key: str, count: int) -> int:
    """1-based shard of a key: a stable hash, the same on every machine and Python version."""
    return int(hashlib.sha1(name_bytes(key)).hexdigest()[:12], 16) % count + 1


def shard(items: Sequence[LotItem], index: int, count: int) -> list[LotItem]:
    return [it for it in items if count == 1 or shard_of(it.key, count) == index]
