"""``adcopilot eval mmad | mmad-bbox | detect | score``: MMAD-format evaluation of any backend.

Each option is declared once in :data:`OPTIONS`; a subcommand names the options it takes, and their
parsed values go by name into that subcommand's options dataclass in :mod:`adcopilot.eval.evaluate`
(the fields carry the same names), whose function does the work. The command prints the result.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

BENCH_HELP = "'bundled' (built on first use) or the path of an MMAD-format mmad.json."

#: Every option of the benchmark subcommands: name -> (type, typer option).
OPTIONS: dict[str, tuple[Any, Any]] = {
    "benchmark": (str, typer.Option("bundled", "--benchmark", "-b", help=BENCH_HELP)),
    "image_root": (Path, typer.Option(None, "--image-root", help="Folder the image paths are relative to (default: the JSON's folder).")),
    "backend": (str, typer.Option("baseline", "--backend", help="nano, baseline, transformers or openai.")),
    "model": (str, typer.Option(None, "--model", "-m", help="nano: checkpoint folder; transformers: local checkpoint folder; openai: model name.")),
    "k_shot": (int, typer.Option(1, "--k-shot", "-k", help="Normal templates per query.")),
    "templates": (str, typer.Option("random", "--templates", help="random (the benchmark's default) or similar.")),
    "datasets": (list[str], typer.Option(None, "--dataset", help="Only this dataset (repeatable).")),
    "classes": (list[str], typer.Option(None, "--class", help="Only this class (repeatable).")),
    "tasks": (list[str], typer.Option(None, "--task", help="Only this sub-task: AD, DC, DL, DD, DA, OC, OA (repeatable).")),
    "limit": (int, typer.Option(None, "--limit", help="Only N images, spread evenly over the selection.")),
    "scoring": (str, typer.Option("official", "--scoring", help="official (the benchmark's rules) or strict (corrected).")),
    "out": (Path, typer.Option(None, "--out", "-o", help="Run folder (answers, run.json, scores); re-running resumes.")),
    "device": (str, typer.Option("auto", "--device", help="transformers: cpu, cuda or auto.")),
    "dtype": (str, typer.Option("auto", "--dtype", help="transformers: auto, float32, bfloat16, float16.")),
    "concurrency": (int, typer.Option(4, "--concurrency", help="openai: requests in flight.")),
    "box_coords": (str, typer.Option(
        "qwen", "--box-coords",
        help="openai: the frame of the numbers in replies: qwen (Qwen2.5-VL's resized image), pixel (the image sent) "
        "or relative1000 (0-1000).",
    )),
    "box_mode": (str, typer.Option(
        "head", "--box-mode",
        help="nano with a language model: head (the dense head's boxes, labelled) or text (the boxes it writes).",
    )),
    "protocol": (str, typer.Option(
        "qwen", "--protocol",
        help="openai: how the questions are asked: qwen (the benchmark's Qwen2.5-VL script: one question per "
        "request, PNG images, greedy, 128 tokens) or gpt4o (its GPT-4o script: images first, the questions "
        "accumulated turn by turn, JPEG in a 512 px box with low detail, 200 tokens, refusals asked again) or files "
        "(the qwen request with each image file's own bytes, e.g. for adcopilot serve).",
    )),
    "max_image_size": (int, typer.Option(
        None, "--max-image-size",
        help="openai and transformers: shrink each image so its long side is at most this many pixels before "
        "sending it (0: never; default: qwen sends the file's size, gpt4o fits it into 512 px).",
    )),
    "vision_ids": (bool, typer.Option(
        True, "--vision-ids/--no-vision-ids",
        help="openai, qwen protocol: ask the server to label the images 'Picture N:' (chat_template_kwargs "
        "add_vision_id, as the benchmark's Qwen script; vLLM takes it, OpenAI's API does not).",
    )),
    "quiet": (bool, typer.Option(False, "--quiet", "-q", help="No progress bar.")),
    "train_set": (list[Path], typer.Option(None, "--train-set", help="A curated training set (adcopilot curate output); "
                                           "warn when a test image was in it (repeatable).")),
    "strict_leaks": (bool, typer.Option(False, "--strict", help="Refuse to evaluate when a test image was in a --train-set.")),
    "answers": (str, typer.Option(
        "grounded", "--answers",
        help="nano with a language model: grounded (defect yes/no and location questions from the detector, "
        "defect-type questions from the type head, the rest from the language model) or language "
        "(the language model answers all).",
    )),
    "prior_weight": (float, typer.Option(
        None, "--prior-weight",
        help="nano with a language model: how much of a content-free pair's option score is taken off "
        "(0-1; default 0 = uncalibrated; 0.5 was best on held-out training questions).",
    )),
    "knowledge": (list[Path], typer.Option(
        None, "--knowledge",
        help="nano: a knowledge file (YAML like the built-in one, or MMAD's domain_knowledge.json) that "
        "description and analysis options are matched against (repeatable).",
    )),
}

SELECTION = ("benchmark", "image_root", "backend", "model", "k_shot", "templates", "datasets", "classes")
CLIENT = ("device", "dtype", "concurrency")
LEAKS = ("quiet", "train_set", "strict_leaks")
WIRE = ("protocol", "max_image_size", "vision_ids")


def _takes(*names: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a subcommand the options ``names`` of :data:`OPTIONS`, in that order (its ``--help`` order):
    typer reads a command's options from its signature, and the command receives them as keywords."""

    def wrap(fn: Callable[..., None]) -> Callable[..., None]:
        params = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, annotation=OPTIONS[n][0], default=OPTIONS[n][1])
                  for n in names]
        fn.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        return fn

    return wrap


def _warn(message: str) -> None:
    typer.echo(message, err=True)


def register(app: typer.Typer) -> None:
    ev = typer.Typer(help="Evaluate a backend on MMAD-format benchmarks (MMAD, MMAD-BBox, detection).", no_args_is_help=True)

    @ev.command("mmad")
    @_takes(*SELECTION, "tasks", "limit", "scoring", "out", *CLIENT, *WIRE, *LEAKS, "answers", "prior_weight", "knowledge")
    def mmad(**params: Any) -> None:
        """Answer MMAD's multiple-choice questions and print the dataset x sub-task table."""
        from adcopilot.eval.evaluate import MmadOptions, eval_mmad

        options = MmadOptions.from_params(params)
        folder, table = eval_mmad(options, echo=_warn)
        typer.echo(table)
        typer.echo(f"results: {folder}/scores_{options.scoring}.csv, .json (answers: {folder}/answers.jsonl)")

    @ev.command("mmad-bbox")
    @_takes(*SELECTION, "limit", "out", *CLIENT, "box_coords", "box_mode", *WIRE, *LEAKS)
    def mmad_bbox(**params: Any) -> None:
        """Ask for defect boxes and report mIoU, accuracy at IoU 0.1/0.3/0.5 and false alarms."""
        from adcopilot.eval.bbox import format_bbox_summary
        from adcopilot.eval.evaluate import BboxOptions, eval_bbox

        folder, summary = eval_bbox(BboxOptions.from_params(params), echo=_warn)
        typer.echo(format_bbox_summary(summary))
        skipped = summary["skipped"]
        if any(skipped.values()):
            typer.echo(f"left out: {skipped['no_mask']} anomalous images without a mask, {skipped['bad_mask']} unreadable or empty masks")
        typer.echo(f"results: {folder}/bbox.json (answers: {folder}/boxes.jsonl)")

    @ev.command("detect")
    @_takes(*SELECTION, "limit", "out", *LEAKS)
    def detect(**params: Any) -> None:
        """Image AUROC, AP, F1-max, balanced accuracy; pixel AUROC and PRO where masks exist."""
        from adcopilot.eval.evaluate import RunOptions, eval_detect, format_detect

        folder, result = eval_detect(RunOptions.from_params(params), echo=_warn)
        typer.echo(format_detect(result))
        typer.echo(f"results: {folder}/detect.json")

    @ev.command("score")
    def score_file(
        answers: Path = typer.Argument(..., help="answers.jsonl of a run, or the benchmark's own answers JSON."),
        scoring: str = typer.Option("official", "--scoring", help="official or strict."),
        csv_out: Path = typer.Option(None, "--csv", help="Also write the table as CSV here."),
        json_out: Path = typer.Option(None, "--json", help="Also write the table as JSON here."),
    ) -> None:
        """Score an answers file again (e.g. with the other scoring mode)."""
        from adcopilot.eval.evaluate import rescore

        typer.echo(rescore(answers, scoring, csv_out, json_out).format())

    app.add_typer(ev, name="eval")
