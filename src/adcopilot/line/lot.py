"""``batch --mutual``: every image of a lot scored against its most similar other images of the lot.

No reference is needed (:mod:`adcopilot.model.mutual`): most of a lot is normal, so a patch with a
close match in the closest other images is normal. The run has two phases:

1. Features: every query is decoded (bad files skipped and listed), its stride-16 patch features and
   its global profile (:mod:`adcopilot.model.sanity`) are kept; then each image's patch values
   against the rest of the lot are computed and saved to ``mutual-scores.safetensors`` after every
   chunk, so an interrupted run resumes where it stopped (the lot's readable files must be the same);
   then, by default, against the pool of the images the first pass judged normal (below its lot
   threshold at k = 2; ``mutual-rescored.safetensors``, resumed the same way).
2. Verdicts: the lot's threshold comes from its own image scores, median + k * MAD
   (:func:`adcopilot.model.mutual.lot_threshold`) unless one is given; each image not yet in
   ``results.jsonl`` gets its record, its map (the patch values, stride 16, resized to its pixels),
   boxes and annotated picture, exactly like a reference run.

The image check runs against the lot: each image's profile against every other image's (the medians
describe the lot's normal images), so a blank frame or another product in the lot is anomalous with
its reason.

With references taken from the lot itself (``--lot-refs K``, opt-in), the images the mutual score
judged normal (below the lot threshold at ``pool_k``) that pass the image check become a reference bank;
each image is inspected by the model against its ``K`` nearest bank images (itself left out; scores saved
to ``lot-refs-scores.safetensors`` and resumed like the passes), and the two scores are joined on the
lot's own scale: their robust z-scores added (:func:`adcopilot.model.mutual.lot_z`), the model's at half
weight (``LOT_REFS_WEIGHT``), with a lot threshold on that sum; the map is the larger of the two maps each divided by its threshold, so boxes come from the
model's pixel map where it sees the defect. It helps aligned products (ELPV cells), not every one
(``benchmarks/RESULTS.md``).

For a lot of aligned parts (``--aligned``, opt-in: solar cells, parts in a fixture), PaDiM's Gaussians per
position are fitted on the lot itself (:mod:`adcopilot.model.lot_padim`: each position's features averaged over its
3 x 3 neighbours, fitted on every image, then on the half the first fit scored lowest) and its robust z-score joins
the sum at ``LOT_PADIM_WEIGHT``, alone with the mutual score or beside the lot references' (``lot_padim_score`` in
each record; the maps stay the mutual score's, or the lot references' join of maps). On lots of loose parts it can
rank worse (``benchmarks/RESULTS.md``).

With references as well (``--refs``), each image is also inspected against its nearest references and
the two judgements are joined on a common scale: each score divided by its own threshold, the larger
wins (and the same for the maps, so boxes come from whichever sees the defect). Either alone suffices
to call a part anomalous: the references catch a defect that many parts of the lot share (invisible
to mutual scoring), the lot catches what one or two references do not show well; a miss on the line
costs more than a second look.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from adcopilot.api import Copilot
from adcopilot.errors import AdcopilotError
from adcopilot.imaging import load_image, to_float_array
from adcopilot.line.batch import (
    BatchConfig,
    BatchPlan,
    BatchSummary,
    ResultWriter,
    _asset_name,
    _check_manifest,
    _digest,
    _manifest,
    _record,
    _save_pictures,
    check_bank,
    finish_batch,
    lot_id,
    output_folder,
    shard_suffix,
)
from adcopilot.line.lot_features import LotFeatures, encode_lot, lot_checks, lot_tower
from adcopilot.line.records import read_records
from adcopilot.line.references import GLOBAL_SIZE, ReferenceBank, global_features, tower_for
from adcopilot.line.sources import LotItem
from adcopilot.model.boxes import boxes_from_map
from adcopilot.model.lot_padim import AGREEMENT_FLOOR, NEIGHBOURHOOD, lot_padim_scores, rank_agreement
from adcopilot.model.mutual import (
    MAD_K,
    MutualRecipe,
    image_scores,
    lot_image_scores,
    lot_threshold,
    lot_z,
    mutual_patch_scores,
    pool_of,
    relative_patch_values,
)
from adcopilot.results import Box, InspectionResult, describe_findings

log = logging.getLogger(__name__)

SCORES_FILE = "mutual-scores.safetensors"
RESCORED_FILE = "mutual-rescored.safetensors"
LOT_REFS_FILE = "lot-refs-scores.safetensors"
#: The model's robust z-score counts at this weight beside the mutual score's in the ``--lot-refs`` join: chosen on
#: ELPV's training split taken as lots, on stretched lot features (benchmarks/RESULTS.md; equal weights there lost
#: poly cells what they gave mono cells).
LOT_REFS_WEIGHT = 0.5
#: The lot PaDiM's robust z-score counts at this weight beside the mutual score's in the ``--aligned`` join: chosen on
#: ELPV's training split taken as lots, with and without lot references (benchmarks/RESULTS.md).
LOT_PADIM_WEIGHT = 0.75
#: Below this many images a lot's PaDiM (fitted on half of them, 100 features per position) is a weak model: warned.
LOT_PADIM_MIN_IMAGES = 50


@dataclass(frozen=True)
class MutualConfig:
    """Settings of lot-level scoring (see :mod:`adcopilot.model.mutual`)."""

    recipe: MutualRecipe = MutualRecipe()  # how patches and images are scored
    mad_k: float = MAD_K  # lot threshold: median + mad_k robust deviations
    threshold: float | None = None  # a fixed threshold for mutual scores instead of the lot's own
    lot_refs: int = 0  # with no references given: the model against this many of the lot's pool images (0: off)
    aligned: bool = False  # the lot's parts are aligned: PaDiM fitted on the lot joins the score (no references given)


def _load_scores(path: Path, digest: str, shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Patch values and a done mask saved by an earlier run of this lot, else empty ones."""
    empty = torch.zeros(shape), torch.zeros(shape[0], dtype=torch.bool)
    if not path.exists():
        return empty
    try:
        saved = load_file(str(path))
        values, done, key = saved["patch_scores"], saved["done"].bool(), saved["lot"]
    except (OSError, SafetensorError, KeyError) as exc:
        log.warning("%s: unreadable (%s); the lot is scored again", path, exc)
        return empty
    if tuple(values.shape) != shape or bytes(key.tolist()).decode("ascii", "replace") != digest:
        log.warning("%s: another lot's scores; the lot is scored again", path)
        return empty
    return values, done


def _save_scores(path: Path, digest: str, values: torch.Tensor, done: torch.Tensor) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    lot = torch.tensor(list(digest.encode("ascii")), dtype=torch.uint8)
    save_file({"patch_scores": values.contiguous(), "done": done.to(torch.uint8), "lot": lot}, str(tmp))
    os.replace(tmp, path)


def _resumable_scores(
    path: Path, digest: str, shape: tuple[int, int], scorer: Callable[[list[int], Callable[[int], None]], torch.Tensor],
    chunk: int, progress: bool, desc: str,
) -> torch.Tensor:
    """(N, P) patch values computed ``chunk`` rows at a time by ``scorer``, saved after each chunk and
    resumed from ``path`` when it holds the same lot's (``digest``) values."""
    n = shape[0]
    values, done = _load_scores(path, digest, shape)
    todo = [i for i in range(n) if not done[i]]
    with tqdm(total=n, initial=n - len(todo), unit="img", desc=desc, disable=not progress, dynamic_ncols=True) as bar:
        for start in range(0, len(todo), chunk):
            rows = todo[start : start + chunk]
            values[rows] = scorer(rows, bar.update)
            done[rows] = True
            _save_scores(path, digest, values, done)
    return values


def score_lot(
    lot: LotFeatures, out: Path, cfg: MutualConfig, restart: bool = False, chunk: int = 8, progress: bool = False
) -> torch.Tensor:
    """(N, P) patch values of the lot's images: the first pass against the whole lot (``SCORES_FILE``),
    then, when the recipe has a pool, the second against the images the first judged normal
    (``RESCORED_FILE``); each resumed."""
    recipe = cfg.recipe
    n, p, _ = lot.views.views[0].shape
    keys = [it.key for it in lot.items]
    if restart:
        for name in (SCORES_FILE, RESCORED_FILE):
            (out / name).unlink(missing_ok=True)
    first = _resumable_scores(
        out / SCORES_FILE, _digest(keys + [recipe.key()]), (n, p),
        lambda rows, step: mutual_patch_scores(lot.views, recipe.interval, rows=rows, progress=step,
                                                twin_ratio=recipe.twin_ratio),
        chunk, progress, "mutual")
    if recipe.pool_k is None:
        return first
    pool = pool_of(image_scores(first, recipe.top_k), recipe.pool_k)
    return _resumable_scores(
        out / RESCORED_FILE, _digest(keys + [recipe.pool_key(), ",".join(map(str, pool))]), (n, p),
        lambda rows, step: mutual_patch_scores(lot.views, recipe.pool_interval, rows=rows, progress=step, pool=pool,
                                                twin_ratio=recipe.twin_ratio),
        chunk, progress, "mutual, against the pool")


def lot_bank(
    copilot: Copilot, lot: LotFeatures, scores: Sequence[float], recipe: MutualRecipe,
    checks: Sequence[str | None] | None = None,
) -> ReferenceBank:
    """The lot's own references: the images its mutual scores judge normal (below the lot threshold at the
    recipe's ``pool_k``, at least two) that pass the image check (``checks``: each image's failure or None),
    with their global features."""
    k = recipe.pool_k if recipe.pool_k is not None else MutualRecipe().pool_k
    assert k is not None
    pool = [i for i in pool_of(torch.tensor(scores), k) if checks is None or checks[i] is None]
    if len(pool) < 2:
        raise AdcopilotError(f"lot references: only {len(pool)} of the lot's images look normal and pass the image "
                             "check; give normal references with --refs")
    return ReferenceBank.from_paths([lot.items[i].path for i in pool], tower_for(copilot.detector))


def score_against_lot(
    copilot: Copilot, lot: LotFeatures, bank: ReferenceBank, shots: int, out: Path, restart: bool = False,
    chunk: int = 8, progress: bool = False,
) -> np.ndarray:
    """(N,) the model's image score of each image against its ``shots`` nearest images of ``bank`` (itself
    left out), saved to ``LOT_REFS_FILE`` after every chunk and resumed; NaN where the image can no longer
    be read (its verdict skips it)."""
    tower = tower_for(copilot.detector)

    def scorer(rows: list[int], step: Callable[[int], None]) -> torch.Tensor:
        got = torch.full((len(rows), 1), float("nan"))
        for j, i in enumerate(rows):
            item = lot.items[i]
            try:
                img = load_image(item.path, name=str(item.path))
                feature = global_features(tower, [to_float_array(img, GLOBAL_SIZE)])[0]  # (D,)
                refs = [str(p) for p, _ in bank.nearest(feature, shots, exclude=item.path, skip_copies=True)]
                got[j, 0] = copilot.analyze(img, refs).score
            except AdcopilotError as exc:
                log.warning("lot references: %s", exc)
            step(1)
        return got

    path = out / LOT_REFS_FILE
    if restart:
        path.unlink(missing_ok=True)
    key = [it.key for it in lot.items] + [f"lot_refs={shots}", copilot.model_name, *map(str, bank.paths)]
    values = _resumable_scores(path, _digest(key), (len(lot.items), 1), scorer, chunk, progress,
                               "model, against lot references")
    return values[:, 0].numpy().astype(np.float64)


def joined_scores(mutual: Sequence[float], model: np.ndarray | None = None, padim: np.ndarray | None = None) -> np.ndarray:
    """(N,) scores of a lot -> the mutual score's robust z-score on the lot plus the model's (against lot
    references) at ``LOT_REFS_WEIGHT`` and the lot PaDiM's at ``LOT_PADIM_WEIGHT``, each when given (an image the
    model could not score counts at the model's median)."""
    out = lot_z(mutual)
    if model is not None:
        model = np.where(np.isfinite(model), model, np.nanmedian(model) if np.isfinite(model).any() else 0.0)
        out = out + LOT_REFS_WEIGHT * lot_z(model)
    if padim is not None:
        out = out + LOT_PADIM_WEIGHT * lot_z(padim)
    return out


def _map_of(patch_values: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """(P,) patch values on the stride-16 grid -> (H, W) map in the query's pixels."""
    side = int(round(patch_values.numel() ** 0.5))
    grid = patch_values.reshape(side, side).numpy().astype(np.float32)  # (S/16, S/16)
    return cv2.resize(grid, size, interpolation=cv2.INTER_LINEAR)


def _boxes(copilot: Copilot, amap: np.ndarray, threshold: float) -> list[Box]:
    found = boxes_from_map(amap, threshold, copilot.box_rules)
    if not found and amap.max() > 0:  # a diffuse difference: the strongest region, as inspect does
        found = boxes_from_map(amap, 0.5 * float(amap.max()), copilot.box_rules)[:1]
    return [Box(bbox_2d=bbox, label="defect", score=s) for bbox, s in found]


def judge(
    copilot: Copilot, query: str, size: tuple[int, int], mutual_map: np.ndarray, mutual_score: float,
    mutual_threshold: float, check: str | None, against_refs: InspectionResult | None = None,
    joined: tuple[float, float] | None = None,
) -> InspectionResult:
    """The result of one image of the lot: its mutual score alone, or joined with its reference
    inspection (each divided by its own threshold, the larger wins; the threshold is then 1), or with
    ``joined`` (score, threshold) the score and threshold of the lot's joined scale (lot references and/or the
    lot PaDiM); the maps are joined as with references when there is a reference inspection, else the map is the
    mutual score's at its own threshold."""
    amap, score, thr = mutual_map, mutual_score, mutual_threshold
    map_thr = thr
    if against_refs is None and joined is not None:  # the lot PaDiM's join: the map stays the mutual score's
        score, thr = joined
    if against_refs is not None:
        r = against_refs
        check = r.image_check or check  # the references' check is the stricter one when it fails
        assert r.anomaly_map is not None
        amap = np.maximum(mutual_map / mutual_threshold, r.anomaly_map / r.threshold)
        score, thr = joined or (max(mutual_score / mutual_threshold, r.score / r.threshold), 1.0)
        map_thr = 1.0
    anomalous = score >= thr or check is not None
    boxes = _boxes(copilot, amap, map_thr) if anomalous and check is None else []
    w, h = size
    return InspectionResult(
        query=query, references=[] if against_refs is None else against_refs.references,
        verdict="anomalous" if anomalous else "normal", score=score, threshold=thr, boxes=boxes,
        description=describe_findings(anomalous, boxes, w, h, check), model=copilot.model_name,
        image_size=size, registration={} if against_refs is None else against_refs.registration,
        anomaly_map=amap, image_check=check,
    )


def run_mutual_batch(
    copilot: Copilot,
    queries: Sequence[LotItem],
    references: Sequence[str | os.PathLike] | None,
    out_dir: str | os.PathLike,
    config: BatchConfig | None = None,
    mutual: MutualConfig | None = None,
) -> BatchSummary:
    """Score the lot against itself (and its references, when given); write the outputs of a batch run."""
    cfg, mcfg = config or BatchConfig(), mutual or MutualConfig()
    if cfg.shard != (1, 1):
        raise AdcopilotError("--mutual scores the lot as a whole: it cannot be split with --shard")
    problems = mcfg.recipe.problems()
    if problems:
        raise AdcopilotError(f"mutual scoring: {problems[0]}")
    if mcfg.lot_refs < 0 or (mcfg.lot_refs and references):
        raise AdcopilotError(f"lot references: a positive count without --refs (they are the lot's own), "
                             f"got {mcfg.lot_refs}" + (" with --refs" if references else ""))
    if mcfg.aligned and references:
        raise AdcopilotError("--aligned fits PaDiM on the lot itself, without --refs (with normal references, "
                             "adcopilot adapt fits it on them)")
    out = output_folder(out_dir)
    tower = lot_tower(copilot)
    bank = ReferenceBank.from_paths(references, tower_for(copilot.detector), need_features=True) if references else None
    # As the manifest reads back (tuples as lists), so an unchanged run compares equal when it resumes.
    # The lot PaDiM's window is part of what an aligned run computes: a run begun with another is not resumed.
    settings = json.loads(json.dumps({**asdict(mcfg.recipe), "mad_k": mcfg.mad_k, "threshold": mcfg.threshold,
                                      "lot_refs": mcfg.lot_refs, "aligned": mcfg.aligned,
                                      **({"padim_neighbourhood": NEIGHBOURHOOD} if mcfg.aligned else {})}))
    if bank is not None:
        manifest: dict[str, Any] = {**_manifest(copilot, bank, cfg, queries), "mutual": settings}
    else:
        manifest = {"lot": lot_id(queries), "model": copilot.model_name, "image_size": copilot.detector.image_size,
                    "references": {"count": 0, "digest": ""}, "mutual": settings}
    _check_manifest(out, manifest, cfg)
    suffix = shard_suffix(1, 1)
    results_path, skipped_path = out / f"results{suffix}.jsonl", out / f"skipped{suffix}.csv"
    if cfg.restart:
        results_path.unlink(missing_ok=True)

    t0 = time.perf_counter()
    lot = encode_lot(queries, tower, copilot.detector.image_size, mcfg.recipe, cfg.workers, progress=cfg.progress,
                     keep_scales=mcfg.aligned)
    patch_values = score_lot(lot, out, mcfg, cfg.restart, progress=cfg.progress)  # (N, P)
    scores = lot_image_scores(patch_values, lot.views.global_features, mcfg.recipe).tolist()
    patch_values = relative_patch_values(patch_values, mcfg.recipe.floor)  # the maps on the scores' scale
    thr = mcfg.threshold if mcfg.threshold is not None else lot_threshold(scores, mcfg.mad_k)
    checks = lot_checks(lot.profiles, copilot.check_rules)
    log.info("lot of %d images: mutual threshold %.4f (median %.4f)", len(scores), thr, float(np.median(scores)))
    shots, joined, joined_thr = cfg.shots, None, 0.0
    model, padim = None, None
    lot_notes: list[str] = []
    if mcfg.aligned:
        assert lot.scales is not None
        if len(lot.items) < 3:
            raise AdcopilotError(f"--aligned fits PaDiM on the lot: it needs three readable images or more, got "
                                 f"{len(lot.items)}")
        if len(lot.items) < LOT_PADIM_MIN_IMAGES:
            log.warning("--aligned: a lot of %d images gives PaDiM few images per position (fewer than %d)",
                        len(lot.items), LOT_PADIM_MIN_IMAGES)
        with tqdm(total=2 * len(lot.items), unit="img", desc="lot PaDiM", disable=not cfg.progress,
                  dynamic_ncols=True) as bar:
            padim = lot_padim_scores(lot.scales, copilot.detector.image_size, progress=bar.update)
        agreement = rank_agreement(np.asarray(scores), padim)
        if agreement < AGREEMENT_FLOOR:
            lot_notes.append(f"--aligned: the lot's PaDiM ranks the images unlike the mutual score (rank correlation "
                             f"{agreement:.2f}); if the parts are not in the same place in every image, run without "
                             "--aligned")
            log.warning(lot_notes[-1])
    if mcfg.lot_refs:
        bank = lot_bank(copilot, lot, scores, mcfg.recipe, checks)
        model = score_against_lot(copilot, lot, bank, mcfg.lot_refs, out, cfg.restart, progress=cfg.progress)
        shots = mcfg.lot_refs
        log.info("lot references: %d of the lot's images", len(bank))
    if model is not None or padim is not None:
        joined = joined_scores(scores, model, padim)
        thr = lot_threshold(scores, mcfg.mad_k)  # the mutual map's own scale
        joined_thr = mcfg.threshold if mcfg.threshold is not None else lot_threshold(joined, mcfg.mad_k)
        log.info("joined lot threshold %.4f", joined_thr)

    done = {r.get("file") for r in read_records(results_path)}
    todo = [i for i, it in enumerate(lot.items) if it.key not in done]
    summary = BatchSummary(out, len(queries), len(queries) - len(todo) - len(lot.skipped), 0, lot_notes=lot_notes)
    if bank is not None:
        summary.skipped.extend((f"reference {p}", reason) for p, reason in bank.skipped)
        summary.reference_notes = check_bank(copilot, bank, out, manifest, cfg)
    empty = ReferenceBank([], torch.zeros(0, 0), [])
    plan = BatchPlan(out, results_path, skipped_path, bank or empty, tower_for(copilot.detector), False,
                     [lot.items[i] for i in todo], summary)
    with (
        ThreadPoolExecutor(max(1, cfg.workers), thread_name_prefix="lot-io") as pool,
        ResultWriter(plan) as writer,
        tqdm(total=len(todo), unit="img", desc="verdicts", disable=not cfg.progress, dynamic_ncols=True) as bar,
    ):
        writes = []
        for n, i in enumerate(todo):
            both = None if joined is None else (float(joined[i]), joined_thr)
            rec, result, img = _inspect_one(copilot, bank, lot.items[i], patch_values[i], scores[i], thr, checks[i],
                                            cfg, shots, both, None if padim is None else float(padim[i]))
            if rec is None:
                writer.skip(lot.items[i].key, result)
                continue
            writer.record(rec)
            if cfg.save_images:
                writes.append(pool.submit(_save_pictures, img, result, out / rec["annotated"], out / rec["thumb"],
                                          cfg.thumb_size))
            if (n + 1) % max(1, cfg.chunk) == 0:
                writer.flush()
            bar.update(1)
        for key, reason in lot.skipped:
            writer.skip(key, reason)
        writer.flush()
        for w in writes:
            w.result()
    return finish_batch(plan, cfg, time.perf_counter() - t0)


def _inspect_one(
    copilot: Copilot, bank: ReferenceBank | None, item: LotItem, patch_values: torch.Tensor, score: float,
    thr: float, check: str | None, cfg: BatchConfig, shots: int, joined: tuple[float, float] | None = None,
    padim: float | None = None,
) -> tuple[dict[str, Any] | None, Any, Any]:
    """(record, result, image) of one image, or (None, reason, None) when it cannot be inspected."""
    try:
        img = load_image(item.path, name=str(item.path))
        chosen: list[tuple[Path, float]] = []
        against = None
        if bank is not None:
            feature = global_features(tower_for(copilot.detector), [to_float_array(img, GLOBAL_SIZE)])[0]  # (D,)
            # The lot's own bank (joined scores) may hold a copy of this very picture: never its reference.
            chosen = bank.nearest(feature, shots, exclude=item.path, skip_copies=joined is not None)
            against = copilot.inspect(img, [str(p) for p, _ in chosen])
    except AdcopilotError as exc:
        return None, str(exc), None
    result = judge(copilot, str(item.path), img.size, _map_of(patch_values, img.size), score, thr, check, against,
                   joined)
    rec = _record(item, result, chosen)
    rec["mutual_score"], rec["mutual_threshold"] = round(score, 6), round(thr, 6)
    if against is not None:
        rec["reference_score"], rec["reference_threshold"] = round(against.score, 6), round(against.threshold, 6)
    if padim is not None:
        rec["lot_padim_score"] = round(padim, 6)
    if cfg.save_images:
        name = _asset_name(item.key)
        rec["annotated"], rec["thumb"] = f"annotated/{name}", f"thumbs/{name}"
    return rec, result, img
