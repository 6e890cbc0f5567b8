"""MMAD scoring: the benchmark's own rules reproduced exactly (``official``) and a corrected mode (``strict``).

``official`` (the default; numbers comparable with published ones) does what the benchmark's
``caculate_accuracy_mmad`` and its answer parser do:

1. Letter parsing: every standalone capital A-E in the reply (``\\b([A-E])\\b``) is found and the
   **last** is kept; with none, the option text closest to the reply (``difflib``, cutoff 0) is
   taken, so even an empty reply gets some option; with no options either, the raw reply stays.
   Fault: "B. A round hole." parses as A (the article).
2. A record whose gold or parsed answer is not one of A-E is dropped, not counted wrong. Fault:
   the official code removes it from the list it is iterating over, which also skips the *next*
   record (reproduced: the record after a dropped one is not counted either). Records are
   scored in the benchmark file's order, as the official answer files are written.
   A question the backend failed on (an ``error`` record) is left out, as the official scripts
   never write an answer for an image whose query failed.
3. Accuracy per (dataset, sub-task), dataset = the first path component; Object Structure and
   Object Details are merged into Object Analysis. Anomaly Detection (reported as Anomaly
   Discrimination) is **balanced accuracy**: (accuracy on normal images + accuracy on anomalous
   images) / 2, normal = ``good`` in the image path. A sub-task absent from a dataset counts 0.
4. Average = mean of a dataset's sub-task columns; the Average row = mean over datasets of every
   column (a macro average, not weighted by question counts). Recall, Precision, F1 (anomalous =
   positive), Overkill = 100 (1 - normal accuracy) and Miss = 100 (1 - anomalous accuracy) come
   from the Anomaly Detection questions.

An answers file written by the benchmark's own query scripts (``gpt_answer``) holds answers those
scripts already parsed; they are compared as written, in both modes, as the official summary
compares them (official: a stored "", "B." or "a" is dropped; strict: it counts wrong).

``strict`` fixes what the official rules get wrong:

- parsing: an explicit cue ("Answer: B", "option B") wins; otherwise the last standalone option
  letter, where an "A" followed by a lower-case word is the article, not an answer, and a letter
  that is not one of the question's options is ignored; with no letter, the reply must contain
  the words of exactly one option (the longest when one contains another); else unparsable;
- no record is dropped or skipped: an unparsable reply, an invalid gold answer or a failed
  query counts wrong;
- a sub-task with no questions in a dataset is empty (not 0) and left out of the averages; with
  only one class (normal or anomalous) present, Anomaly Detection is that class's accuracy.

Usage::

    table = score(records, mode="official")
    print(table.format()); table.to_csv("scores.csv"); table.to_json("scores.json")
    table.headline   # the Average of the Average row
"""

from __future__ import annotations

import csv
import difflib
import functools
import io
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from adcopilot.errors import AdcopilotError
from adcopilot.eval.mmad import NORMAL_FLAG, SUBTASKS, TASK_ABBREVIATIONS, subtask_of

ScoringMode = Literal["official", "strict"]
SCORING_MODES: tuple[str, ...] = ("official", "strict")
LETTERS = ("A", "B", "C", "D", "E")
AD = "Anomaly Detection"
#: Columns after the sub-tasks, in the benchmark's CSV order.
EXTRA_COLUMNS = ["Average", "Recall", "Precision", "F1", "Overkill", "Miss"]

_LETTER = re.compile(r"\b([A-E])\b")
_CUE = re.compile(r"(?i:answer|option|choice)\s*(?:(?i:is)|:|=)?\s*[:\-]?\s*[(\[]?\s*([A-E])\b")
_ARTICLE_AFTER = re.compile(r"\s+[a-z]")
_ABBREVIATION_AFTER = re.compile(r"\.[a-z]")  # "E.g.", "A.k.a."
_WORDS = re.compile(r"[a-z0-9]+")


@dataclass
class AnswerRecord:
    """One answered question: what the scorer needs."""

    image: str  # the query's path relative to the data root (the MMAD key)
    question_type: str
    gold: str
    reply: str
    options: dict[str, str] = field(default_factory=dict)
    question_index: int = 0
    error: str | None = None  # the backend failed on this question
    #: ``reply`` is already the answer the benchmark's own script parsed (its answers files'
    #: ``gpt_answer``): compared as written, never parsed again.
    parsed: bool = False


# ---------------------------------------------------------------------------------------- parsing
def parse_official(reply: str, options: Mapping[str, str] | None = None) -> str:
    """The benchmark's parser: last standalone A-E, else the closest option text, else the reply."""
    found = _LETTER.findall(reply)
    if found:
        return found[-1]
    if options:
        return _closest_option(reply, tuple(options.items()))
    return reply


@functools.lru_cache(maxsize=65536)
def _closest_option(reply: str, options: tuple[tuple[str, str], ...]) -> str:
    # Cached: the same unparsable replies ("", "I cannot tell") come back many times.
    match = difflib.get_close_matches(reply, [v for _, v in options], n=1, cutoff=0.0)
    if match:
        for key, value in options:
            if value == match[0]:
                return key
    return reply


def _words(text: str) -> list[str]:
    return _WORDS.findall(text.lower())


def _contains(haystack: list[str], needle: list[str]) -> bool:
    n = len(needle)
    return n > 0 and any(haystack[i : i + n] == needle for i in range(len(haystack) - n + 1))


def parse_strict(reply: str, options: Mapping[str, str] | None = None) -> str | None:
    """The corrected parser: an option letter, or None when the reply names no option."""
    valid = set(options) if options else set(LETTERS)
    cued = [m.group(1) for m in _CUE.finditer(reply) if m.group(1) in valid]
    if cued:
        return cued[-1]
    letters = []
    for m in _LETTER.finditer(reply):
        letter, rest = m.group(1), reply[m.end() :]
        if letter not in valid or _ABBREVIATION_AFTER.match(rest):
            continue
        if letter == "A" and _ARTICLE_AFTER.match(rest):
            continue  # "A round hole": the article
        letters.append(letter)
    if letters:
        return letters[-1]
    if not options:
        return None
    said = _words(reply)
    hits = [(len(w), k) for k, v in options.items() if _contains(said, w := _words(v))]
    if not hits:
        return None
    hits.sort(reverse=True)
    if len(hits) > 1 and hits[0][0] == hits[1][0]:
        return None  # two options named equally: ambiguous
    return hits[0][1]


# ---------------------------------------------------------------------------------------- table
@dataclass
class ScoreTable:
    """A dataset x column table in percent, in the benchmark's layout, plus how it was counted."""

    mode: str
    columns: list[str]  # sub-tasks, then EXTRA_COLUMNS
    rows: dict[str, dict[str, float | None]]  # dataset (then "Average") -> column -> value
    counts: dict[str, dict[str, dict[str, int]]]  # dataset -> sub-task -> {"total", "correct"}
    n_records: int = 0
    n_counted: int = 0
    n_dropped: int = 0  # official: not a letter
    n_skipped: int = 0  # official: the record after a dropped one
    n_unparsable: int = 0  # strict: counted wrong
    n_errors: int = 0  # backend failures (official: left out; strict: wrong)
    n_invalid_gold: int = 0

    @property
    def subtasks(self) -> list[str]:
        return [c for c in self.columns if c not in EXTRA_COLUMNS]

    @property
    def headline(self) -> float | None:
        return self.rows.get("Average", {}).get("Average")

    def to_dict(self) -> dict[str, Any]:
        return {
            "scoring": self.mode,
            "columns": self.columns,
            "table": self.rows,
            "counts": self.counts,
            "records": self.n_records,
            "counted": self.n_counted,
            "dropped": self.n_dropped,
            "skipped": self.n_skipped,
            "unparsable": self.n_unparsable,
            "errors": self.n_errors,
            "invalid_gold": self.n_invalid_gold,
        }

    def to_json(self, path: str | os.PathLike) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2)

    def csv_text(self) -> str:
        """The benchmark's ``*_accuracy.csv`` layout: an unnamed index column, datasets, Average."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["", *self.columns])
        for name, row in self.rows.items():
            w.writerow([name, *("" if row.get(c) is None else repr(float(row[c])) for c in self.columns)])
        return buf.getvalue()

    def to_csv(self, path: str | os.PathLike) -> None:
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write(self.csv_text())

    def format(self, digits: int = 2) -> str:
        """A plain-text table (sub-tasks abbreviated: AD = Anomaly Discrimination, ...)."""
        abbrev = {t: a for a, t in TASK_ABBREVIATIONS.items()}
        heads = ["dataset", *(abbrev.get(c, c) for c in self.columns)]
        body = [
            [name, *("-" if row.get(c) is None else f"{row[c]:.{digits}f}" for c in self.columns)]
            for name, row in self.rows.items()
        ]
        widths = [max(len(r[i]) for r in [heads, *body]) for i in range(len(heads))]
        lines = ["  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(heads, widths, strict=True)))]
        for r in body:
            lines.append("  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths, strict=True))))
        note = f"scoring={self.mode}  records={self.n_records}  counted={self.n_counted}"
        if self.mode == "official":
            note += f"  dropped={self.n_dropped}  skipped={self.n_skipped}"
        else:
            note += f"  unparsable={self.n_unparsable}"
        if self.n_errors:
            note += f"  errors={self.n_errors}"
        return "\n".join([*lines, note])


def _mean(values: list[float | None], skip_missing: bool) -> float | None:
    vals = [v for v in values if v is not None] if skip_missing else [v or 0.0 for v in values]
    return sum(vals) / len(vals) if vals else None


def _column_order(types_seen: list[str]) -> list[str]:
    known = [t for t in SUBTASKS if t in types_seen]
    return known + [t for t in types_seen if t not in SUBTASKS]


def _prediction(r: AnswerRecord, strict: bool) -> str | None:
    """The predicted letter of a record (strict: None when it names no option)."""
    if r.parsed:  # the official summary compares the stored string itself
        valid = set(r.options) if strict and r.options else set(LETTERS)
        return r.reply if r.reply in valid or not strict else None
    return parse_strict(r.reply, r.options) if strict else parse_official(r.reply, r.options)


def score(
    records: Sequence[AnswerRecord], mode: str = "official", normal_flag: str = NORMAL_FLAG
) -> ScoreTable:
    """Score answered questions into the dataset x sub-task table (see the module docstring)."""
    if mode not in SCORING_MODES:
        raise AdcopilotError(f"unknown scoring mode '{mode}'; use 'official' or 'strict'")
    strict = mode == "strict"
    n_errors = sum(r.error is not None for r in records)
    recs = list(records) if strict else [r for r in records if r.error is None]

    datasets = list(dict.fromkeys(r.image.split("/")[0] for r in recs))
    types = _column_order(list(dict.fromkeys(subtask_of(r.question_type) for r in recs)))
    stats = {d: {t: [0, 0] for t in types} for d in datasets}  # [total, correct]
    det = {d: {"normal": [0, 0], "abnormal": [0, 0]} for d in datasets}
    n_dropped = n_skipped = n_unparsable = n_invalid_gold = n_counted = 0

    i, n = 0, len(recs)
    while i < n:
        r = recs[i]
        gold_ok = r.gold in LETTERS
        n_invalid_gold += not gold_ok
        if strict:
            pred = None if r.error is not None else _prediction(r, strict)
            n_unparsable += pred is None and r.error is None
            correct = gold_ok and pred == r.gold
        else:
            pred = _prediction(r, strict)
            if not gold_ok or pred not in LETTERS:
                n_dropped += 1
                n_skipped += i + 1 < n  # the official loop steps over the next record too
                i += 2
                continue
            correct = pred == r.gold
        d, t = r.image.split("/")[0], subtask_of(r.question_type)
        cell = stats[d][t]
        cell[0] += 1
        cell[1] += correct
        if t == AD:
            side = det[d]["normal" if normal_flag in r.image else "abnormal"]
            side[0] += 1
            side[1] += correct
        n_counted += 1
        i += 1

    rows: dict[str, dict[str, float | None]] = {}
    for d in datasets:
        row: dict[str, float | None] = {}
        for t in types:
            total, correct = stats[d][t]
            row[t] = 100.0 * correct / total if total else (None if strict else 0.0)
        (nt, nc), (at, ac) = det[d]["normal"], det[d]["abnormal"]
        normal_acc = nc / nt if nt else None
        anomaly_acc = ac / at if at else None
        if AD in types:
            if strict:
                row[AD] = _mean([normal_acc, anomaly_acc], True)
                row[AD] = None if row[AD] is None else 100.0 * row[AD]
            else:
                row[AD] = 100.0 * ((normal_acc or 0.0) + (anomaly_acc or 0.0)) / 2
        row["Average"] = _mean([row[t] for t in types], strict)
        tp, fn = ac, at - ac
        fp = nt - nc
        missing = None if strict else 0.0
        precision = tp / (tp + fp) if tp + fp else missing
        recall = tp / (tp + fn) if tp + fn else missing
        if precision is None or recall is None:
            f1 = None
        else:
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        row["Recall"] = None if recall is None else 100.0 * recall
        row["Precision"] = None if precision is None else 100.0 * precision
        row["F1"] = None if f1 is None else 100.0 * f1
        if strict:
            row["Overkill"] = None if normal_acc is None else 100.0 * (1 - normal_acc)
            row["Miss"] = None if anomaly_acc is None else 100.0 * (1 - anomaly_acc)
        else:  # the official code takes accuracy 0 for an absent side: 100% overkill / miss
            row["Overkill"] = 100.0 * (1 - (normal_acc or 0.0))
            row["Miss"] = 100.0 * (1 - (anomaly_acc or 0.0))
        rows[d] = row
    columns = [*types, *EXTRA_COLUMNS]
    if datasets:
        rows["Average"] = {c: _mean([rows[d][c] for d in datasets], True) for c in columns}
    return ScoreTable(
        mode=mode,
        columns=columns,
        rows=rows,
        counts={d: {t: {"total": s[0], "correct": s[1]} for t, s in stats[d].items()} for d in datasets},
        n_records=len(records),
        n_counted=n_counted,
        n_dropped=n_dropped,
        n_skipped=n_skipped,
        n_unparsable=n_unparsable,
        n_errors=n_errors,
        n_invalid_gold=n_invalid_gold,
    )


def records_from_official_answers(data: object, where: str) -> list[AnswerRecord]:
    """Records from the benchmark's own answers file (a list of ``{"image", "question",
    "question_type", "correct_answer", "gpt_answer"}``), to re-score it here.

    ``gpt_answer`` is what the benchmark's query script already parsed from the model's reply;
    the official summary compares that string with the gold letter as it is (an empty or
    non-letter answer is dropped), so the records are marked ``parsed`` and never re-parsed.
    """
    if not isinstance(data, list):
        raise AdcopilotError(f"{where}: expected a list of answers")
    out = []
    for i, a in enumerate(data):
        if not isinstance(a, dict) or not {"image", "question_type", "correct_answer", "gpt_answer"} <= set(a):
            raise AdcopilotError(f"{where}: answer {i} lacks image/question_type/correct_answer/gpt_answer")
        q = a.get("question")
        opts = q.get("options") if isinstance(q, dict) and isinstance(q.get("options"), dict) else {}
        out.append(
            AnswerRecord(
                image=str(a["image"]),
                question_type=str(a["question_type"]),
                gold=str(a["correct_answer"]),
                reply=str(a["gpt_answer"]),
                options={str(k): str(v) for k, v in opts.items()},
                question_index=i,
                parsed=True,
            )
        )
    return out


def load_answers(path: str | os.PathLike) -> list[AnswerRecord]:
    """Records from a run's ``answers.jsonl`` (the latest line of each question; images in the
    order they first appear, questions by index) or from the benchmark's answers JSON."""
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise AdcopilotError(f"{p}: no such answers file")
    with open(p, encoding="utf-8") as f:
        text = f.read()
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            return records_from_official_answers(json.loads(text), p)
        except json.JSONDecodeError as exc:
            raise AdcopilotError(f"{p}: malformed JSON ({exc.msg} at line {exc.lineno})") from None
    latest: dict[tuple[str, int], dict[str, Any]] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            raise AdcopilotError(f"{p}: line {n} is not JSON") from None
        if not isinstance(rec, dict) or not {"image", "q", "type", "gold", "reply"} <= set(rec):
            raise AdcopilotError(f"{p}: line {n} lacks image/q/type/gold/reply")
        latest[(str(rec["image"]), int(rec["q"]))] = rec
    order = {img: i for i, img in enumerate(dict.fromkeys(k[0] for k in latest))}
    out = []
    for (img, q), rec in sorted(latest.items(), key=lambda kv: (order[kv[0][0]], kv[0][1])):
        opts = rec.get("options") if isinstance(rec.get("options"), dict) else {}
        out.append(
            AnswerRecord(
                image=img, question_type=str(rec["type"]), gold=str(rec["gold"]), reply=str(rec["reply"] or ""),
                options={str(k): str(v) for k, v in opts.items()}, question_index=q, error=rec.get("error"),
            )
        )
    return out
