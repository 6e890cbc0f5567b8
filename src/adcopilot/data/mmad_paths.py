"""Where the files of an MMAD-format ``mmad.json`` are: the query image, its mask, its templates.

The real benchmark file mixes three conventions, and this module is the one place that knows
them (the evaluation reader and the curation source both use it):

- the **key** is the query image's path relative to the data root
  (``DS-MVTec/bottle/image/broken_large/000.png``); the benchmark's own query scripts read the
  query from the key, so it is tried first. The value's ``image_path`` is relative to the class
  folder (``image/broken_large/000.png``); it is tried after the key, joined to the key's class
  folder and then to the root, for files written by other tools;
- ``mask_path`` is joined as the benchmark's ``generate_metadata.py`` joins it, to the key's
  first three components (``DS-MVTec/bottle/image/`` + ``mask_path``); then to the key's class
  folder (``DS-MVTec/bottle/`` + ``mask_path``, where the download keeps its masks); then to
  the root;
- ``random_templates`` / ``similar_templates`` are relative to the root.

When no candidate exists, the error names every path tried.

Usage::

    query = resolve_query(root, key, value.get("image_path"))
    mask = resolve_mask(root, key, value["mask_path"])
"""

from __future__ import annotations

from pathlib import Path

from adcopilot.errors import AdcopilotError


def _parts(key: str) -> list[str]:
    return [p for p in key.replace("\\", "/").split("/") if p]


def _unique(paths: list[Path]) -> list[Path]:
    return list(dict.fromkeys(paths))


def query_candidates(root: Path, key: str, image_path: str | None = None) -> list[Path]:
    """Where the query of ``key`` may be, in the order tried (the key first, as the benchmark)."""
    out = [root / key]
    if image_path:
        parts = _parts(key)
        if len(parts) > 2:
            out.append(root.joinpath(*parts[:2]) / image_path)
        out.append(root / image_path)
    return _unique(out)


def mask_candidates(root: Path, key: str, mask_path: str) -> list[Path]:
    """Where the mask of ``key`` may be, in the order tried (``generate_metadata.py``'s join first)."""
    parts = _parts(key)
    out = []
    if len(parts) > 3:  # the key's first three components are folders, not the file itself
        out.append(root.joinpath(*parts[:3]) / mask_path)
    if len(parts) > 2:
        out.append(root.joinpath(*parts[:2]) / mask_path)
    out.append(root / mask_path)
    return _unique(out)


def _first_file(candidates: list[Path], what: str, key: str) -> Path:
    for path in candidates:
        if path.is_file():
            return path
    tried = ", ".join(str(p) for p in candidates)
    raise AdcopilotError(f"'{key}': no {what} found (tried {tried})")


def resolve_query(root: Path, key: str, image_path: str | None = None) -> Path:
    """The query image of ``key``; raises, naming the paths tried, when none exists."""
    return _first_file(query_candidates(root, key, image_path), "query image", key)


def resolve_mask(root: Path, key: str, mask_path: str) -> Path:
    """The mask of ``key``; raises, naming the paths tried, when none exists."""
    return _first_file(mask_candidates(root, key, mask_path), "mask", key)
