"""Plain folders of images: recursive listing and tolerant loading (bad files reported, skipped)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from adcopilot.errors import AdcopilotError, ImageError
from adcopilot.imaging import IMAGE_SUFFIXES, load_image, not_taken_note, resize_square

log = logging.getLogger(__name__)



def list_images(folder: str | Path) -> list[Path]:
    """Image files under ``folder`` (recursive, sorted); an error if it is missing or holds none."""
    root = Path(folder)
    if not root.exists():
        raise AdcopilotError(f"{root}: no such folder")
    if not root.is_dir():
        raise AdcopilotError(f"{root}: not a folder")
    found = [p for p in root.rglob("*") if p.is_file()]
    files = sorted(p for p in found if p.suffix.lower() in IMAGE_SUFFIXES)
    if note := not_taken_note(p.name for p in found if not p.name.startswith(".")):
        log.warning("%s: %s", root, note)
    if not files:
        raise AdcopilotError(f"{root}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def load_folder(folder: str | Path, size: int) -> tuple[list[np.ndarray], list[tuple[Path, str]]]:
    """Load every image of a folder resized to ``size``: (uint8 (S, S, 3) arrays, [(bad file, reason)])."""
    images, _, bad = load_folder_groups(folder, size)
    return images, bad


def load_folder_groups(
    folder: str | Path, size: int
) -> tuple[list[np.ndarray], list[str], list[tuple[Path, str]]]:
    """Like :func:`load_folder`, with each image's group: the sub-folder holding it, relative to
    ``folder`` ("" for images directly inside), e.g. the product variant ("mono", "poly")."""
    images, groups, _, bad = load_folder_entries(folder, size)
    return images, groups, bad


def load_folder_entries(
    folder: str | Path, size: int
) -> tuple[list[np.ndarray], list[str], list[Path], list[tuple[Path, str]]]:
    """Like :func:`load_folder_groups`, with each loaded image's path: (images, groups, paths, bad)."""
    root = Path(folder)
    images, groups, paths, bad = [], [], [], []
    for path in list_images(root):
        try:
            img = resize_square(load_image(path), size)  # exactly as inspection resizes
        except ImageError as exc:
            bad.append((path, str(exc)))
            log.warning("skipping %s", exc)
            continue
        images.append(np.asarray(img, dtype=np.uint8))
        paths.append(path)
        rel = path.parent.relative_to(root).as_posix()
        groups.append("" if rel == "." else rel)
    if not images:
        raise AdcopilotError(f"{folder}: none of the images could be read (first problem: {bad[0][1]})")
    return images, groups, paths, bad
