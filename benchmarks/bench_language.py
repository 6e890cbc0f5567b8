"""Speed of the language model on CPU: one multiple-choice answer, a 40-token answer, cold start.

Measures, on a pair of the bundled benchmark (a held-out photo's query and its template):

- the median time of ``Copilot.answer_choice`` (likelihood mode, 4 options) over ``--n`` questions
  that the language model answers (not the defect yes/no, location and type questions, which
  grounded answers take from the detector and the type head), after one warm-up (the visual inputs of the pair are cached
  after the first question, as in a conversation or an MMAD run: what is timed is the language
  model): uncalibrated (the default), and calibrated (``prior_weight=0.5``; each question's
  content-free scores are computed the first time it is asked, which every question here is);
- the same in letter mode;
- the median time of a free answer forced to exactly 40 new tokens (greedy, cache);
- the wall time of a cold ``adcopilot inspect QUERY --ref REF --ask "..."`` in a fresh process
  (Python start, imports, both models loaded, inspection and answer).

Usage::

    python benchmarks/bench_language.py [--model default] [--n 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from adcopilot.api import Copilot
    from adcopilot.eval.bundled import ensure_bundled
    from adcopilot.eval.mmad import load_mmad
    from adcopilot.language import answer as answers

    bench = load_mmad(ensure_bundled(progress=False))
    items = [it for it in bench.items if it.dataset == "HeldOut-Photos" and not it.is_normal]
    item = items[0]
    query, ref = bench.query(item), bench.references(item, 1)[0]
    from adcopilot.grounding import question_kind, type_options
    from adcopilot.model.checkpoint_kind import DEFAULT_CHECKPOINT

    folder = DEFAULT_CHECKPOINT if args.model == "default" else Path(args.model)
    labels = json.loads((folder / "language" / "config.json").read_text()).get("defect_labels", [])
    questions = [q for it in items for q in it.questions if len(q.options) == 4
                 and question_kind(q.text, q.options) is None and type_options(q.text, q.options, labels) is None][: args.n]

    t0 = time.perf_counter()
    cp = Copilot.load(args.model)
    load_s = time.perf_counter() - t0
    cp.answer_choice(query, [ref], questions[0].text, questions[0].options)  # warm-up: LLM + visual inputs
    warm_s = time.perf_counter() - t0 - load_s

    def median_time(fn) -> float:
        times = []
        for q in questions:
            t = time.perf_counter()
            fn(q)
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    mc = median_time(lambda q: cp.answer_choice(query, [ref], q.text, q.options))
    calibrated = median_time(lambda q: cp.answer_choice(query, [ref], q.text, q.options, prior_weight=0.5))
    letter = median_time(lambda q: cp.answer_choice(query, [ref], q.text, q.options, mode="letter"))
    lang = cp.language
    visual = lang.visual(query, [ref])
    turns = [{"role": "user", "content": "Describe the defect in the query image."}]
    gen = []
    for _ in range(3):
        t = time.perf_counter()
        answers.generate(lang.model, visual, turns, max_new_tokens=40, min_new_tokens=40)
        gen.append(time.perf_counter() - t)

    env = dict(os.environ)
    t = time.perf_counter()
    p = subprocess.run(
        [sys.executable, "-m", "adcopilot", "inspect", str(query), "--ref", str(ref), "--model", args.model,
         "--ask", "Is there any defect in the object?"],
        capture_output=True, text=True, env=env,
    )
    cold = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(p.stderr)
    out = {
        "threads": torch.get_num_threads(),
        "load_s": round(load_s, 2),
        "first_question_s": round(warm_s, 2),
        "mc_likelihood_median_s": round(mc, 3),
        "mc_likelihood_calibrated_median_s": round(calibrated, 3),
        "mc_letter_median_s": round(letter, 3),
        "answer_40_tokens_median_s": round(statistics.median(gen), 3),
        "cold_inspect_ask_s": round(cold, 2),
        "query": str(Path(query).name),
        "load_average": [round(x, 1) for x in os.getloadavg()],
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
