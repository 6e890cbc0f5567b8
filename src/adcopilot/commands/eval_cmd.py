"""``adcopilot eval mmad | mmad-bbox | detect | score``: MMAD-format evaluation of any backend."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

BENCH_HELP = "'bundled' (built on first use) or the path of an MMAD-format mmad.json."


def _bench(benchmark: str, image_root: Path | None) -> Any:
    from adcopilot.eval.mmad import load_mmad

    if benchmark == "bundled":
        from adcopilot.eval.bundled import ensure_bundled

        path = ensure_bundled()
        return load_mmad(path, image_root or path.parent)
    return load_mmad(benchmark, image_root)


def _leak_check(bench: Any, items: list, train_sets: list[Path] | None, strict: bool) -> None:
    """Warn loudly (refuse with --strict) when a query image was in a curated training set."""
    if not train_sets:
        return
    from adcopilot.data.leak import check_leaks
    from adcopilot.errors import AdcopilotError

    queries = []
    for item in items:
        try:
            queries.append(bench.query(item))
        except AdcopilotError:
            continue  # a missing query is reported as that question's failure
    leaks = check_leaks(queries, train_sets, strict=strict)
    if leaks:
        typer.echo(f"WARNING: {len(leaks)} test image(s) were in a training set; see the log above", err=True)


def _check(templates: str, k_shot: int) -> None:
    from adcopilot.errors import AdcopilotError

    if templates not in ("random", "similar"):
        raise AdcopilotError(f"unknown --templates '{templates}' (template mode); use random or similar")
    if k_shot < 0:
        raise AdcopilotError(f"--k-shot must be 0 or more, got {k_shot}")


def _selection(datasets: list[str] | None, classes: list[str] | None, tasks: list[str] | None, limit: int | None) -> dict:
    return {"datasets": datasets or [], "classes": classes or [], "tasks": tasks or [], "limit": limit}


def _backend(backend: str, model: str | None, **options: Any) -> Any:
    from adcopilot.eval.backends import make_backend

    return make_backend(backend, model, **options)


def _label(backend: str, protocol: str) -> str:
    """The backend's name in a default run folder (the openai protocol too, so runs do not mix)."""
    return f"{backend}-{protocol}" if backend == "openai" and protocol != "qwen" else backend


def _out(out: Path | None, task: str, backend: str, benchmark: str, k_shot: int, templates: str) -> Path:
    if out is not None:
        return out
    bench = "bundled" if benchmark == "bundled" else Path(benchmark).parent.name or "mmad"
    return Path("eval-runs") / f"{task}-{backend}-{bench}-{k_shot}shot-{templates}"


def _write_scores(records: list, out: Path, mode: str) -> str:
    from adcopilot.eval.scoring import score

    text = ""
    for m in ("official", "strict"):
        table = score(records, m)
        table.to_csv(out / f"scores_{m}.csv")
        table.to_json(out / f"scores_{m}.json")
        if m == mode:
            text = table.format()
    return text


def register(app: typer.Typer) -> None:
    ev = typer.Typer(help="Evaluate a backend on MMAD-format benchmarks (MMAD, MMAD-BBox, detection).", no_args_is_help=True)

    common: dict[str, Any] = {
        "benchmark": typer.Option("bundled", "--benchmark", "-b", help=BENCH_HELP),
        "image_root": typer.Option(None, "--image-root", help="Folder the image paths are relative to (default: the JSON's folder)."),
        "backend": typer.Option("baseline", "--backend", help="nano, baseline, transformers or openai."),
        "model": typer.Option(None, "--model", "-m", help="nano: checkpoint folder; transformers: local checkpoint folder; openai: model name."),
        "k_shot": typer.Option(1, "--k-shot", "-k", help="Normal templates per query."),
        "templates": typer.Option("random", "--templates", help="random (the benchmark's default) or similar."),
        "datasets": typer.Option(None, "--dataset", help="Only this dataset (repeatable)."),
        "classes": typer.Option(None, "--class", help="Only this class (repeatable)."),
        "limit": typer.Option(None, "--limit", help="Only N images, spread evenly over the selection."),
        "out": typer.Option(None, "--out", "-o", help="Run folder (answers, run.json, scores); re-running resumes."),
        "device": typer.Option("auto", "--device", help="transformers: cpu, cuda or auto."),
        "dtype": typer.Option("auto", "--dtype", help="transformers: auto, float32, bfloat16, float16."),
        "concurrency": typer.Option(4, "--concurrency", help="openai: requests in flight."),
        "protocol": typer.Option(
            "qwen", "--protocol",
            help="openai: how the questions are asked: qwen (the benchmark's Qwen2.5-VL script: one question per "
            "request, PNG images, greedy, 128 tokens) or gpt4o (its GPT-4o script: images first, the questions "
            "accumulated turn by turn, JPEG in a 512 px box with low detail, 200 tokens, refusals asked again) or files "
            "(the qwen request with each image file's own bytes, e.g. for adcopilot serve).",
        ),
        "max_image_size": typer.Option(
            None, "--max-image-size",
            help="openai and transformers: shrink each image so its long side is at most this many pixels before "
            "sending it (0: never; default: qwen sends the file's size, gpt4o fits it into 512 px).",
        ),
        "vision_ids": typer.Option(
            True, "--vision-ids/--no-vision-ids",
            help="openai, qwen protocol: ask the server to label the images 'Picture N:' (chat_template_kwargs "
            "add_vision_id, as the benchmark's Qwen script; vLLM takes it, OpenAI's API does not).",
        ),
        "quiet": typer.Option(False, "--quiet", "-q", help="No progress bar."),
        "train_set": typer.Option(None, "--train-set", help="A curated training set (adcopilot curate output); "
                                  "warn when a test image was in it (repeatable)."),
        "strict_leaks": typer.Option(False, "--strict", help="Refuse to evaluate when a test image was in a --train-set."),
    }

    def opts(**kw: Any) -> dict[str, Any]:
        from adcopilot.eval.openai_protocols import protocol

        protocol(kw["protocol"])  # an unknown name fails here, whatever the backend
        if kw["max_image_size"] is not None and kw["max_image_size"] < 0:
            from adcopilot.errors import AdcopilotError

            raise AdcopilotError(f"--max-image-size must be 0 (no limit) or more, got {kw['max_image_size']}")
        return {k: kw[k] for k in ("device", "dtype", "concurrency", "protocol", "max_image_size", "vision_ids")}

    @ev.command("mmad")
    def mmad(
        benchmark: str = common["benchmark"],
        image_root: Path = common["image_root"],
        backend: str = common["backend"],
        model: str = common["model"],
        k_shot: int = common["k_shot"],
        templates: str = common["templates"],
        datasets: list[str] = common["datasets"],
        classes: list[str] = common["classes"],
        tasks: list[str] = typer.Option(None, "--task", help="Only this sub-task: AD, DC, DL, DD, DA, OC, OA (repeatable)."),
        limit: int = common["limit"],
        scoring: str = typer.Option("official", "--scoring", help="official (the benchmark's rules) or strict (corrected)."),
        out: Path = common["out"],
        device: str = common["device"],
        dtype: str = common["dtype"],
        concurrency: int = common["concurrency"],
        protocol: str = common["protocol"],
        max_image_size: int = common["max_image_size"],
        vision_ids: bool = common["vision_ids"],
        quiet: bool = common["quiet"],
        train_set: list[Path] = common["train_set"],
        strict_leaks: bool = common["strict_leaks"],
        answers: str = typer.Option(
            "grounded", "--answers",
            help="nano with a language model: grounded (defect yes/no and location questions from the detector, "
            "defect-type questions from the type head, the rest from the language model) or language "
            "(the language model answers all).",
        ),
        prior_weight: float = typer.Option(
            None, "--prior-weight",
            help="nano with a language model: how much of a content-free pair's option score is taken off "
            "(0-1; default 0 = uncalibrated; 0.5 was best on held-out training questions).",
        ),
        knowledge: list[Path] = typer.Option(
            None, "--knowledge",
            help="nano: a knowledge file (YAML like the built-in one, or MMAD's domain_knowledge.json) that "
            "description and analysis options are matched against (repeatable).",
        ),
    ) -> None:
        """Answer MMAD's multiple-choice questions and print the dataset x sub-task table."""
        from adcopilot.errors import AdcopilotError
        from adcopilot.eval.runner import run_mmad
        from adcopilot.eval.scoring import SCORING_MODES

        if scoring not in SCORING_MODES:
            raise AdcopilotError(f"unknown --scoring '{scoring}'; use official or strict")
        if answers not in ("grounded", "language"):
            raise AdcopilotError(f"unknown --answers '{answers}'; use grounded or language")
        if prior_weight is not None and not 0.0 <= prior_weight <= 1.0:
            raise AdcopilotError(f"--prior-weight must be between 0 and 1, got {prior_weight}")
        _check(templates, k_shot)
        options = opts(device=device, dtype=dtype, concurrency=concurrency, protocol=protocol,
                       max_image_size=max_image_size, vision_ids=vision_ids)
        bench = _bench(benchmark, image_root)
        items = bench.select(datasets, classes, tasks, limit)
        _leak_check(bench, items, train_set, strict_leaks)
        be = _backend(backend, model, answers=answers, prior_weight=prior_weight, knowledge=knowledge, **options)
        folder = _out(out, "mmad", _label(backend, protocol), benchmark, k_shot, templates)
        records = run_mmad(bench, items, be, folder, k_shot=k_shot, templates=templates, progress=not quiet,
                           selection=_selection(datasets, classes, tasks, limit))
        typer.echo(_write_scores(records, folder, scoring))
        typer.echo(f"results: {folder}/scores_{scoring}.csv, .json (answers: {folder}/answers.jsonl)")

    @ev.command("mmad-bbox")
    def mmad_bbox(
        benchmark: str = common["benchmark"],
        image_root: Path = common["image_root"],
        backend: str = common["backend"],
        model: str = common["model"],
        k_shot: int = common["k_shot"],
        templates: str = common["templates"],
        datasets: list[str] = common["datasets"],
        classes: list[str] = common["classes"],
        limit: int = common["limit"],
        out: Path = common["out"],
        device: str = common["device"],
        dtype: str = common["dtype"],
        concurrency: int = common["concurrency"],
        box_coords: str = typer.Option(
            "qwen", "--box-coords",
            help="openai: the frame of the numbers in replies: qwen (Qwen2.5-VL's resized image), pixel (the image sent) "
            "or relative1000 (0-1000).",
        ),
        box_mode: str = typer.Option(
            "head", "--box-mode",
            help="nano with a language model: head (the dense head's boxes, labelled) or text (the boxes it writes).",
        ),
        protocol: str = common["protocol"],
        max_image_size: int = common["max_image_size"],
        vision_ids: bool = common["vision_ids"],
        quiet: bool = common["quiet"],
        train_set: list[Path] = common["train_set"],
        strict_leaks: bool = common["strict_leaks"],
    ) -> None:
        """Ask for defect boxes and report mIoU, accuracy at IoU 0.1/0.3/0.5 and false alarms."""
        from adcopilot.eval.bbox import format_bbox_summary, summarize_bbox
        from adcopilot.eval.runner import run_bbox

        _check(templates, k_shot)
        options = opts(device=device, dtype=dtype, concurrency=concurrency, protocol=protocol,
                       max_image_size=max_image_size, vision_ids=vision_ids)
        bench = _bench(benchmark, image_root)
        items = bench.select(datasets, classes, None, limit)
        _leak_check(bench, items, train_set, strict_leaks)
        if box_mode not in ("head", "text"):
            from adcopilot.errors import AdcopilotError

            raise AdcopilotError(f"unknown --box-mode '{box_mode}'; use head or text")
        be = _backend(backend, model, box_coords=box_coords, box_mode=box_mode, **options)
        folder = _out(out, "bbox", _label(backend, protocol), benchmark, k_shot, templates)
        records, skipped = run_bbox(bench, items, be, folder, k_shot=k_shot, templates=templates, progress=not quiet,
                                    selection=_selection(datasets, classes, None, limit))
        summary = summarize_bbox(records)
        summary["skipped"] = skipped
        (folder / "bbox.json").write_text(json.dumps(summary, indent=2))
        typer.echo(format_bbox_summary(summary))
        if any(skipped.values()):
            typer.echo(f"left out: {skipped['no_mask']} anomalous images without a mask, {skipped['bad_mask']} unreadable or empty masks")
        typer.echo(f"results: {folder}/bbox.json (answers: {folder}/boxes.jsonl)")

    @ev.command("detect")
    def detect(
        benchmark: str = common["benchmark"],
        image_root: Path = common["image_root"],
        backend: str = common["backend"],
        model: str = common["model"],
        k_shot: int = common["k_shot"],
        templates: str = common["templates"],
        datasets: list[str] = common["datasets"],
        classes: list[str] = common["classes"],
        limit: int = common["limit"],
        out: Path = common["out"],
        quiet: bool = common["quiet"],
        train_set: list[Path] = common["train_set"],
        strict_leaks: bool = common["strict_leaks"],
    ) -> None:
        """Image AUROC, AP, F1-max, balanced accuracy; pixel AUROC and PRO where masks exist."""
        from adcopilot.eval.runner import run_detect

        _check(templates, k_shot)
        bench = _bench(benchmark, image_root)
        items = bench.select(datasets, classes, None, limit)
        _leak_check(bench, items, train_set, strict_leaks)
        be = _backend(backend, model)
        folder = _out(out, "detect", backend, benchmark, k_shot, templates)
        result = run_detect(bench, items, be, folder, k_shot=k_shot, templates=templates, progress=not quiet,
                            selection=_selection(datasets, classes, None, limit))
        typer.echo(_format_detect(result))
        typer.echo(f"results: {folder}/detect.json")

    @ev.command("score")
    def score_file(
        answers: Path = typer.Argument(..., help="answers.jsonl of a run, or the benchmark's own answers JSON."),
        scoring: str = typer.Option("official", "--scoring", help="official or strict."),
        csv_out: Path = typer.Option(None, "--csv", help="Also write the table as CSV here."),
        json_out: Path = typer.Option(None, "--json", help="Also write the table as JSON here."),
    ) -> None:
        """Score an answers file again (e.g. with the other scoring mode)."""
        from adcopilot.eval.scoring import load_answers, score

        table = score(load_answers(answers), scoring)
        typer.echo(table.format())
        if csv_out:
            table.to_csv(csv_out)
        if json_out:
            table.to_json(json_out)

    app.add_typer(ev, name="eval")


def _format_detect(result: dict[str, Any]) -> str:
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
