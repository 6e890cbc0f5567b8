"""Sources of labelled images for curation: what users already have on disk.

A source is named ``[kind:]path``; without a kind the layout is detected:

``mvtec``
    MVTec-AD style: ``<class>/train/good``, ``<class>/test/<defect>/``,
    ``<class>/ground_truth/<defect>/<stem>_mask.png`` (or ``<stem>.png``). ``path`` is either
    the root holding class folders or one class folder. The layout's own train/test division
    is not kept (its train part has no defects): curation makes its own split.
``labels``
    Image-level labels only (like ELPV): ``good/`` (or ``ok/``, ``normal/``) and one folder per
    defect, no masks. ``path`` is one class folder (class = folder name) or a root of such.
``normal``
    A folder of normal images (class = folder name) or of class sub-folders; each image is kept
    as a good sample and gets ``variants`` synthetic defects with exact masks
    (:mod:`adcopilot.data.synth`), written as PNG by the curation run.
``mmad``
    MMAD's ``mmad.json`` (plus its image root, by default the file's folder): a question source
    for *evaluation only*; its items always go to the test split and keep MMAD's own questions.

Scanning only lists files; images and masks are read (and bad ones reported) later, one by one.

Usage::

    entries, problems = scan_sources(["mvtec:/data/mvtec", "/data/elpv_folders"], seed=0)
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

from adcopilot.data import synth
from adcopilot.data.mmad_paths import query_candidates, resolve_mask, resolve_query
from adcopilot.errors import AdcopilotError
from adcopilot.imaging import IMAGE_SUFFIXES
from adcopilot.jsonfile import read_json

log = logging.getLogger(__name__)

GOOD_NAMES = {"good", "ok", "normal", "pass", "okay"}
KINDS = ("mvtec", "labels", "normal", "mmad")


@dataclass
class Entry:
    """One image of a source, before it is read."""

    key: str  # unique and stable: "<source name>/<path inside the source>[#v<k>]"
    image_path: str  # the file to read; for synthetic variants, the PNG the run writes
    category: str
    defect: str | None  # None = good
    dataset: str  # the source's name
    kind: str  # "mvtec", "labels", "normal" or "mmad"
    instance: str  # items of one instance share a split (e.g. a normal image and its variants)
    mask_path: str | None = None
    base_path: str | None = None  # synthetic: the normal image the defect is painted on
    synth_kind: str | None = None  # synthetic: the synth.DEFECT_KINDS entry to paint
    fixed_split: str | None = None  # "test" for MMAD items
    references: list[str] = field(default_factory=list)  # MMAD's templates
    conversation: list[dict] = field(default_factory=list)  # MMAD's questions


def _images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _is_mvtec_class(p: Path) -> bool:
    return (p / "test").is_dir() and ((p / "train").is_dir() or (p / "ground_truth").is_dir())


def _is_labels_class(p: Path) -> bool:
    subs = _subdirs(p)
    return any(s.name.lower() in GOOD_NAMES for s in subs) and all(_images(s) or not list(s.iterdir()) for s in subs)


def detect_kind(path: Path) -> str:
    """The layout of ``path`` (one of :data:`KINDS`); raises AdcopilotError when unknown."""
    if path.is_file():
        if path.suffix.lower() == ".json":
            return "mmad"
        raise AdcopilotError(f"{path}: unknown source layout (a file that is not an MMAD .json)")
    if not path.is_dir():
        raise AdcopilotError(f"{path}: no such source folder")
    if _is_mvtec_class(path) or any(_is_mvtec_class(s) for s in _subdirs(path)):
        return "mvtec"
    if _is_labels_class(path) or any(_is_labels_class(s) for s in _subdirs(path)):
        return "labels"
    if _images(path) and not _subdirs(path):
        return "normal"
    raise AdcopilotError(
        f"{path}: unknown source layout; expected MVTec folders (<class>/train/good, <class>/test/<defect>), "
        "label folders (good/ and <defect>/), a folder of normal images, or mmad.json "
        "(name the kind explicitly as mvtec:PATH, labels:PATH, normal:PATH or mmad:PATH)"
    )


def parse_spec(spec: str) -> tuple[str | None, Path]:
    """"mvtec:/data/x" -> ("mvtec", Path("/data/x")); "/data/x" -> (None, Path("/data/x"))."""
    head, sep, tail = spec.partition(":")
    if sep and head in KINDS:
        return head, Path(tail).expanduser()
    if sep and head.isalpha() and len(head) > 1 and not Path(spec).exists():
        raise AdcopilotError(f"{spec}: unknown source kind {head!r}; use one of {', '.join(KINDS)}")
    return None, Path(spec).expanduser()


def _name(path: Path) -> str:
    return path.stem if path.is_file() else path.resolve().name


def _mask_for(gt: Path, defect: str, img: Path) -> Path | None:
    for cand in (gt / defect / f"{img.stem}_mask.png", gt / defect / f"{img.stem}.png"):
        if cand.is_file():
            return cand
    return None


def scan_mvtec(path: Path) -> list[Entry]:
    classes = [path] if _is_mvtec_class(path) else [s for s in _subdirs(path) if _is_mvtec_class(s)]
    root = path if not _is_mvtec_class(path) else path.parent
    dataset = _name(path)
    out: list[Entry] = []
    for cls in classes:
        category = cls.name
        gt = cls / "ground_truth"
        for part in ("train", "test"):
            if not (cls / part).is_dir():
                continue
            for folder in _subdirs(cls / part):
                good = folder.name.lower() in GOOD_NAMES
                for img in _images(folder):
                    rel = img.relative_to(root).as_posix()
                    out.append(Entry(
                        key=f"{dataset}/{rel}",
                        image_path=str(img.resolve()),
                        category=category,
                        defect=None if good else folder.name,
                        dataset=dataset,
                        kind="mvtec",
                        instance=f"{dataset}/{rel}",
                        mask_path=None if good else _optional(_mask_for(gt, folder.name, img)),
                    ))
    return out


def _optional(p: Path | None) -> str | None:
    return str(p.resolve()) if p is not None else None


def scan_labels(path: Path) -> list[Entry]:
    classes = [path] if _is_labels_class(path) else [s for s in _subdirs(path) if _is_labels_class(s)]
    root = path if not _is_labels_class(path) else path.parent
    dataset = _name(path)
    out: list[Entry] = []
    for cls in classes:
        for folder in _subdirs(cls):
            good = folder.name.lower() in GOOD_NAMES
            for img in _images(folder):
                rel = img.relative_to(root).as_posix()
                out.append(Entry(
                    key=f"{dataset}/{rel}", image_path=str(img.resolve()), category=cls.name,
                    defect=None if good else folder.name, dataset=dataset, kind="labels",
                    instance=f"{dataset}/{rel}",
                ))
    return out


def _stable_int(*parts: object) -> int:
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def scan_normal(path: Path, out_dir: Path, *, variants: int, seed: int) -> list[Entry]:
    """Each normal image -> itself (good) + ``variants`` synthetic-defect entries."""
    if not path.is_dir():
        raise AdcopilotError(f"{path}: no such folder of normal images")
    groups = [(path.name, _images(path))] if _images(path) else [(s.name, _images(s)) for s in _subdirs(path)]
    dataset = _name(path)
    out: list[Entry] = []
    for category, images in groups:
        for img in images:
            rel = img.relative_to(path).as_posix()
            base_key = f"{dataset}/{rel}"
            out.append(Entry(key=base_key, image_path=str(img.resolve()), category=category, defect=None,
                             dataset=dataset, kind="normal", instance=base_key))
            for v in range(1, variants + 1):
                # The kind is fixed here from the seed and the file, so splits and distractors are
                # known before any image is painted, and a resumed run paints the same defect.
                kind = synth.DEFECT_KINDS[_stable_int(seed, base_key, v) % len(synth.DEFECT_KINDS)]
                stem = Path(rel).with_suffix("").as_posix().replace("/", "__")
                target = out_dir / "synthetic" / dataset / category / f"{stem}_v{v}.png"
                out.append(Entry(
                    key=f"{base_key}#v{v}", image_path=str(target.resolve()), category=category,
                    defect=synth.LABELS[kind], dataset=dataset, kind="normal", instance=base_key,
                    mask_path=str(target.with_name(f"{stem}_v{v}_mask.png").resolve()),
                    base_path=str(img.resolve()), synth_kind=kind,
                ))
    return out


def read_mmad(path: Path, image_root: Path | None = None) -> list[Entry]:
    """Minimal reader of MMAD's ``mmad.json`` for evaluation-only items (see adcopilot.eval.mmad)."""
    root = image_root or path.parent
    data = read_json(path)
    if not isinstance(data, dict):
        raise AdcopilotError(f"{path}: expected a JSON object keyed by image path")
    out: list[Entry] = []
    for key in sorted(data):
        rec = data[key]
        if not isinstance(rec, dict) or not isinstance(rec.get("conversation"), list):
            log.warning("%s: entry %s has no conversation list; skipped", path, key)
            continue
        # The key is the query's path relative to the root (adcopilot.data.mmad_paths).
        parts = Path(key).parts
        good = "good" in parts
        # MMAD paths look like <dataset>/<class>/image/<defect or good>/<file>.
        dataset = parts[0] if len(parts) > 1 else "MMAD"
        category = parts[1] if len(parts) > 2 else dataset
        defect = None if good else (parts[-2] if len(parts) >= 2 else "defect")
        image = rec.get("image_path")
        try:
            query = resolve_query(root, key, str(image) if image else None)
        except AdcopilotError as exc:
            log.warning("%s: %s", path, exc)
            query = query_candidates(root, key)[0]  # the analysis then reports it as unreadable
        mask = rec.get("mask_path")
        mask_file = None
        if mask and not good:
            try:
                mask_file = resolve_mask(root, key, str(mask))
            except AdcopilotError as exc:
                log.warning("%s: %s", path, exc)
        out.append(Entry(
            key=f"mmad/{key}", image_path=str(query.resolve()), category=category, defect=defect,
            dataset=dataset, kind="mmad", instance=f"mmad/{key}",
            mask_path=str(mask_file.resolve()) if mask_file else None,
            fixed_split="test",
            references=[str((root / t).resolve()) for t in rec.get("random_templates") or []],
            conversation=[c for c in rec["conversation"] if isinstance(c, dict)],
        ))
    return out


def scan_source(spec: str, out_dir: Path, *, variants: int = 1, seed: int = 0) -> list[Entry]:
    """All entries of one source spec (see the module docstring)."""
    kind, path = parse_spec(spec)
    if not path.exists():
        raise AdcopilotError(f"{path}: no such source")
    kind = kind or detect_kind(path)
    if kind == "mvtec":
        entries = scan_mvtec(path)
    elif kind == "labels":
        entries = scan_labels(path)
    elif kind == "normal":
        entries = scan_normal(path, out_dir, variants=variants, seed=seed)
    else:
        entries = read_mmad(path)
    if not entries:
        raise AdcopilotError(f"{path}: no images found in this {kind} source")
    return entries


def scan_sources(
    specs: list[str], out_dir: Path | None = None, *, variants: int = 1, seed: int = 0
) -> tuple[list[Entry], list[tuple[str, str]]]:
    """Entries of every source, and (source, problem) for each source that could not be used."""
    out_dir = Path(out_dir or ".")
    entries: list[Entry] = []
    problems: list[tuple[str, str]] = []
    seen: set[str] = set()
    for spec in specs:
        try:
            found = scan_source(spec, out_dir, variants=variants, seed=seed)
        except AdcopilotError as exc:
            log.warning("skipping source: %s", exc)
            problems.append((spec, str(exc)))
            continue
        for e in found:
            if e.key in seen:
                continue  # the same file named twice
            seen.add(e.key)
            entries.append(e)
        log.info("%s: %d images", spec, len(found))
    return entries, problems

