"""Calibrated multiple-choice answers: accuracy by prior weight, on held-out training questions and the bundled benchmark.

For each multiple-choice question the language model answers (not the defect yes/no and location
questions, which grounded answers take from the detector), the options are scored twice with
``adcopilot.language.answer.score_continuations``: given the pair asked about, and given the
content-free pair (two flat grey images, ``NanoLanguage.prior``). The answer at weight ``w`` is
the option maximising ``score - w * content_free_score``; accuracy is printed per sub-task and
weight, and the mean over sub-tasks.

Two question sets:

- ``val``: the Chat-AD training data's held-out split (``--chat-data``, as built by
  ``adcopilot train --stage 3``), up to ``--per-type`` questions per type (seeded): where the
  weight is chosen;
- ``bundled``: the bundled benchmark's held-out photos (1 random template, the inspection
  threshold 0.5 as grounded answers use it): where it is checked.

Usage::

    python benchmarks/calibrated_answers.py --chat-data runs/chatdata2 [--model default] [--per-type 40]
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
MERGED = {"Object Structure": "Object Analysis", "Object Details": "Object Analysis"}


def table(records: list[dict]) -> dict[float, dict[str, float]]:
    """Accuracy (%) per sub-task and weight, and their mean."""
    by: dict[str, list[dict]] = collections.defaultdict(list)
    for r in records:
        by[MERGED.get(r["type"], r["type"])].append(r)
    out: dict[float, dict[str, float]] = {}
    for w in WEIGHTS:
        acc = {t: 100 * float(np.mean([r["letters"][int(np.argmax(np.array(r["q"]) - w * np.array(r["g"])))] == r["gold"]
                                       for r in rs])) for t, rs in sorted(by.items())}
        acc["mean"] = float(np.mean(list(acc.values())))
        out[w] = acc
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--chat-data", type=Path, required=True, help="built Chat-AD data folder (its test split)")
    ap.add_argument("--per-type", type=int, default=40)
    ap.add_argument("--out", type=Path, default=None, help="write the per-question scores (JSONL) here")
    args = ap.parse_args()

    from adcopilot.api import Copilot
    from adcopilot.data.questions import MMAD_SUBTASK
    from adcopilot.eval.bundled import ensure_bundled
    from adcopilot.eval.mmad import load_mmad
    from adcopilot.grounding import question_kind
    from adcopilot.language import answer as answers
    from adcopilot.language.prompt import mcq_answer, mcq_question
    from adcopilot.train.language_data import ChatData
    from adcopilot.train.stage_language import strip_preamble

    cp = Copilot.load(args.model)
    lang = cp.language
    model, prior = lang.model, lang.prior()

    def record(kind: str, question: str, options: dict[str, str], gold: str, visual) -> dict:
        turns = [{"role": "user", "content": mcq_question(question, options)}]
        texts = [mcq_answer(k, options) for k in options]
        return {"type": kind, "gold": gold, "letters": list(options),
                "q": answers.score_continuations(model, turns, visual, texts), "g": prior.scores(model, turns, texts)}

    results: dict[str, list[dict]] = {"val": [], "bundled": []}
    data = ChatData(args.chat_data)
    by: dict[str, list[dict]] = collections.defaultdict(list)
    for s in data.samples("test"):
        if s["task"] == "mcq":
            by[s["type"]].append(s)
    rng = np.random.default_rng(7)
    picked = [by[t][int(i)] for t in sorted(by) for i in rng.choice(len(by[t]), min(args.per_type, len(by[t])), replace=False)]
    for s in tqdm(picked, desc="held-out training questions"):
        q = strip_preamble(s["turns"][0]["content"]).split("\n")[0]
        if question_kind(q, s["options"]) is None:
            results["val"].append(record(MMAD_SUBTASK.get(s["type"], s["type"]), q, s["options"], s["answer"], data.visual(s)))

    bench = load_mmad(ensure_bundled(progress=False))
    items = [it for it in bench.items if it.dataset == "HeldOut-Photos"]
    for item in tqdm(items, desc="bundled photos"):
        refs = bench.references(item, 1, "random")
        visual = lang.visual(bench.query(item), refs, cp.threshold)
        for qu in item.questions:
            if question_kind(qu.text, qu.options) is None:
                results["bundled"].append(record(qu.type, qu.text, qu.options, qu.answer, visual))

    for name, recs in results.items():
        print(f"{name}: {len(recs)} questions")
        for w, acc in table(recs).items():
            print(f"  weight {w:.2f}: " + "  ".join(f"{k} {v:.1f}" for k, v in acc.items()))
    if args.out:
        with args.out.open("w") as f:
            for name, recs in results.items():
                for r in recs:
                    f.write(json.dumps({"set": name, **r}) + "\n")


if __name__ == "__main__":
    main()
