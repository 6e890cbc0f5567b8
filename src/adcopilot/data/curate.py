"""The curation pipeline: sources -> split -> per-image analysis -> samples -> card, validated.

Steps:

1. Scan the sources (:mod:`adcopilot.data.sources`); a source of unknown layout is reported
   and skipped.
2. Split by image, keeping an instance's images together (a normal image and its synthetic
   variants), stratified by (dataset, class, defect), deterministic for the seed (instances
   ordered by a hash of seed and name, the first ``test_fraction`` of each stratum to test).
   MMAD items always go to test. The split is written to ``splits.json``.
3. Per image (in worker processes): read and validate the image, read the mask (wrong size,
   unreadable: the image is reported in ``skipped.jsonl`` and skipped), paint and write the
   synthetic defect for ``normal`` sources, hash the pixels, measure the mask.
4. Per image (in order): pick normal references of its class from the train split (never the
   image itself or its instance), generate the samples (:mod:`adcopilot.data.samples`) with a
   generator seeded by (seed, image key), so a sample does not depend on the run's order.
5. Write ``train.jsonl`` and ``test.jsonl`` (a test image whose pixels equal a training image's,
   e.g. one file in two sources, is left out of the test split and listed as skipped),
   ``hashes.json`` (the leak guard's manifest),
   the dataset card ``card.md`` / ``card.json``, and validate every sample (boxes inside the
   image, answer letters among the options, JSON answers parse).

Resume: each finished image appends its samples to ``samples.partial.jsonl`` and one line to
``progress.jsonl``; a rerun with the same settings skips finished images (a half-written tail is
cut off) and produces the same files as an uninterrupted run. Skipped images stay skipped on a
rerun; after fixing them, start over with ``--fresh``.

Output folder::

    config.json  splits.json  progress.jsonl  samples.partial.jsonl  skipped.jsonl
    train.jsonl  test.jsonl  hashes.json  card.md  card.json  synthetic/<dataset>/<class>/*.png

Usage::

    report = curate(CurateConfig(sources=["mvtec:/data/mvtec"], out=Path("curated"), seed=0))
    report.counts["task"]   # {"caption": ..., "mcq": ..., ...}
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from adcopilot.data import leak, synth
from adcopilot.data.knowledge import Knowledge
from adcopilot.data.masks import describe_regions, load_mask
from adcopilot.data.questions import LETTERS, LabelledItem, LetterBalancer
from adcopilot.data.samples import TASKS, ItemFacts, make_samples, mcq_samples
from adcopilot.data.sources import Entry, _stable_int, scan_sources
from adcopilot.errors import AdcopilotError
from adcopilot.imaging import load_image

log = logging.getLogger(__name__)

#: Settings that must match for a run to resume in an existing folder.
_RESUME_KEYS = ("sources", "seed", "test_fraction", "references", "variants", "tasks", "knowledge")


@dataclass
class CurateConfig:
    sources: list[str]
    out: Path
    seed: int = 0
    test_fraction: float = 0.2
    references: int = 1  # normal reference images per sample
    variants: int = 1  # synthetic defects per image of a ``normal`` source
    tasks: tuple[str, ...] = TASKS
    knowledge: list[str] = field(default_factory=list)  # extra YAML files
    workers: int = 1
    progress: bool = True

    def key_settings(self) -> dict:
        d = asdict(self)
        d["tasks"] = list(self.tasks)
        d["knowledge"] = [os.fspath(Path(k).resolve()) for k in self.knowledge]
        return {k: d[k] for k in _RESUME_KEYS}


@dataclass
class CurateReport:
    out: Path
    n_images: int
    n_samples: int
    skipped: list[dict]
    source_problems: list[dict]
    counts: dict
    seconds: float
    problems: list[str]


# ------------------------------------------------------------------------------------------
# split


def assign_splits(entries: list[Entry], seed: int, test_fraction: float) -> dict[str, str]:
    """Entry key -> "train" / "test" (see the module docstring)."""
    if not 0.0 <= test_fraction < 1.0:
        raise AdcopilotError(f"--test-fraction {test_fraction}: must be in [0, 1)")
    by_instance: dict[str, list[Entry]] = defaultdict(list)
    for e in entries:
        by_instance[e.instance].append(e)
    strata: dict[tuple, list[str]] = defaultdict(list)
    split: dict[str, str] = {}
    for inst, members in by_instance.items():
        fixed = next((m.fixed_split for m in members if m.fixed_split), None)
        if fixed:
            for m in members:
                split[m.key] = fixed
            continue
        first = members[0]
        strata[(first.dataset, first.category, first.defect or "good", first.kind)].append(inst)
    for stratum in sorted(strata):
        insts = sorted(strata[stratum], key=lambda i: (_stable_int(seed, "split", i), i))
        n_test = int(round(len(insts) * test_fraction))
        for j, inst in enumerate(insts):
            for m in by_instance[inst]:
                split[m.key] = "test" if j < n_test else "train"
    return split


# ------------------------------------------------------------------------------------------
# per-image analysis (runs in worker processes; returns small, picklable results)


@dataclass
class Analysis:
    key: str
    ok: bool
    reason: str = ""
    size: tuple[int, int] = (0, 0)
    hash: str = ""
    facts: dict | None = None
    boxes: list[list[int]] | None = None
    defect: str | None = None


def _write_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR) if arr.ndim == 3 else arr
    tmp = path.with_name(path.stem + ".tmp.png")
    if not cv2.imwrite(str(tmp), img, [cv2.IMWRITE_PNG_COMPRESSION, 1]):
        raise AdcopilotError(f"{path}: cannot write image")
    tmp.replace(path)


def analyse(entry: Entry, seed: int) -> Analysis:
    """Read, validate, (paint,) hash and measure one entry; never raises for bad input."""
    try:
        defect = entry.defect
        if entry.synth_kind:
            base = np.asarray(load_image(entry.base_path or ""))
            rng = np.random.default_rng([seed, _stable_int(entry.key) % (2**32), 7])
            d = synth.add_defect(base, rng, entry.synth_kind)
            arr, mask = d.image, d.mask.astype(bool)
            defect = d.label
            _write_png(Path(entry.image_path), arr)
            _write_png(Path(entry.mask_path or ""), mask.astype(np.uint8) * 255)
        else:
            arr = np.asarray(load_image(entry.image_path))
            mask = None
            if entry.mask_path and entry.kind != "mmad":
                mask = load_mask(entry.mask_path, (arr.shape[1], arr.shape[0]))
        h, w = arr.shape[:2]
        facts = boxes = None
        if mask is not None:
            facts = describe_regions(arr, mask)
            if facts["count"] == 0:
                return Analysis(entry.key, False, f"{entry.mask_path}: empty mask for a defect image")
            boxes = [r["bbox_2d"] for r in facts["regions"]]
        return Analysis(entry.key, True, size=(w, h), hash=leak.pixel_hash(arr), facts=facts,
                        boxes=boxes, defect=defect)
    except AdcopilotError as exc:
        return Analysis(entry.key, False, str(exc))
    except (OSError, ValueError, cv2.error) as exc:  # an unexpected file problem: report, go on
        return Analysis(entry.key, False, f"{entry.image_path}: {type(exc).__name__}: {exc}")


def _analyse_star(args: tuple[Entry, int]) -> Analysis:
    return analyse(*args)


def _analyses(entries: list[Entry], seed: int, workers: int) -> Iterator[Analysis]:
    if workers <= 1 or len(entries) < 8:
        for e in entries:
            yield analyse(e, seed)
        return
    pool = ProcessPoolExecutor(max_workers=workers)
    try:
        yield from pool.map(_analyse_star, [(e, seed) for e in entries], chunksize=4)
    finally:
        # On an interruption, do not wait for the images still queued.
        pool.shutdown(wait=False, cancel_futures=True)


# ------------------------------------------------------------------------------------------
# resume state


class _State:
    """Append-only progress: samples.partial.jsonl + progress.jsonl (see the module docstring)."""

    def __init__(self, out: Path) -> None:
        self.samples_path = out / "samples.partial.jsonl"
        self.progress_path = out / "progress.jsonl"
        self.done: dict[str, dict] = {}
        offset = 0
        if self.progress_path.exists():
            good_lines = []
            for line in self.progress_path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    break  # a half-written last line
                self.done[rec["key"]] = rec
                good_lines.append(line)
                offset = max(offset, int(rec.get("end", 0)))
            self.progress_path.write_text("".join(x + "\n" for x in good_lines), encoding="utf-8")
        # Cut samples written after the last recorded image.
        with open(self.samples_path, "a+b") as fh:
            fh.truncate(offset)
        self._samples = open(self.samples_path, "ab")  # noqa: SIM115 - closed in close()
        self._progress = open(self.progress_path, "a", encoding="utf-8")  # noqa: SIM115

    def record(self, key: str, samples: list[dict], **info: object) -> None:
        data = "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples).encode("utf-8")
        self._samples.write(data)
        self._samples.flush()
        rec = {"key": key, "n": len(samples), "end": self._samples.tell(), **info}
        self._progress.write(json.dumps(rec) + "\n")
        self._progress.flush()
        self.done[key] = rec

    def close(self) -> None:
        self._samples.close()
        self._progress.close()

    def samples(self) -> Iterator[dict]:
        with open(self.samples_path, encoding="utf-8") as fh:
            for line in fh:
                yield json.loads(line)


# ------------------------------------------------------------------------------------------
# validation and card


def validate_sample(s: dict) -> list[str]:
    """Problems of one sample: boxes outside the image, answer letters not among the options..."""
    out: list[str] = []
    sid = s.get("id", "?")
    if s.get("task") not in TASKS:
        out.append(f"{sid}: unknown task {s.get('task')!r}")
    if s.get("split") not in ("train", "test"):
        out.append(f"{sid}: bad split {s.get('split')!r}")
    w, h = s.get("image_size", (0, 0))
    boxes = [b["bbox_2d"] for b in s.get("boxes", [])]
    if s.get("task") in ("caption", "localization"):
        try:
            answer = json.loads(s["turns"][-1]["content"])
            listed = answer["defect_details"] if s["task"] == "caption" else answer
            boxes += [b["bbox_2d"] for b in listed]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            out.append(f"{sid}: answer is not the expected JSON ({exc})")
    for b in boxes:
        if not (len(b) == 4 and 0 <= b[0] < b[2] <= w and 0 <= b[1] < b[3] <= h):
            out.append(f"{sid}: box {b} not inside the {w}x{h} image")
    if s.get("task") == "mcq":
        opts = s.get("options") or {}
        if list(opts) != list(LETTERS[: len(opts)]) or len(opts) < 2:
            out.append(f"{sid}: options {list(opts)} are not A, B, ...")
        if s.get("answer") not in opts:
            out.append(f"{sid}: answer {s.get('answer')!r} is not an option")
        if s["turns"][-1]["content"] != s.get("answer"):
            out.append(f"{sid}: assistant turn does not give the answer letter")
    roles = [t["role"] for t in s.get("turns", [])]
    if not roles or roles != ["user", "assistant"] * (len(roles) // 2):
        out.append(f"{sid}: turns do not alternate user/assistant")
    return out


def _card_md(card: dict, examples: dict[str, dict]) -> str:
    lines = ["# Curated Chat-AD data set", ""]
    lines += [f"Made by `adcopilot curate` with seed {card['config']['seed']}, test fraction "
              f"{card['config']['test_fraction']}, {card['config']['references']} reference image(s) per sample.", ""]
    lines += ["Sources: " + ", ".join(f"`{s}`" for s in card["config"]["sources"]), ""]
    lines += [f"Images: {card['n_images']} used, {len(card['skipped'])} skipped. Samples: {card['n_samples']}.", ""]

    def table(title: str, counts: dict) -> None:
        lines.extend([f"## {title}", "", "| | train | test | total |", "|---|---:|---:|---:|"])
        for k in sorted(counts):
            c = counts[k]
            lines.append(f"| {k} | {c.get('train', 0)} | {c.get('test', 0)} | {c.get('train', 0) + c.get('test', 0)} |")
        lines.append("")

    table("Samples per task", card["by_task"])
    table("Multiple-choice questions per MMAD type", card["by_type"])
    table("Images per class", card["images_by_class"])
    table("Images per defect type", card["images_by_defect"])
    lines += ["## Answer letters (multiple choice)", "", "| options | " + " | ".join(LETTERS) + " |",
              "|---|" + "---:|" * len(LETTERS)]
    for n, c in sorted(card["answer_letters"].items()):
        lines.append(f"| {n} | " + " | ".join(str(c.get(x, "")) for x in LETTERS) + " |")
    lines.append("")
    if card["skipped"] or card["source_problems"]:
        lines += ["## Skipped", ""]
        lines += [f"- source `{p['source']}`: {p['reason']}" for p in card["source_problems"]]
        lines += [f"- {p['reason']}" for p in card["skipped"][:50]]
        if len(card["skipped"]) > 50:
            lines.append(f"- ... and {len(card['skipped']) - 50} more (skipped.jsonl)")
        lines.append("")
    lines += ["## Validation", "", f"{len(card['problems'])} problems." if card["problems"] else
              "Every box lies inside its image; every answer letter is one of its options.", ""]
    lines += ["## Example samples", ""]
    for task, s in examples.items():
        lines += [f"### {task}", "", "```json", json.dumps(s, indent=1, ensure_ascii=False)[:3000], "```", ""]
    lines += ["Leak guard: `hashes.json` holds the pixel hash of every image with its split; evaluation "
              "warns (and with `--strict` refuses) when a test image was in a training split.", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# pipeline


def _prepare_out(cfg: CurateConfig) -> Path | None:
    """Refuse a folder curated with other settings; the config file to write once a source is usable
    (None when it is there already), so a run that found nothing leaves no settings behind to refuse
    the corrected command with."""
    cfg.out.mkdir(parents=True, exist_ok=True)
    path = cfg.out / "config.json"
    settings = cfg.key_settings()
    if not path.exists():
        return path
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        old = None
    if old != settings:
        raise AdcopilotError(
            f"{path}: this folder was curated with other settings; use another --out, or --fresh to start over"
        )
    return None


def clear_out(out: Path) -> None:
    """Remove the files a curation run writes (for a fresh start); nothing else is touched."""
    for name in ("config.json", "splits.json", "progress.jsonl", "samples.partial.jsonl", "skipped.jsonl",
                 "train.jsonl", "test.jsonl", "hashes.json", "card.md", "card.json"):
        (out / name).unlink(missing_ok=True)


def portable(path: str, out: Path) -> str:
    """A path inside the output folder relative to it (the set can move), any other absolute."""
    p = os.path.abspath(path)
    root = _abs_dir(str(out))
    return Path(p[len(root):]).as_posix() if p.startswith(root) else p


@functools.lru_cache(maxsize=8)
def _abs_dir(path: str) -> str:
    return os.path.join(str(Path(path).resolve()), "")


def _pick_references(
    e: Entry, pools: dict[str, list[Entry]], k: int, rng: np.random.Generator
) -> list[str]:
    if e.kind == "mmad":
        return e.references[:k] if k else list(e.references)
    pool = [p for p in pools.get(e.category, []) if p.instance != e.instance]
    if not pool:
        return []
    idx = rng.choice(len(pool), size=min(k, len(pool)), replace=False)
    return [pool[int(i)].image_path for i in sorted(idx)]


def curate(cfg: CurateConfig) -> CurateReport:
    """Run the pipeline (see the module docstring); resumable, deterministic for ``cfg.seed``."""
    t0 = time.perf_counter()
    unknown = set(cfg.tasks) - set(TASKS)
    if unknown:
        raise AdcopilotError(f"--task {sorted(unknown)[0]}: unknown task; choose from {', '.join(TASKS)}")
    if cfg.references < 1:
        raise AdcopilotError(f"--references {cfg.references}: must be at least 1")
    if cfg.variants < 0:
        raise AdcopilotError(f"--variants {cfg.variants}: must be 0 or more")
    kb = Knowledge.load(cfg.knowledge)
    cfg.out = Path(cfg.out)
    config_path = _prepare_out(cfg)

    entries, problems = scan_sources(cfg.sources, cfg.out, variants=cfg.variants, seed=cfg.seed)
    source_problems = [{"source": s, "reason": r} for s, r in problems]
    if not entries:
        raise AdcopilotError("no usable source: " + "; ".join(r for _, r in problems))
    if config_path is not None:
        config_path.write_text(json.dumps(cfg.key_settings(), indent=1), encoding="utf-8")
    split = assign_splits(entries, cfg.seed, cfg.test_fraction)
    (cfg.out / "splits.json").write_text(json.dumps(
        {e.key: {"split": split[e.key], "instance": e.instance, "image": portable(e.image_path, cfg.out)}
         for e in entries},
        indent=0), encoding="utf-8")

    # Reference pools: normal images of each class in the train split (never MMAD's).
    pools: dict[str, list[Entry]] = defaultdict(list)
    defect_names: dict[str, set[str]] = defaultdict(set)
    for e in entries:
        if e.defect is None and split[e.key] == "train" and e.kind != "mmad":
            pools[e.category].append(e)
        if e.defect is not None:
            defect_names[e.category].add(e.defect)

    state = _State(cfg.out)
    balancer = LetterBalancer()
    for s in state.samples():  # resume: the letters already placed
        if s["task"] == "mcq" and not s["id"].startswith("mmad/"):
            balancer.record(s["answer"], len(s["options"]))
    todo = [e for e in entries if e.key not in state.done]
    todo_by_key = {e.key: e for e in todo}
    bar = tqdm(total=len(entries), initial=len(entries) - len(todo), unit="img", desc="curate",
               disable=not cfg.progress)
    skipped_path = cfg.out / "skipped.jsonl"
    analyses = _analyses(todo, cfg.seed, cfg.workers)
    try:
        with open(skipped_path, "a", encoding="utf-8") as skipped_fh:
            for a in analyses:
                e = todo_by_key[a.key]
                bar.update(1)
                if not a.ok:
                    log.warning("skipped %s", a.reason)
                    skipped_fh.write(json.dumps({"key": e.key, "reason": a.reason}) + "\n")
                    skipped_fh.flush()
                    state.record(e.key, [], status="skipped", reason=a.reason)
                    continue
                rng = np.random.default_rng([cfg.seed, _stable_int(e.key) % (2**32)])
                refs = _pick_references(e, pools, cfg.references, rng)
                if not refs:
                    reason = f"{e.image_path}: no normal reference image of class {e.category} in the train split"
                    log.warning("skipped %s", reason)
                    skipped_fh.write(json.dumps({"key": e.key, "reason": reason}) + "\n")
                    state.record(e.key, [], status="skipped", reason=reason)
                    continue
                item = LabelledItem(image_path=portable(e.image_path, cfg.out), category=e.category,
                                    defect=a.defect, mask=None, image_size=a.size, boxes=a.boxes, dataset=e.dataset)
                facts = ItemFacts(item, key=e.key, split=split[e.key], references=[portable(r, cfg.out) for r in refs],
                                  facts=a.facts, before=portable(e.base_path, cfg.out) if e.base_path else None)
                if e.kind == "mmad":
                    samples = mcq_samples(facts, kb, rng, conversation=_valid_mmad(e)) if "mcq" in cfg.tasks else []
                else:
                    names = sorted(defect_names[e.category])
                    samples = make_samples(facts, kb, rng, defect_names=names, balancer=balancer, tasks=cfg.tasks)
                state.record(e.key, samples, status="ok", hash=a.hash, split=split[e.key],
                             image=portable(e.image_path, cfg.out))
    finally:
        analyses.close()
        bar.close()
        state.close()
    return _finalise(cfg, kb, entries, split, state, source_problems, t0)


def _valid_mmad(e: Entry) -> list[dict]:
    out = []
    for q in e.conversation:
        opts = q.get("Options")
        if isinstance(opts, dict) and q.get("Answer") in opts and isinstance(q.get("Question"), str):
            out.append({"Question": q["Question"], "Options": {str(k): str(v) for k, v in opts.items()},
                        "Answer": q["Answer"], "type": str(q.get("type", "")), "annotation": bool(q.get("annotation"))})
        else:
            log.warning("%s: MMAD question without a valid answer letter skipped", e.image_path)
    return out


def _finalise(
    cfg: CurateConfig, kb: Knowledge, entries: list[Entry], split: dict[str, str], state: _State,
    source_problems: list[dict], t0: float,
) -> CurateReport:
    # Hashes first: a test image whose pixels are also a training image (the same file under two
    # names or in two sources) is dropped from the test split, so the set never leaks into itself.
    images_by_class: dict[str, Counter] = defaultdict(Counter)
    images_by_defect: dict[str, Counter] = defaultdict(Counter)
    hashes: dict[str, dict] = {}
    train_hashes = {rec["hash"] for rec in state.done.values() if rec.get("status") == "ok" and rec["split"] == "train"}
    duplicates = {k for k, rec in state.done.items()
                  if rec.get("status") == "ok" and rec["split"] == "test" and rec["hash"] in train_hashes}
    skipped = []
    used = 0
    for e in entries:
        rec = state.done.get(e.key)
        if rec is None:
            continue
        if rec.get("status") != "ok":
            skipped.append({"key": e.key, "reason": rec.get("reason", "")})
            continue
        if e.key in duplicates:
            skipped.append({"key": e.key, "reason": f"{e.image_path}: test image identical to a training image; "
                                                    "left out of the test split"})
            continue
        used += 1
        sp = split[e.key]
        images_by_class[e.category][sp] += 1
        d = kb.defect(e.defect) if e.defect else None
        images_by_defect["good" if e.defect is None else (d.name if d else e.defect)][sp] += 1
        hashes.setdefault(rec["hash"], {"split": sp, "path": rec["image"]})
        if sp == "train":
            hashes[rec["hash"]] = {"split": sp, "path": rec["image"]}

    by_task: dict[str, Counter] = defaultdict(Counter)
    by_type: dict[str, Counter] = defaultdict(Counter)
    letters: dict[int, Counter] = defaultdict(Counter)
    problems: list[str] = []
    examples: dict[str, dict] = {}
    known = {e.key for e in entries}
    n = 0
    # Streamed in processing order, which is the scan order (also after a resume).
    with open(cfg.out / "train.jsonl.tmp", "w", encoding="utf-8") as tr, \
            open(cfg.out / "test.jsonl.tmp", "w", encoding="utf-8") as te:
        for s in state.samples():
            key = s["id"].rsplit(":", 1)[0]
            if key not in known or key in duplicates:
                continue  # an image no longer in the sources, or a duplicate of a training image
            (tr if s["split"] == "train" else te).write(json.dumps(s, ensure_ascii=False) + "\n")
            problems += validate_sample(s)
            n += 1
            by_task[s["task"]][s["split"]] += 1
            if s["task"] == "mcq":
                by_type[s["type"]][s["split"]] += 1
                letters[len(s["options"])][s["answer"]] += 1
            example_key = s["task"] if s["task"] != "mcq" else f"mcq: {s['type']}"
            if example_key not in examples and (s["defect"] is not None or s["task"] == "mcq"):
                examples[example_key] = s
    (cfg.out / "train.jsonl.tmp").replace(cfg.out / "train.jsonl")
    (cfg.out / "test.jsonl.tmp").replace(cfg.out / "test.jsonl")
    leak.write_manifest(cfg.out, hashes)
    card = {
        "config": cfg.key_settings(),
        "n_images": used,
        "n_samples": n,
        "by_task": {k: dict(v) for k, v in by_task.items()},
        "by_type": {k: dict(v) for k, v in by_type.items()},
        "images_by_class": {k: dict(v) for k, v in images_by_class.items()},
        "images_by_defect": {k: dict(v) for k, v in images_by_defect.items()},
        "answer_letters": {str(k): dict(sorted(v.items())) for k, v in letters.items()},
        "skipped": skipped,
        "source_problems": source_problems,
        "problems": problems[:100],
        "n_problems": len(problems),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    (cfg.out / "card.json").write_text(json.dumps({k: v for k, v in card.items() if k != "seconds"}, indent=1),
                                       encoding="utf-8")
    (cfg.out / "card.md").write_text(_card_md(card, examples), encoding="utf-8")
    if problems:
        raise AdcopilotError(f"{cfg.out / 'card.md'}: {len(problems)} samples failed validation, e.g. {problems[0]}")
    return CurateReport(out=cfg.out, n_images=used, n_samples=n, skipped=skipped, source_problems=source_problems,
                        counts={"task": {k: sum(v.values()) for k, v in by_task.items()},
                                "type": {k: sum(v.values()) for k, v in by_type.items()}},
                        seconds=card["seconds"], problems=problems)
