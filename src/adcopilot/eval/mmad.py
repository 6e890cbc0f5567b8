"""MMAD question files: reading ``mmad.json``, selecting subsets, k-shot templates, the official prompt.

MMAD (ICLR 2025) stores its 39,672 multiple-choice questions in one JSON object keyed by the
query image's path relative to the data root. Each value holds ``image_path``, ``mask_path``
(anomalous images), ``similar_templates`` / ``random_templates`` (normal reference images) and a
``conversation`` list of ``{"Question", "Answer", "Options", "type", "annotation"}``.

The prompt is the one of the benchmark's own Qwen2.5-VL script, asked one question at a time:
the instruction, "Answer with the option's letter ...", the template sentence, the normal
template image(s), "Following is the query image: ", the query, "Following is the question
list: ", then ``"Question: <text> \\n"`` and one ``"<letter>. <option>\\n"`` line per option.

Usage::

    bench = load_mmad("MMAD/mmad.json", image_root="MMAD")
    items = bench.select(datasets=["VisA"], tasks=["Anomaly Detection"], limit=50)
    for item in items:
        refs = bench.references(item, k=1, mode="random")
        for q in item.questions:
            parts = official_prompt(refs, bench.query(item), q)

Paths follow the real file (:mod:`adcopilot.data.mmad_paths`): the query is read from the key,
the mask joined as the benchmark's ``generate_metadata.py`` joins it, templates from the root.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from adcopilot.data.mmad_paths import resolve_mask, resolve_query
from adcopilot.data.questions import MMAD_SUBTASK, MMAD_TYPES
from adcopilot.errors import AdcopilotError

log = logging.getLogger(__name__)

#: The seven reported sub-tasks, in the benchmark's column order.
SUBTASKS: list[str] = list(dict.fromkeys(MMAD_SUBTASK[t] for t in MMAD_TYPES))
#: Question types the official scorer merges into a reported sub-task.
MERGED_TYPES: dict[str, str] = {t: s for t, s in MMAD_SUBTASK.items() if t != s}
#: Short names accepted on the command line (``--task AD``).
TASK_ABBREVIATIONS: dict[str, str] = {"".join(w[0] for w in t.split()): t for t in SUBTASKS}
#: The substring that marks a normal query image in MMAD paths.
NORMAL_FLAG = "good"

TemplateMode = Literal["random", "similar"]

#: The benchmark's instruction, verbatim (leading and trailing newlines included).
INSTRUCTION = (
    "\nYou are an industrial inspector who checks products by images. You should judge whether there is "
    "a defect in the query image and answer the questions about it.\n"
    "Answer with the option's letter from the given choices directly.\n"
)
ANSWER_DIRECTLY = "Answer with the option's letter from the given choices directly! "
QUERY_INTRO = "Following is the query image: "
QUESTIONS_INTRO = "Following is the question list: "


def template_sentence(k: int) -> str:
    """The sentence before the k normal template images (the benchmark's wording, "1 image" too)."""
    return (
        f"Following is/are {k} image of normal sample, which can be used as a template to compare "
        "the image being queried."
    )


def subtask_of(question_type: str) -> str:
    """Reported sub-task of a question ``type`` (Object Structure/Details -> Object Analysis)."""
    return MERGED_TYPES.get(question_type, question_type)


def resolve_task(name: str) -> str:
    """``"AD"``, ``"anomaly detection"``, ``"Anomaly Discrimination"`` ... -> the sub-task name."""
    key = name.strip()
    if key.upper() in TASK_ABBREVIATIONS:
        return TASK_ABBREVIATIONS[key.upper()]
    if key.lower() == "anomaly discrimination":
        return "Anomaly Detection"
    for t in [*SUBTASKS, *MERGED_TYPES]:
        if t.lower() == key.lower():
            return subtask_of(t)
    known = ", ".join(f"{a} ({t})" for a, t in TASK_ABBREVIATIONS.items())
    raise AdcopilotError(f"unknown sub-task '{name}'; known: {known}")


@dataclass(frozen=True)
class Question:
    """One multiple-choice question about a query image."""

    index: int  # position in the image's conversation
    text: str
    options: dict[str, str]  # letter -> option text, in the file's order
    answer: str  # gold letter
    type: str  # the file's type (Object Structure / Object Details kept as written)
    annotation: bool = False

    @property
    def subtask(self) -> str:
        return subtask_of(self.type)

    def formatted(self) -> str:
        """The question as the benchmark writes it into the prompt."""
        opts = "".join(f"{k}. {v}\n" for k, v in self.options.items())
        return f"Question: {self.text} \n{opts}"


@dataclass
class MMADItem:
    """One query image of an MMAD file and its questions."""

    key: str  # the JSON key: the query's path relative to the data root
    image_path: str | None  # as written: relative to the class folder in the real file
    mask_path: str | None  # as written (see adcopilot.data.mmad_paths for how it is joined)
    random_templates: list[str]
    similar_templates: list[str]
    questions: list[Question] = field(default_factory=list)
    order: int = 0  # position in the file (scoring follows the file's order)
    #: Every question of the image, also those a sub-task selection left out of ``questions``
    #: (a protocol that asks them turn by turn needs the earlier ones).
    conversation: tuple[Question, ...] = ()

    def earlier(self, question: Question) -> list[Question]:
        """The questions of the image's conversation before ``question``, in the file's order."""
        return [q for q in (self.conversation or tuple(self.questions)) if q.index < question.index]

    @property
    def dataset(self) -> str:
        return self.key.split("/")[0]

    @property
    def class_name(self) -> str:
        parts = self.key.split("/")
        return parts[1] if len(parts) > 1 else ""

    @property
    def is_normal(self) -> bool:
        return NORMAL_FLAG in self.key


PromptPart = tuple[Literal["text", "image"], str]


def official_prompt(references: Sequence[str | os.PathLike], query: str | os.PathLike, question: Question) -> list[PromptPart]:
    """The benchmark's message content for one question: ``[("text", ...), ("image", path), ...]``."""
    parts: list[PromptPart] = [("text", INSTRUCTION), ("text", ANSWER_DIRECTLY)]
    if references:
        parts.append(("text", template_sentence(len(references))))
        parts += [("image", os.fspath(r)) for r in references]
    parts += [
        ("text", QUERY_INTRO),
        ("image", os.fspath(query)),
        ("text", QUESTIONS_INTRO),
        ("text", question.formatted()),
    ]
    return parts


def prompt_text(parts: Sequence[PromptPart], image_token: str = "<image>") -> str:
    """The prompt flattened to text, each image replaced by ``image_token``."""
    return "".join(image_token if kind == "image" else value for kind, value in parts)


@dataclass
class MMADBenchmark:
    """An MMAD-format question file and the folder its image paths are relative to."""

    path: Path
    root: Path
    items: list[MMADItem]

    def resolve(self, rel: str) -> Path:
        """A path relative to the data root (templates)."""
        return self.root / rel

    def query(self, item: MMADItem) -> Path:
        """The query image of ``item`` (from its key, as the benchmark's query scripts read it)."""
        return resolve_query(self.root, item.key, item.image_path)

    def mask(self, item: MMADItem) -> Path:
        """The defect mask of ``item``; raises when it has none or none of its candidates exists."""
        if not item.mask_path:
            raise AdcopilotError(f"'{item.key}' has no mask_path")
        return resolve_mask(self.root, item.key, item.mask_path)

    @property
    def datasets(self) -> list[str]:
        return list(dict.fromkeys(i.dataset for i in self.items))

    @property
    def n_questions(self) -> int:
        return sum(len(i.questions) for i in self.items)

    def references(self, item: MMADItem, k: int = 1, mode: TemplateMode = "random") -> list[Path]:
        """The first ``k`` templates of ``mode`` ("random": the benchmark's default, "similar")."""
        if mode not in ("random", "similar"):
            raise AdcopilotError(f"unknown template mode '{mode}'; use 'random' or 'similar'")
        pool = item.random_templates if mode == "random" else item.similar_templates
        if k > 0 and not pool:
            raise AdcopilotError(f"{self.path}: '{item.key}' has no {mode}_templates for a {k}-shot run")
        if len(pool) < k:
            log.warning("%s has only %d %s templates (asked for %d)", item.key, len(pool), mode, k)
        return [self.resolve(p) for p in pool[:k]]

    def select(
        self,
        datasets: Iterable[str] | None = None,
        classes: Iterable[str] | None = None,
        tasks: Iterable[str] | None = None,
        limit: int | None = None,
    ) -> list[MMADItem]:
        """Items of the given datasets and classes with only questions of the given sub-tasks.

        ``limit`` keeps that many images spread evenly over the selection (every dataset and
        class is represented in a quick run), always the same ones.
        """
        ds = _checked(datasets, {i.dataset for i in self.items}, "dataset", self.path)
        cl = _checked(classes, {i.class_name for i in self.items}, "class", self.path)
        tk = {resolve_task(t) for t in tasks} if tasks else None
        out: list[MMADItem] = []
        for item in self.items:
            if (ds and item.dataset not in ds) or (cl and item.class_name not in cl):
                continue
            qs = [q for q in item.questions if tk is None or q.subtask in tk]
            if not qs:
                continue
            out.append(item if len(qs) == len(item.questions) else replace(item, questions=qs))
        if limit is not None:
            if limit < 1:
                raise AdcopilotError(f"--limit must be at least 1, got {limit}")
            if limit < len(out):
                # Evenly spaced picks; indices are strictly increasing, so the file's order is kept.
                out = [out[(i * len(out)) // limit] for i in range(limit)]
        return out


def _checked(values: Iterable[str] | None, known: set[str], what: str, path: Path) -> set[str] | None:
    if not values:
        return None
    wanted = set(values)
    unknown = wanted - known
    if unknown:
        raise AdcopilotError(
            f"{path}: unknown {what} {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}"
        )
    return wanted


def _str_list(value: object, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise AdcopilotError(f"{where} must be a list of paths")
    return list(value)


def _parse_question(raw: object, index: int, where: str) -> Question:
    if not isinstance(raw, dict):
        raise AdcopilotError(f"{where}: conversation[{index}] is not an object")
    missing = [k for k in ("Question", "Answer", "Options", "type") if k not in raw]
    if missing:
        raise AdcopilotError(f"{where}: conversation[{index}] lacks {', '.join(missing)}")
    options = raw["Options"]
    if not isinstance(options, dict) or not options:
        raise AdcopilotError(f"{where}: conversation[{index}].Options must be a non-empty object")
    return Question(
        index=index,
        text=str(raw["Question"]),
        options={str(k): str(v) for k, v in options.items()},
        answer=str(raw["Answer"]),
        type=str(raw["type"]),
        annotation=bool(raw.get("annotation", False)),
    )


def parse_mmad(data: object, path: Path) -> list[MMADItem]:
    """Validate a loaded ``mmad.json`` object and turn it into items (file order kept)."""
    if not isinstance(data, dict):
        raise AdcopilotError(f"{path}: expected a JSON object keyed by image path, got {type(data).__name__}")
    items: list[MMADItem] = []
    for order, (key, value) in enumerate(data.items()):
        where = f"{path}: '{key}'"
        if not isinstance(value, dict):
            raise AdcopilotError(f"{where} is not an object")
        conv = value.get("conversation")
        if not isinstance(conv, list):
            raise AdcopilotError(f"{where} has no conversation list")
        mask, image = value.get("mask_path"), value.get("image_path")
        questions = [_parse_question(q, i, where) for i, q in enumerate(conv)]
        items.append(
            MMADItem(
                key=key,
                image_path=str(image) if image else None,
                mask_path=str(mask) if mask else None,
                random_templates=_str_list(value.get("random_templates"), f"{where}.random_templates"),
                similar_templates=_str_list(value.get("similar_templates"), f"{where}.similar_templates"),
                questions=questions,
                order=order,
                conversation=tuple(questions),
            )
        )
    return items


def load_mmad(path: str | os.PathLike, image_root: str | os.PathLike | None = None) -> MMADBenchmark:
    """Read an MMAD-format ``mmad.json``; image paths are relative to ``image_root`` (default: its folder).

    Raises:
        AdcopilotError: missing or unreadable file, malformed JSON, or a record of the wrong shape.
    """
    p = Path(path)
    if not p.is_file():
        raise AdcopilotError(f"{p}: no such MMAD question file")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise AdcopilotError(f"{p}: malformed JSON ({exc.msg} at line {exc.lineno})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AdcopilotError(f"{p}: unreadable ({exc})") from None
    root = Path(image_root) if image_root is not None else p.parent
    if not root.is_dir():
        raise AdcopilotError(f"{root}: image root is not a folder")
    items = parse_mmad(data, p)
    if not items:
        raise AdcopilotError(f"{p}: no questions")
    return MMADBenchmark(path=p, root=root, items=items)
