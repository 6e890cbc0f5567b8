"""Resumable evaluation runs: MMAD answers, MMAD-BBox answers and detection scores.

Every answer is appended to a JSONL file in the run folder as soon as it arrives (one JSON
object per line, flushed), so an interrupted run loses at most the question in flight; a re-run
with the same folder skips what is answered and retries what failed. ``run.json`` records the
backend and its configuration, the selection, the versions of the software and the counts; a
folder made with another backend, model, k-shot or template mode is refused rather than mixed.

A question whose images cannot be read, or that the backend fails on, is recorded with its
``error`` and the run goes on; the summary reports how many failed (re-run to retry them).

Usage::

    bench = load_mmad("mmad.json")
    records = run_mmad(bench, bench.select(limit=20), make_backend("baseline"), "runs/baseline")
    print(score(records, "official").format())
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from adcopilot.data.masks import load_mask
from adcopilot.errors import AdcopilotError
from adcopilot.eval.backends import Backend, BoxAnswer, CopilotBackend, versions
from adcopilot.eval.bbox import BBoxRecord, gt_boxes_from_mask
from adcopilot.eval.detection import fit_size, image_metrics, pixel_metrics
from adcopilot.eval.mmad import MMADBenchmark, MMADItem, Question, TemplateMode
from adcopilot.eval.scoring import AnswerRecord

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- files
class JsonlLog:
    """An append-only JSONL file; reading skips a line torn by an interruption."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def load(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        out = []
        with open(self.path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    log.warning("%s: line %d is incomplete or malformed; it will be redone", self.path, n)
                    continue
                if isinstance(rec, dict):
                    out.append(rec)
        return out

    def append(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            if f.tell() > 0:
                # A torn last line (no newline) must not swallow the next record.
                with open(self.path, "rb") as r:
                    r.seek(-1, os.SEEK_END)
                    if r.read(1) != b"\n":
                        f.write("\n")
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def open_run(out_dir: str | os.PathLike, task: str, identity: dict[str, Any], extra: dict[str, Any]) -> Path:
    """Create or reopen a run folder; refuse one made with a different ``identity``."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise AdcopilotError(f"{out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / "run.json"
    meta: dict[str, Any] = {}
    if meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError:
            raise AdcopilotError(f"{meta_path}: malformed JSON; remove it or use another --out") from None
        old = {"task": meta.get("task"), **meta.get("identity", {})}
        new = {"task": task, **identity}
        if old != new:
            diff = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in new if old.get(k) != new.get(k))
            raise AdcopilotError(f"{out}: holds a different run ({diff}); use another --out")
    meta.update(task=task, identity=identity, **extra)
    meta.setdefault("started", _now())
    meta["resumed"] = meta_path.exists()
    meta["versions"] = versions()
    _write_json(meta_path, meta)
    return out


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)


def finish_run(out: Path, **counts: Any) -> None:
    meta_path = out / "run.json"
    meta = json.loads(meta_path.read_text())
    meta.update(counts, updated=_now())
    _write_json(meta_path, meta)


def _identity(bench: MMADBenchmark, backend: Backend, k_shot: int, templates: str) -> dict[str, Any]:
    if templates not in ("random", "similar"):
        raise AdcopilotError(f"unknown template mode '{templates}'; use 'random' or 'similar'")
    if k_shot < 0:
        raise AdcopilotError(f"--k-shot must be 0 or more, got {k_shot}")
    if k_shot == 0 and backend.needs_references:
        # Refused before the run: otherwise every record would carry the same error and the table be empty.
        raise AdcopilotError(f"--k-shot 0: backend '{backend.name}' compares with normal references; use 1 or more")
    d = backend.describe()
    identity = {
        "benchmark": str(bench.path.resolve()),
        "backend": d.get("name"),
        "model": d.get("model"),
        "k_shot": k_shot,
        "templates": templates,
    }
    for key in ("answers", "prior_weight", "protocol"):  # how the questions are asked: a resumed run must not mix
        if key in d:
            identity[key] = d[key]
    return identity


# --------------------------------------------------------------------------- job runner
@dataclass
class _Job:
    item: MMADItem
    images: list[Path]
    question: Question | None = None


def _run_jobs(
    jobs: Sequence[_Job],
    work: Callable[[_Job], dict[str, Any]],
    log_file: JsonlLog,
    concurrency: int,
    desc: str,
    progress: bool,
) -> list[dict[str, Any]]:
    """Run ``work`` on each job (``concurrency`` at a time), appending each result as it arrives."""
    done: list[dict[str, Any]] = []
    bar = tqdm(total=len(jobs), desc=desc, unit="q" if desc == "mmad" else "img", disable=not progress or not jobs)

    def record(rec: dict[str, Any]) -> None:
        log_file.append(rec)
        done.append(rec)
        bar.update(1)
        if rec.get("error"):
            bar.set_postfix_str(f"failed {sum(1 for r in done if r.get('error'))}")

    try:
        if concurrency <= 1:
            for job in jobs:
                record(work(job))
        else:
            with ThreadPoolExecutor(max_workers=concurrency) as pool:
                futures = [pool.submit(work, job) for job in jobs]
                try:
                    for fut in as_completed(futures):
                        record(fut.result())
                except BaseException:
                    for f in futures:
                        f.cancel()
                    raise
    finally:
        bar.close()
    return done


def _timed(fn: Callable[[], Any]) -> tuple[Any, str | None, float]:
    t0 = time.perf_counter()
    try:
        return fn(), None, time.perf_counter() - t0
    except AdcopilotError as exc:
        return None, str(exc), time.perf_counter() - t0


def _open(out_dir: str | os.PathLike, task: str, bench: MMADBenchmark, backend: Backend, k_shot: int,
          templates: TemplateMode, selection: dict[str, Any] | None, **extra: Any) -> Path:
    """:func:`open_run` for a run of ``task`` with these settings."""
    return open_run(out_dir, task, _identity(bench, backend, k_shot, templates),
                    {"backend": backend.describe(), "selection": selection or {}, **extra})


def _images(bench: MMADBenchmark, item: MMADItem, k_shot: int, templates: TemplateMode) -> list[Path]:
    return [*bench.references(item, k_shot, templates), bench.query(item)]


# --------------------------------------------------------------------------- MMAD
def run_mmad(bench: MMADBenchmark, items: Sequence[MMADItem], backend: Backend, out_dir: str | os.PathLike, *,
             k_shot: int = 1, templates: TemplateMode = "random", progress: bool = True,
             selection: dict[str, Any] | None = None) -> list[AnswerRecord]:
    """Answer every question of ``items`` (skipping those already in ``answers.jsonl``).

    Returns the records of ``items`` in the benchmark file's order, ready for :func:`score`.
    """
    out = _open(out_dir, "mmad", bench, backend, k_shot, templates, selection)
    answers = JsonlLog(out / "answers.jsonl")
    have: dict[tuple[str, int], dict[str, Any]] = {}
    for rec in answers.load():
        have[(rec.get("image", ""), int(rec.get("q", -1)))] = rec  # the latest line wins

    def fresh(item: MMADItem, q: Question) -> bool:
        rec = have.get((item.key, q.index))
        return rec is not None and not rec.get("error") and rec.get("gold") == q.answer and rec.get("question") == q.text

    jobs = []
    for item in items:
        todo = [q for q in item.questions if not fresh(item, q)]
        if not todo:
            continue
        try:
            images = _images(bench, item, k_shot, templates)
        except AdcopilotError as exc:
            for q in todo:
                have[(item.key, q.index)] = rec = _mmad_record(item, q, "", str(exc), 0.0)
                answers.append(rec)
            continue
        jobs += [_Job(item, images, q) for q in todo]
    log.info("%d questions to ask, %d already answered", len(jobs), sum(len(i.questions) for i in items) - len(jobs))

    def work(job: _Job) -> dict[str, Any]:
        assert job.question is not None
        q = job.question
        reply, err, dt = _timed(lambda: backend.answer_in_conversation(job.images, q, job.item.earlier(q)))
        return _mmad_record(job.item, q, reply or "", err, dt)

    for rec in _run_jobs(jobs, work, answers, backend.concurrency, "mmad", progress):
        have[(rec["image"], rec["q"])] = rec

    records = []
    for item in sorted(items, key=lambda i: i.order):
        for q in item.questions:
            rec = have.get((item.key, q.index))
            if rec is not None:
                records.append(
                    AnswerRecord(
                        image=item.key, question_type=q.type, gold=q.answer, reply=str(rec.get("reply", "")),
                        options=dict(q.options), question_index=q.index, error=rec.get("error"),
                    )
                )
    failed = sum(r.error is not None for r in records)
    finish_run(out, questions=len(records), failed=failed)
    if failed:
        log.warning("%d of %d questions failed (errors in %s); re-run to retry them", failed, len(records), answers.path)
    return records


def _mmad_record(item: MMADItem, q: Question, reply: str, error: str | None, seconds: float) -> dict[str, Any]:
    return {
        "image": item.key,
        "q": q.index,
        "type": q.type,
        "question": q.text,
        "options": q.options,
        "gold": q.answer,
        "reply": reply,
        "error": error,
        "seconds": round(seconds, 4),
    }


# --------------------------------------------------------------------------- MMAD-BBox
def _image_size(path: Path) -> tuple[int, int] | None:
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, ValueError):
        return None


def _query_size(bench: MMADBenchmark, item: MMADItem) -> tuple[int, int] | None:
    """(w, h) of the query; None when it cannot be found or read (its record then holds the error)."""
    try:
        return _image_size(bench.query(item))
    except AdcopilotError:
        return None


def run_bbox(bench: MMADBenchmark, items: Sequence[MMADItem], backend: Backend, out_dir: str | os.PathLike, *,
             k_shot: int = 1, templates: TemplateMode = "random", progress: bool = True,
             selection: dict[str, Any] | None = None) -> tuple[list[BBoxRecord], dict[str, int]]:
    """Ask for boxes on every image of ``items`` (resumable, ``boxes.jsonl``).

    Returns the records (ground truth from the masks; normal images have none) and counts of
    images left out: anomalous images without a mask, and masks that cannot be read.
    """
    if not backend.supports_boxes:
        raise AdcopilotError(f"backend '{backend.name}' does not answer with boxes")
    out = _open(out_dir, "mmad-bbox", bench, backend, k_shot, templates, selection)
    log_file = JsonlLog(out / "boxes.jsonl")
    have = {rec.get("image"): rec for rec in log_file.load()}
    skipped = {"no_mask": 0, "bad_mask": 0}
    scored: list[tuple[MMADItem, list[list[float]]]] = []
    for item in sorted(items, key=lambda i: i.order):
        if item.is_normal:
            scored.append((item, []))
            continue
        if not item.mask_path:
            skipped["no_mask"] += 1
            continue
        try:
            gt = gt_boxes_from_mask(bench.mask(item), _query_size(bench, item))
        except AdcopilotError as exc:
            log.warning("skipping %s: %s", item.key, exc)
            skipped["bad_mask"] += 1
            continue
        if not gt:
            log.warning("skipping %s: its mask is empty", item.key)
            skipped["bad_mask"] += 1
            continue
        scored.append((item, [[float(v) for v in b] for b in gt]))

    jobs = []
    for item, _ in scored:
        rec = have.get(item.key)
        if rec is not None and not rec.get("error"):
            continue
        try:
            jobs.append(_Job(item, _images(bench, item, k_shot, templates)))
        except AdcopilotError as exc:
            have[item.key] = rec = {"image": item.key, "reply": "", "error": str(exc)}
            log_file.append(rec)

    def work(job: _Job) -> dict[str, Any]:
        ans, err, dt = _timed(lambda: backend.boxes(job.images))
        ans = ans or BoxAnswer("")
        return {
            "image": job.item.key, "reply": ans.text, "coords": ans.coords,
            "frame": list(ans.frame) if ans.frame else None, "error": err, "seconds": round(dt, 4),
        }

    for rec in _run_jobs(jobs, work, log_file, backend.concurrency, "mmad-bbox", progress):
        have[rec["image"]] = rec

    records = []
    for item, gt in scored:
        rec = have.get(item.key, {"reply": "", "error": "not answered"})
        size = _query_size(bench, item) or (1, 1)
        frame = rec.get("frame")
        records.append(
            BBoxRecord(
                image=item.key, reply=str(rec.get("reply", "")), gt=gt, image_size=size,
                coords=rec.get("coords") or "pixel", frame=tuple(frame) if frame else None, error=rec.get("error"),
            ).evaluate()
        )
    finish_run(out, images=len(records), failed=sum(r.error is not None for r in records), **skipped)
    return records, skipped


# --------------------------------------------------------------------------- detection
def _map_name(key: str) -> str:
    return hashlib.sha1(key.encode()).hexdigest()[:20] + ".npy"


def run_detect(
    bench: MMADBenchmark,
    items: Sequence[MMADItem],
    backend: Backend,
    out_dir: str | os.PathLike,
    *,
    k_shot: int = 1,
    templates: TemplateMode = "random",
    pixel_size: int = 256,
    progress: bool = True,
    selection: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Image scores and anomaly maps of every query (resumable, ``scores.jsonl`` + ``maps/``),
    then image metrics (and pixel metrics where masks exist), overall and per dataset."""
    if not isinstance(backend, CopilotBackend):
        raise AdcopilotError(f"detection metrics need a model that outputs scores and maps (nano or baseline), not '{backend.name}'")
    out = _open(out_dir, "detect", bench, backend, k_shot, templates, selection, pixel_size=pixel_size)
    log_file = JsonlLog(out / "scores.jsonl")
    maps_dir = out / "maps"
    maps_dir.mkdir(exist_ok=True)
    have = {rec.get("image"): rec for rec in log_file.load()}
    todo = [
        i for i in items
        if (r := have.get(i.key)) is None or r.get("error") or not (maps_dir / _map_name(i.key)).exists()
    ]
    jobs = []
    for item in todo:
        try:
            jobs.append(_Job(item, _images(bench, item, k_shot, templates)))
        except AdcopilotError as exc:
            have[item.key] = rec = {"image": item.key, "error": str(exc)}
            log_file.append(rec)

    def work(job: _Job) -> dict[str, Any]:
        res, err, dt = _timed(lambda: backend.copilot.inspect(job.images[-1], job.images[:-1]))
        rec: dict[str, Any] = {"image": job.item.key, "label": int(not job.item.is_normal), "error": err, "seconds": round(dt, 4)}
        if res is not None:
            rec.update(score=float(res.score), threshold=float(res.threshold))
            amap = res.anomaly_map
            small = _resize_map(amap, pixel_size)
            np.save(maps_dir / _map_name(job.item.key), small.astype(np.float16))
        return rec

    for rec in _run_jobs(jobs, work, log_file, 1, "detect", progress):
        have[rec["image"]] = rec

    threshold = float(backend.copilot.threshold_with(k_shot))  # the threshold each query was judged at
    groups: dict[str, list[MMADItem]] = {"overall": list(items)}
    for item in items:
        groups.setdefault(item.dataset, []).append(item)
    metrics: dict[str, Any] = {}
    failed = [i.key for i in items if have.get(i.key, {}).get("error") or "score" not in have.get(i.key, {})]
    for name, group in groups.items():
        ok = [i for i in group if i.key not in failed]
        if not ok:
            continue
        m: dict[str, Any] = image_metrics([have[i.key]["score"] for i in ok], [not i.is_normal for i in ok], threshold)
        m.update(_pixel(bench, ok, maps_dir, pixel_size))
        metrics[name] = m
    result = {"threshold": threshold, "failed": len(failed), "metrics": metrics}
    _write_json(out / "detect.json", result)
    finish_run(out, images=len(items), failed=len(failed))
    return result


def _resize_map(amap: np.ndarray, pixel_size: int) -> np.ndarray:
    import cv2

    w, h = fit_size(amap.shape[:2], pixel_size)
    return cv2.resize(amap.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)


def _pixel(bench: MMADBenchmark, items: Iterable[MMADItem], maps_dir: Path, pixel_size: int) -> dict[str, Any]:
    """Pixel AUROC and PRO over the normal images and the anomalous ones with a mask."""
    maps, masks = [], []
    for item in items:
        amap = np.load(maps_dir / _map_name(item.key)).astype(np.float32)
        if item.is_normal:
            mask = np.zeros(amap.shape, bool)
        elif item.mask_path:
            try:
                mask = load_mask(bench.mask(item))
            except AdcopilotError as exc:
                log.warning("no pixel metrics for %s: %s", item.key, exc)
                continue
        else:
            continue
        maps.append(amap)
        masks.append(mask)
    if not any(m.any() for m in masks):
        return {"pixel_auroc": None, "pro": None, "pixel_images": 0}
    out: dict[str, Any] = dict(pixel_metrics(maps, masks, pixel_size=pixel_size))
    out["pixel_images"] = len(maps)
    return out
