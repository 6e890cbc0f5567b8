"""Free answers against the inspection on the bundled benchmark's held-out photos.

For every photo of the bundled benchmark (1 random template), ``inspect`` runs once and the
free question "What is the defect and where is it?" is asked about the same result. Counted:

- anomalous verdicts: answers naming the grid region of ``inspect``'s strongest box and the type
  head's label in that region (what a grounded answer must say);
- normal verdicts: answers that describe a defect (any trained defect label, or no "No defect");
- the verdicts against the benchmark's truth (the detector's misses and false alarms, which the
  answer follows by design).

Usage::

    python benchmarks/grounded_answers.py [--model default] [--limit N]
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from adcopilot.api import AnsweringCopilot, Copilot
from adcopilot.data.knowledge import display_label
from adcopilot.eval.bundled import PHOTOS_DATASET, ensure_bundled
from adcopilot.eval.mmad import load_mmad
from adcopilot.geometry import region_name
from adcopilot.grounding import strongest_box
from adcopilot.language import answer as answers

QUESTION = "What is the defect and where is it?"


def check(cp: AnsweringCopilot, limit: int | None = None) -> dict[str, Any]:
    """The counts described in the module docstring (and the failing answers, if any)."""
    bench = load_mmad(ensure_bundled())
    items = [i for i in bench.items if i.dataset == PHOTOS_DATASET][:limit]
    labels = [display_label(x) for x in cp.language.model.cfg.defect_labels]
    out: dict[str, Any] = {"images": len(items), "anomalous_verdicts": 0, "named_region_and_type": 0,
                           "normal_verdicts": 0, "normal_described_as_defect": 0, "missed": 0, "false_alarms": 0,
                           "failures": []}
    for item in items:
        query, refs = bench.query(item), [bench.resolve(item.random_templates[0])]
        r = cp.inspect(query, refs)
        answer = cp.ask(query, refs, QUESTION, result=r)
        out["missed"] += int(not item.is_normal and not r.is_anomalous)
        out["false_alarms"] += int(item.is_normal and r.is_anomalous)
        if r.is_anomalous:
            out["anomalous_verdicts"] += 1
            box = strongest_box(r)
            region = region_name(box.bbox_2d, *r.image_size) if box is not None else None
            label = answers.type_label(cp.language.model, cp.language.visual(query, refs, r.threshold), region)
            ok = display_label(label or "") in answer and (region is None or f"at the {region} " in answer)
            out["named_region_and_type"] += int(ok)
            if not ok:
                out["failures"].append({"image": item.key, "answer": answer, "region": region, "label": label})
        else:
            out["normal_verdicts"] += 1
            bad = "No defect" not in answer or any(lab in answer for lab in labels)
            out["normal_described_as_defect"] += int(bad)
            if bad:
                out["failures"].append({"image": item.key, "answer": answer, "verdict": r.verdict})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args()
    cp = Copilot.load(args.model)
    if not isinstance(cp, AnsweringCopilot):
        raise SystemExit(f"{args.model}: no nano language model")
    print(json.dumps(check(cp, args.limit), indent=2))


if __name__ == "__main__":
    main()
