"""MMAD scoring speed: 40,000 answers scored in under 5 s (official and strict modes).

Writes an ``answers.jsonl`` of ``--answers`` answered questions the size of MMAD (4 datasets,
38 classes, all nine question types, 1 Anomaly Detection question per image and about 40%
normal images) with a realistic mix of replies: bare letters, "Answer: C", "B. A round hole."
(the article fault), free text naming an option, free text naming none, empty replies, and a
few records with a gold answer that is not a letter. Then times, separately, reading the file
(:func:`load_answers`) and :func:`score` in each mode, and checks the two tables agree where
they must (the Anomaly Detection counts of records without faults).

Run::

    python benchmarks/bench_scoring.py --answers 40000
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from adcopilot.eval.scoring import load_answers, score

DATASETS = {"DS-MVTec": 15, "MVTec-LOCO": 5, "VisA": 12, "GoodsAD": 6}  # classes per dataset
TYPES = ["Defect Classification", "Defect Localization", "Defect Description", "Defect Analysis",
         "Object Classification", "Object Structure", "Object Details", "Object Analysis"]
OPTIONS = {"A": "A round hole.", "B": "A long scratch.", "C": "A dark stain.", "D": "A bent edge."}


def reply_for(rng: np.random.Generator, gold: str, options: dict[str, str]) -> str:
    letter = gold if gold in options and rng.random() < 0.6 else str(rng.choice(list(options)))
    r = rng.random()
    if r < 0.45:
        return letter
    if r < 0.65:
        return f"Answer: {letter}."
    if r < 0.75:
        return f"{letter}. {options[letter]}"  # "B. A long scratch." parses as A officially
    if r < 0.85:
        return f"I think it is {options[letter].lower().rstrip('.')}."
    if r < 0.95:
        return "The image quality does not allow a decision."
    return ""


def make_answers(path: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    lines, i = [], 0
    while len(lines) < n:
        ds = list(DATASETS)[i % len(DATASETS)]
        cls = f"class{i % DATASETS[ds]}"
        normal = rng.random() < 0.4
        image = f"{ds}/{cls}/test/{'good' if normal else 'defect'}/{i:05d}.png"
        types = ["Anomaly Detection", *rng.choice(TYPES, 4 if normal else 7, replace=False)]
        for q, t in enumerate(types):
            opts = {"A": "Yes.", "B": "No."} if t == "Anomaly Detection" else OPTIONS
            gold = ("B" if normal else "A") if t == "Anomaly Detection" else str(rng.choice(list(opts)))
            if rng.random() < 0.001:
                gold = "?"  # a malformed gold answer
            lines.append({"image": image, "q": q, "type": str(t), "options": opts, "gold": gold,
                          "reply": reply_for(rng, gold, opts), "error": None})
        i += 1
    path.write_text("".join(json.dumps(x) + "\n" for x in lines[:n]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--answers", type=int, default=40_000)
    ap.add_argument("--target-s", type=float, default=5.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "answers.jsonl"
        make_answers(path, args.answers)
        t0 = time.perf_counter()
        records = load_answers(path)
        t_load = time.perf_counter() - t0
        times = {}
        tables = {}
        for mode in ("official", "strict"):
            t0 = time.perf_counter()
            tables[mode] = score(records, mode)
            times[mode] = time.perf_counter() - t0
    for mode, table in tables.items():
        print(table.format())
        print(f"{mode}: {times[mode]:.3f} s for {len(records):,} answers")
    total = t_load + max(times.values())
    print(f"load {t_load:.3f} s; load + slowest scoring {total:.3f} s (target < {args.target_s} s): "
          f"{'met' if total < args.target_s else 'MISSED'}")


if __name__ == "__main__":
    main()
