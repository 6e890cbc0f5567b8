"""What each ``adcopilot eval`` subcommand does: check its options, read the benchmark and the
selection, warn about training-set leaks, build the backend, run, score and write the results.

The command only parses the options into one of the dataclasses below, calls the function and
prints what it returns.

Usage::

    folder, table = eval_mmad(MmadOptions(backend="baseline", limit=20), echo=print)
    print(table)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Self

from adcopilot.data.leak import check_leaks
from adcopilot.errors import AdcopilotError
from adcopilot.eval.backends import Backend, make_backend
from adcopilot.eval.bbox import summarize_bbox
from adcopilot.eval.bundled import ensure_bundled
from adcopilot.eval.mmad import MMADBenchmark, MMADItem, load_mmad
from adcopilot.eval.openai_protocols import protocol as check_protocol
from adcopilot.eval.runner import run_bbox, run_detect, run_mmad
from adcopilot.eval.scoring import SCORING_MODES, ScoreTable, load_answers, score

Echo = Callable[[str], None]


@dataclass
class RunOptions:
    """What every benchmark run takes: the benchmark, the selection, the backend and the run folder."""

    benchmark: str = "bundled"  # "bundled" (built on first use) or the path of an MMAD-format mmad.json
    image_root: Path | None = None
    backend: str = "baseline"
    model: str | None = None
    k_shot: int = 1
    templates: str = "random"
    datasets: list[str] | None = None
    classes: list[str] | None = None
    limit: int | None = None
    out: Path | None = None
    quiet: bool = False
    train_set: list[Path] | None = None  # curated training sets checked for leaked test images
    strict_leaks: bool = False

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Self:
        """The options named in ``params`` (a command's parsed parameters); the others keep their defaults."""
        return cls(**{f.name: params[f.name] for f in fields(cls) if f.name in params})


@dataclass
class ClientOptions(RunOptions):
    """A run whose backend may be a served model (openai) or a local transformers checkpoint."""

    device: str = "auto"
    dtype: str = "auto"
    concurrency: int = 4
    protocol: str = "qwen"
    max_image_size: int | None = None
    vision_ids: bool = True

    def client(self) -> dict[str, Any]:
        """The backend options, checked (an unknown protocol fails whatever the backend)."""
        check_protocol(self.protocol)
        if self.max_image_size is not None and self.max_image_size < 0:
            raise AdcopilotError(f"--max-image-size must be 0 (no limit) or more, got {self.max_image_size}")
        return {k: getattr(self, k) for k in ("device", "dtype", "concurrency", "protocol", "max_image_size", "vision_ids")}


@dataclass
class MmadOptions(ClientOptions):
    """``adcopilot eval mmad``: MMAD's multiple-choice questions."""

    tasks: list[str] | None = None
    scoring: str = "official"
    answers: str = "grounded"  # nano with a language model: grounded or language
    prior_weight: float | None = None
    knowledge: list[Path] | None = None  # nano: knowledge files for description and analysis options


@dataclass
class BboxOptions(ClientOptions):
    """``adcopilot eval mmad-bbox``: defect boxes."""

    box_coords: str = "qwen"
    box_mode: str = "head"


@dataclass
class Prepared:
    """A checked run: the benchmark, the selected items and the selection as recorded."""

    bench: MMADBenchmark
    items: list[MMADItem]
    selection: dict[str, Any]


def _check(o: RunOptions) -> None:
    if o.templates not in ("random", "similar"):
        raise AdcopilotError(f"unknown --templates '{o.templates}' (template mode); use random or similar")
    if o.k_shot < 0:
        raise AdcopilotError(f"--k-shot must be 0 or more, got {o.k_shot}")


def _bench(benchmark: str, image_root: Path | None) -> MMADBenchmark:
    if benchmark == "bundled":
        path = ensure_bundled()
        return load_mmad(path, image_root or path.parent)
    return load_mmad(benchmark, image_root)


def _leak_check(bench: MMADBenchmark, items: list[MMADItem], o: RunOptions, echo: Echo) -> None:
    """Warn loudly (refuse with ``strict_leaks``) when a query image was in a curated training set."""
    if not o.train_set:
        return
    queries = []
    for item in items:
        try:
            queries.append(bench.query(item))
        except AdcopilotError:
            continue  # a missing query is reported as that question's failure
    leaks = check_leaks(queries, o.train_set, strict=o.strict_leaks)
    if leaks:
        echo(f"WARNING: {len(leaks)} test image(s) were in a training set; see the log above")


def _prepare(o: RunOptions, tasks: list[str] | None, echo: Echo) -> Prepared:
    """Read the benchmark, select its items and check them for leaks."""
    bench = _bench(o.benchmark, o.image_root)
    items = bench.select(o.datasets, o.classes, tasks, o.limit)
    _leak_check(bench, items, o, echo)
    selection = {"datasets": o.datasets or [], "classes": o.classes or [], "tasks": tasks or [], "limit": o.limit}
    return Prepared(bench, items, selection)


def _folder(o: RunOptions, task: str, label: str) -> Path:
    """The run folder: ``o.out``, or one named after the task, backend, benchmark and templates."""
    if o.out is not None:
        return o.out
    bench = "bundled" if o.benchmark == "bundled" else Path(o.benchmark).parent.name or "mmad"
    return Path("eval-runs") / f"{task}-{label}-{bench}-{o.k_shot}shot-{o.templates}"


def _label(o: ClientOptions) -> str:
    """The backend's name in a default run folder (the openai protocol too, so runs do not mix)."""
    return f"{o.backend}-{o.protocol}" if o.backend == "openai" and o.protocol != "qwen" else o.backend


def _run(o: RunOptions, p: Prepared, runner: Callable[..., Any], backend: Backend, folder: Path) -> Any:
    return runner(p.bench, p.items, backend, folder, k_shot=o.k_shot, templates=o.templates,
                  progress=not o.quiet, selection=p.selection)


def eval_mmad(o: MmadOptions, echo: Echo) -> tuple[Path, str]:
    """Answer the selected MMAD questions; writes answers and both score tables to the run folder and
    returns the folder and the table of ``o.scoring``."""
    if o.scoring not in SCORING_MODES:
        raise AdcopilotError(f"unknown --scoring '{o.scoring}'; use official or strict")
    if o.answers not in ("grounded", "language"):
        raise AdcopilotError(f"unknown --answers '{o.answers}'; use grounded or language")
    if o.prior_weight is not None and not 0.0 <= o.prior_weight <= 1.0:
        raise AdcopilotError(f"--prior-weight must be between 0 and 1, got {o.prior_weight}")
    _check(o)
    client = o.client()
    prepared = _prepare(o, o.tasks, echo)
    backend = make_backend(o.backend, o.model, answers=o.answers, prior_weight=o.prior_weight,
                           knowledge=o.knowledge or (), **client)
    folder = _folder(o, "mmad", _label(o))
    records = _run(o, prepared, run_mmad, backend, folder)
    text = ""
    for mode in ("official", "strict"):
        table = score(records, mode)
        table.to_csv(folder / f"scores_{mode}.csv")
        table.to_json(folder / f"scores_{mode}.json")
        if mode == o.scoring:
            text = table.format()
    return folder, text


def eval_bbox(o: BboxOptions, echo: Echo) -> tuple[Path, dict[str, Any]]:
    """Ask for defect boxes; writes ``bbox.json`` (mIoU, accuracy at IoU thresholds, false alarms, the
    images left out) to the run folder and returns the folder and that summary."""
    _check(o)
    client = o.client()
    prepared = _prepare(o, None, echo)
    if o.box_mode not in ("head", "text"):
        raise AdcopilotError(f"unknown --box-mode '{o.box_mode}'; use head or text")
    backend = make_backend(o.backend, o.model, box_coords=o.box_coords, box_mode=o.box_mode, **client)
    folder = _folder(o, "bbox", _label(o))
    records, skipped = _run(o, prepared, run_bbox, backend, folder)
    summary = summarize_bbox(records)
    summary["skipped"] = skipped
    (folder / "bbox.json").write_text(json.dumps(summary, indent=2))
    return folder, summary


def eval_detect(o: RunOptions, echo: Echo) -> tuple[Path, dict[str, Any]]:
    """Score every selected image; returns the run folder and the detection metrics (also in ``detect.json``)."""
    _check(o)
    prepared = _prepare(o, None, echo)
    backend = make_backend(o.backend, o.model)
    folder = _folder(o, "detect", o.backend)
    return folder, _run(o, prepared, run_detect, backend, folder)


def rescore(answers: Path, scoring: str, csv_out: Path | None = None, json_out: Path | None = None) -> ScoreTable:
    """Score an answers file again (a run's answers.jsonl or the benchmark's own answers JSON)."""
    records = load_answers(answers)
    if not records:
        raise AdcopilotError(f"{answers}: no answers in the file")
    table = score(records, scoring)
    if csv_out:
        table.to_csv(csv_out)
    if json_out:
        table.to_json(json_out)
    return table


def format_detect(result: dict[str, Any]) -> str:
    """The detection metrics as a table in percent, one row per dataset."""
    cols = ["auroc", "ap", "f1_max", "balanced_accuracy", "pixel_auroc", "pro", "normal", "anomalous"]
    heads = ["dataset", *cols]
    body = []
    for name, m in result["metrics"].items():
        row = [name]
        for c in cols:
            v = m.get(c)
            row.append("-" if v is None else (f"{100 * v:.2f}" if isinstance(v, float) else str(v)))
        body.append(row)
    widths = [max(len(r[i]) for r in [heads, *body]) for i in range(len(heads))]
    lines = ["  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths, strict=True)))
             for r in [heads, *body]]
    lines.append(f"threshold {result['threshold']:.4f} (balanced accuracy at it); metrics in percent; failed images: {result['failed']}")
    return "\n".join(lines)
