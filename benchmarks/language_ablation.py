"""The language ablation table: MMAD sub-task accuracy of several evaluated models side by side.

Each ``--run NAME=FOLDER`` is an ``adcopilot eval mmad`` output folder (its
``scores_official.json``). Per sub-task the score is the mean over the datasets that ask it (on
the bundled benchmark ELPV asks Anomaly Discrimination only, HeldOut-Photos all seven); the
"mean" column is the mean of the seven sub-task scores. With ``--card FILE`` the table replaces
(or is appended as) the ``language:ablation`` section of a model card.

Usage::

    python benchmarks/language_ablation.py --run full=runs/eval-full --run "no comparison=runs/eval-nocmp" \\
        --run "text only=runs/eval-text" [--card src/adcopilot/checkpoints/nano/MODEL_CARD.md]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SUBTASKS = ["Anomaly Detection", "Defect Classification", "Defect Localization", "Defect Description",
            "Defect Analysis", "Object Classification", "Object Analysis"]
SHORT = ["AD", "DC", "DL", "DD", "DA", "OC", "OA"]


def subtask_scores(folder: Path, scoring: str = "official") -> dict[str, float]:
    """Per sub-task accuracy (mean over the datasets asking it) and their mean, from a run folder."""
    data = json.loads((folder / f"scores_{scoring}.json").read_text())
    table, counts = data["table"], data.get("counts", {})
    out: dict[str, float] = {}
    for t in SUBTASKS:
        vals = [row[t] for ds, row in table.items() if ds != "Average" and _asked(counts, ds, t, row)]
        if vals:
            out[t] = sum(vals) / len(vals)
    out["mean"] = sum(out[t] for t in SUBTASKS if t in out) / max(1, sum(t in out for t in SUBTASKS))
    return out


def _asked(counts: dict, ds: str, task: str, row: dict) -> bool:
    c = counts.get(ds, {}).get(task) if isinstance(counts.get(ds), dict) else None
    if isinstance(c, dict):
        c = c.get("total", c.get("n"))
    if isinstance(c, (int, float)):
        return c > 0
    return task in row  # no counts recorded: trust the table


def markdown(rows: dict[str, dict[str, float]]) -> str:
    head = "| model | " + " | ".join(SHORT) + " | mean |\n|---|" + "---:|" * (len(SHORT) + 1) + "\n"
    body = ""
    for name, s in rows.items():
        cells = [f"{s[t]:.1f}" if t in s else "-" for t in SUBTASKS] + [f"{s['mean']:.1f}"]
        body += f"| {name} | " + " | ".join(cells) + " |\n"
    return head + body


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="append", required=True, help="NAME=FOLDER of an eval mmad run")
    ap.add_argument("--scoring", default="official")
    ap.add_argument("--card", type=Path, help="merge the table into this model card")
    ap.add_argument("--note", default="", help="text placed above the table in the card")
    args = ap.parse_args()
    rows = {}
    for spec in args.run:
        name, _, folder = spec.partition("=")
        rows[name] = subtask_scores(Path(folder), args.scoring)
    table = markdown(rows)
    print(table)
    if args.card:
        from adcopilot.train.stage_language import merge_card

        section = f"## Language model: ablation on the bundled benchmark\n\n{args.note.strip()}\n\n{table}"
        text = args.card.read_text() if args.card.exists() else ""
        args.card.write_text(merge_card(text, "ablation", section))


if __name__ == "__main__":
    main()
