"""Batch inspection of a lot: every query against its nearest normal reference(s), resumable.

For each query the ``shots`` most similar normal references are chosen by a global feature
(:mod:`adcopilot.line.references`), the query is inspected with :class:`adcopilot.Copilot`, and
one JSON line is appended to ``results.jsonl`` (flushed per chunk, so an interruption loses at most
the chunk in flight; a re-run skips the files already there). A pool of threads decodes the images
and computes their global features while the model works on the previous chunk, and writes the
annotated images and thumbnails. Unreadable files are skipped and listed in ``skipped.csv`` with the reason.

Output folder::

    results.jsonl        one record per query (boxes included)        (results-2of4.jsonl per shard)
    skipped.csv          file, reason                                  (skipped-2of4.csv per shard)
    batch.json           what produced the results (model, threshold, references, shots)
    annotated/<key>.jpg  query with heat-map and boxes
    thumbs/<key>.jpg     small versions for the report
    results.csv, report.html   merged from every shard present (see report.py)

Usage::

    summary = run_batch(Copilot.load(), collect(["lot/"]), ["normals/"], "out", BatchConfig(shots=2))
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm import tqdm

from adcopilot.api import Copilot
from adcopilot.errors import AdcopilotError
from adcopilot.imaging import load_image, to_float_array
from adcopilot.line.pool_check import checked_pool, has_tower
from adcopilot.line.records import MANIFEST, read_records
from adcopilot.line.references import GLOBAL_SIZE, ReferenceBank, global_features, reference_paths, tower_for
from adcopilot.line.report import build_report
from adcopilot.line.sources import LotItem, shard
from adcopilot.model.backbone import Backbone
from adcopilot.paths import name_bytes, readable
from adcopilot.results import InspectionResult
from adcopilot.visualize import annotate

log = logging.getLogger(__name__)

@dataclass
class BatchConfig:
    shots: int = 1
    shard: tuple[int, int] = (1, 1)  # (i, n), 1-based
    workers: int = 2  # image-decoding threads
    chunk: int = 8  # queries decoded ahead while the model works; results flushed per chunk
    save_images: bool = True
    thumb_size: int = 96  # the report shows them at 96 px
    report: bool = True
    restart: bool = False
    match_threshold: bool = True  # refuse to resume results made with another threshold
    check_references: bool = True  # compare a pool of more references than shots among themselves first
    progress: bool = True


@dataclass
class BatchSummary:
    out_dir: Path
    total: int  # queries in this shard
    done_before: int  # already in the results when the run started
    processed: int  # inspected by this run
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    reference_notes: list[str] = field(default_factory=list)  # references the pool's check names
    lot_notes: list[str] = field(default_factory=list)  # what lot-level scoring found doubtful about its own premise
    seconds: float = 0.0
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Loaded:
    """A query decoded for inspection, or the reason it cannot be."""

    item: LotItem
    image: Image.Image | None = None
    feature: torch.Tensor | None = None  # (D,) matching feature, when references are to be chosen
    error: str | None = None


def shard_suffix(index: int, count: int) -> str:
    return "" if count == 1 else f"-{index}of{count}"


def outcome(truth: str | None, verdict: str) -> str | None:
    """pass / detected / overkill (false alarm) / miss; None when the truth or the verdict is unknown."""
    if truth is None or verdict == "unknown":
        return None
    if truth == "normal":
        return "overkill" if verdict == "anomalous" else "pass"
    return "detected" if verdict == "anomalous" else "miss"


def _asset_name(key: str) -> str:
    # Keep the key's folders, add .jpg (a.png and a.jpg stay distinct); no escaping from the folder.
    safe = "/".join(p for p in key.split("/") if p not in ("", ".", ".."))
    return safe + ".jpg"


def _digest(names: Sequence[str | os.PathLike[str]]) -> str:
    # The names' exact bytes: a file name need not be valid UTF-8.
    return hashlib.sha1(b"\n".join(name_bytes(n) for n in names)).hexdigest()[:16]


def lot_id(queries: Sequence[LotItem]) -> str:
    """The lot as a short text: its size and a digest of every key and file (all shards alike)."""
    keyed = sorted((it.key, os.fspath(it.path)) for it in queries)
    return f"{len(keyed)} files, {_digest([x for pair in keyed for x in pair])}"


def _manifest(copilot: Copilot, bank: ReferenceBank, cfg: BatchConfig, queries: Sequence[LotItem]) -> dict[str, Any]:
    refs = _digest(bank.paths)
    return {
        "lot": lot_id(queries),
        "model": copilot.model_name,
        "image_size": copilot.detector.image_size,
        "threshold": round(copilot.threshold_with(cfg.shots), 6),
        "registration": copilot.registration,
        "shots": cfg.shots,
        "references": {"count": len(bank), "digest": refs},
    }


def _check_manifest(out: Path, new: dict[str, Any], cfg: BatchConfig) -> None:
    path = out / MANIFEST
    if path.exists() and not cfg.restart:
        try:
            old = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            old = {}
        # Folders written before the lot was recorded have no "lot": their records are taken as they are.
        keys = [k for k in new if (k != "threshold" or cfg.match_threshold) and (k != "lot" or "lot" in old)]
        diff = [k for k in keys if old.get(k) != new[k]]
        if old and diff:
            raise AdcopilotError(
                f"{out}: holds results of a different run ({', '.join(f'{k}: {old.get(k)} -> {new[k]}' for k in diff)});"
                " use another --out or --restart"
            )
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # shards may write it at the same time
    tmp.write_text(json.dumps(new, indent=2) + "\n")
    os.replace(tmp, path)


def load_query(item: LotItem, tower: Backbone | None, draft: int | None = None) -> Loaded:
    """Decode (and, with a tower, compute the global feature) in a worker thread, beside the model; a JPEG at
    the reduced scale the model needs (``draft``: ``Copilot.draft_size``), as ``inspect`` decodes it."""
    try:
        img = load_image(item.path, name=str(item.path), draft=draft)
    except AdcopilotError as exc:
        return Loaded(item, error=str(exc))
    feature = None
    if tower is not None:
        feature = global_features(tower, [to_float_array(img, GLOBAL_SIZE)])[0]  # (D,)
    return Loaded(item, img, feature)


def picture_bytes(img: Image.Image, result: InspectionResult, size: int) -> tuple[bytes, bytes]:
    """The annotated query (heat-map and boxes) and its thumbnail, as JPEG files' bytes."""
    pic = annotate(img, result)
    full, small = io.BytesIO(), io.BytesIO()
    pic.save(full, format="JPEG", quality=90)
    pic.thumbnail((size, size), Image.Resampling.BILINEAR)
    pic.save(small, format="JPEG", quality=75)
    return full.getvalue(), small.getvalue()


def write_asset(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _save_pictures(img: Image.Image, result: InspectionResult, annotated: Path, thumb: Path, size: int) -> None:
    full, small = picture_bytes(img, result, size)
    write_asset(annotated, full)
    write_asset(thumb, small)


def output_folder(out_dir: str | os.PathLike) -> Path:
    """The batch's output folder, created when missing."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AdcopilotError(f"{out}: cannot create the output folder ({exc})") from None
    return out


def _chunks(items: Sequence[LotItem], n: int) -> Iterator[list[LotItem]]:
    for i in range(0, len(items), n):
        yield list(items[i : i + n])


@dataclass
class BatchPlan:
    """What a run has to do, whichever engine does it: the references, the files and the queries left."""

    out: Path
    results_path: Path
    skipped_path: Path
    bank: ReferenceBank
    tower: Backbone
    need_select: bool  # whether each query's references are chosen by its global feature
    todo: list[LotItem]  # this shard's queries not yet in the results, in lot order
    summary: BatchSummary


def plan_batch(
    copilot: Copilot,
    queries: Sequence[LotItem],
    references: Sequence[str | os.PathLike] | ReferenceBank,
    out_dir: str | os.PathLike,
    cfg: BatchConfig,
) -> BatchPlan:
    """Check the settings and the output folder (refusing another run's results), load the
    references, and find this shard's queries not yet done."""
    if cfg.shots < 1:
        raise AdcopilotError(f"--shots must be at least 1, got {cfg.shots}")
    out = output_folder(out_dir)
    index, count = cfg.shard
    mine = shard(queries, index, count)
    suffix = shard_suffix(index, count)
    results_path, skipped_path = out / f"results{suffix}.jsonl", out / f"skipped{suffix}.csv"

    tower = tower_for(copilot.detector)
    if isinstance(references, ReferenceBank):
        bank = references
    else:
        # Global features only matter when there is a choice to make.
        choice = len(reference_paths(references)) > cfg.shots
        bank = ReferenceBank.from_paths(references, tower, need_features=choice)
    need_select = len(bank) > cfg.shots and bank.features.shape[1] > 0
    manifest = _manifest(copilot, bank, cfg, queries)
    _check_manifest(out, manifest, cfg)
    if cfg.restart:
        for p in (results_path, skipped_path):
            p.unlink(missing_ok=True)

    done = {r.get("file") for r in read_records(results_path)}
    todo = [it for it in mine if it.key not in done]
    summary = BatchSummary(out, len(mine), len(mine) - len(todo), 0)
    summary.skipped.extend((f"reference {p}", reason) for p, reason in bank.skipped)
    summary.reference_notes = check_bank(copilot, bank, out, manifest, cfg)
    log.info("%d queries in shard %d/%d, %d already done, %d references", len(mine), index, count,
             summary.done_before, len(bank))
    return BatchPlan(out, results_path, skipped_path, bank, tower, need_select, todo, summary)


def check_bank(
    copilot: Copilot, bank: ReferenceBank, out: Path, manifest: dict[str, Any], cfg: BatchConfig
) -> list[str]:
    """The pool's check (:mod:`adcopilot.line.pool_check`) when queries choose among more references than
    they use: notes on the references that do not belong (with as many as the shots, every inspection's
    own check of its references already sees them all)."""
    if not cfg.check_references or len(bank) <= cfg.shots or not has_tower(copilot):
        return []
    key = {"model": manifest["model"], "image_size": manifest["image_size"], "references": manifest["references"]}
    return [f.note() for f in checked_pool(copilot, bank.paths, out, key, cfg.progress)]


def inspect_loaded(
    copilot: Copilot, bank: ReferenceBank, x: Loaded, cfg: BatchConfig
) -> tuple[dict[str, Any], InspectionResult] | None:
    """Inspect one decoded query against its nearest references: its record and result, or None
    with ``x.error`` set when the references cannot be used."""
    try:
        chosen = bank.nearest(x.feature, cfg.shots, exclude=x.item.path)
        result = copilot.inspect(x.image, [str(p) for p, _ in chosen])
    except AdcopilotError as exc:
        x.error = str(exc)
        return None
    result.query = str(x.item.path)
    rec = _record(x.item, result, chosen)
    if cfg.save_images:
        name = _asset_name(x.item.key)
        rec["annotated"], rec["thumb"] = f"annotated/{name}", f"thumbs/{name}"
    return rec, result


class ResultWriter:
    """Appends records to the results file and lists skipped files, flushed on demand, so that an
    interruption loses nothing flushed; a torn last line (killed mid-write) is closed first."""

    def __init__(self, plan: BatchPlan) -> None:
        self.plan = plan
        # A torn last line (killed mid-write) must not glue onto the next record.
        path = plan.results_path
        if path.exists() and path.stat().st_size > 0:
            with path.open("rb") as f:
                f.seek(-1, os.SEEK_END)
                torn = f.read(1) != b"\n"
        else:
            torn = False
        self._res = path.open("a", encoding="utf-8")
        if torn:
            self._res.write("\n")
        self._skip_file = plan.skipped_path.open("w", newline="", encoding="utf-8")
        self._skip = csv.writer(self._skip_file)
        self._skip.writerow(["file", "reason"])
        for f, reason in plan.summary.skipped:
            self._skip.writerow([readable(f), readable(reason)])

    def record(self, rec: dict[str, Any]) -> None:
        self._res.write(json.dumps(rec) + "\n")
        self.plan.summary.processed += 1

    def skip(self, key: str, reason: str) -> None:
        self.plan.summary.skipped.append((key, reason))
        self._skip.writerow([readable(key), readable(reason)])
        log.warning("skipped %s", reason)

    def flush(self) -> None:
        self._res.flush()
        self._skip_file.flush()

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._res.close()
        self._skip_file.close()


def run_batch(
    copilot: Copilot,
    queries: Sequence[LotItem],
    references: Sequence[str | os.PathLike] | ReferenceBank,
    out_dir: str | os.PathLike,
    config: BatchConfig | None = None,
) -> BatchSummary:
    """Inspect this shard's queries not yet in the results; write outputs; return a summary."""
    cfg = config or BatchConfig()
    plan = plan_batch(copilot, queries, references, out_dir, cfg)
    todo, out = plan.todo, plan.out
    t0 = time.perf_counter()
    with (
        ThreadPoolExecutor(max(1, cfg.workers), thread_name_prefix="batch-io") as pool,
        ResultWriter(plan) as writer,
        tqdm(total=len(todo), unit="img", desc="inspect", disable=not cfg.progress, dynamic_ncols=True) as bar,
    ):
        chunks = list(_chunks(todo, max(1, cfg.chunk)))
        pending: deque[list[Future[Loaded]]] = deque()
        writes: list[Future[None]] = []

        def submit(k: int) -> None:
            if k < len(chunks):
                tower = plan.tower if plan.need_select else None
                pending.append([pool.submit(load_query, it, tower, getattr(copilot, "draft_size", None)) for it in chunks[k]])

        submit(0)
        for k in range(len(chunks)):
            submit(k + 1)  # decode the next chunk while this one is inspected
            loaded = [f.result() for f in pending.popleft()]
            done_writes, writes = [w for w in writes if w.done()], [w for w in writes if not w.done()]
            for w in done_writes:
                w.result()  # re-raise a failed write
            for x in loaded:
                got = inspect_loaded(copilot, plan.bank, x, cfg) if x.error is None else None
                if got is None:
                    continue
                rec, result = got
                if cfg.save_images:
                    writes.append(pool.submit(_save_pictures, x.image, result, out / rec["annotated"],
                                              out / rec["thumb"], cfg.thumb_size))
                writer.record(rec)
            for x in loaded:  # once per chunk: an interruption loses at most this chunk's records
                if x.error is not None:
                    writer.skip(x.item.key, x.error)
            writer.flush()
            bar.update(len(loaded))
        for w in writes:
            w.result()
    return finish_batch(plan, cfg, time.perf_counter() - t0)


def finish_batch(plan: BatchPlan, cfg: BatchConfig, seconds: float) -> BatchSummary:
    """Time the run and, unless told not to, write the merged report of every shard present."""
    summary = plan.summary
    summary.seconds = seconds
    summary.files = {"results": plan.results_path, "skipped": plan.skipped_path}
    if cfg.report:
        summary.files.update(build_report(plan.out))
    return summary


def _record(item: LotItem, r: InspectionResult, chosen: list[tuple[Path, float]]) -> dict[str, Any]:
    return {
        "file": item.key,
        "path": str(item.path),
        "truth": item.truth,
        "verdict": r.verdict,
        "outcome": outcome(item.truth, r.verdict),
        "score": round(float(r.score), 6),
        "threshold": round(float(r.threshold), 6),
        "boxes": [b.to_dict() for b in r.boxes],
        "description": r.description,
        "image_check": r.image_check,
        "notes": list(r.notes),
        "references": [str(p) for p, _ in chosen],
        "similarity": [round(s, 4) for _, s in chosen],
        "image_size": list(r.image_size),
        "registration": r.registration.get("method"),
        "model": r.model,
        "time_ms": round(r.timings_ms.get("total", 0.0), 2),
    }
