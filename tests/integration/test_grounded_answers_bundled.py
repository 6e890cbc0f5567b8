"""The shipped model's free answers name inspect's findings on every bundled held-out photo."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from adcopilot.api import AnsweringCopilot, Copilot


def _script():
    path = Path(__file__).parents[2] / "benchmarks" / "grounded_answers.py"
    spec = importlib.util.spec_from_file_location("grounded_answers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_free_answers_follow_the_inspection_on_the_bundled_photos():
    cp = Copilot.load("default")
    assert isinstance(cp, AnsweringCopilot)
    counts = _script().check(cp)
    assert counts["images"] == 120 and counts["anomalous_verdicts"] >= 20  # 31 at the default threshold
    assert counts["named_region_and_type"] == counts["anomalous_verdicts"], counts["failures"][:3]
    assert counts["normal_verdicts"] > 0 and counts["normal_described_as_defect"] == 0, counts["failures"][:3]
