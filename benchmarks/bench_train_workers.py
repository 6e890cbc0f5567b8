"""Stage-1 training speed by number of data workers, side by side in the same run.

Each setting trains the shipped architecture from scratch for ``--steps`` steps (bundled stage-1
recipe, the given pair size and batch) in its own fresh run folder; the rate is taken between the
first and the last logged step, so process start-up, the spawned workers' imports and the final
evaluation are left out. Settings alternate over ``--rounds`` so that each sees the same machine
load; the table gives the median rate per setting and its ratio to ``--num-workers``' first value.

    OMP_NUM_THREADS=1 python benchmarks/bench_train_workers.py --num-workers 0 1 --steps 40 --rounds 3

Batches are a pure function of (seed, step), so every setting trains on exactly the same pairs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from adcopilot.commands.train_cmd import default_config
from adcopilot.train.config import load_config
from adcopilot.train.loop import train
from adcopilot.train.stage1 import Stage1Task


def run_once(workers: int, args: argparse.Namespace, root: Path) -> float:
    """Steps per second of one short training run with ``workers`` data processes."""
    cfg = load_config(
        default_config(1),
        {"steps": args.steps, "batch_size": args.batch, "num_workers": workers, "log_every": 5,
         "checkpoint_every": 10_000, "eval_every": 0, "eval_pairs": 8, "run_dir": str(root / f"w{workers}")},
    )
    cfg.data["train_size"] = args.size
    train(Stage1Task(cfg), cfg)
    rows = [json.loads(x) for x in (root / f"w{workers}" / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in rows if "elapsed_s" in r]
    first, last = timed[0], timed[-1]
    return (last["step"] - first["step"]) / max(1e-9, last["elapsed_s"] - first["elapsed_s"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-workers", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if args.steps < 10:
        ap.error("--steps must be at least 10 (the rate is taken between logged steps, every 5)")
    rates: dict[int, list[float]] = {w: [] for w in args.num_workers}
    for r in range(args.rounds):
        for w in args.num_workers:
            with tempfile.TemporaryDirectory() as tmp:
                rates[w].append(run_once(w, args, Path(tmp)))
            print(f"round {r + 1}: num_workers {w}: {rates[w][-1]:.3f} steps/s", flush=True)
    base = statistics.median(rates[args.num_workers[0]])
    print(f"\nstage 1, {args.steps} steps x {args.batch} pairs of {args.size} px, median of {args.rounds} rounds")
    print("| num_workers | steps/s | ratio |\n|---:|---:|---:|")
    for w in args.num_workers:
        m = statistics.median(rates[w])
        print(f"| {w} | {m:.3f} | {m / base:.2f} |")


if __name__ == "__main__":
    main()
