"""The reference pool's check before a batch: a defective, blank or foreign reference among normal ones
named (in the summary, summary.json, the report and ``reference-check.json``), normal ones not, the
findings read back when a run resumes, and the check skipped where it has nothing to choose from."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from adcopilot.line.batch import BatchConfig, run_batch
from adcopilot.line.pool_check import MIN_POOL, check_pool
from adcopilot.line.records import CHECK_FILE
from adcopilot.line.sources import collect

from .conftest import texture, with_defect


def _cfg(**kw):
    return BatchConfig(progress=False, **kw)


@pytest.fixture
def pool(tmp_path):
    """refs/: 7 shifted copies of one texture, one with a white square painted on, one black frame;
    lot/: two queries."""
    refs, lot = tmp_path / "refs", tmp_path / "lot" / "good"
    refs.mkdir()
    lot.mkdir(parents=True)
    base = texture(0)
    for i in range(7):
        Image.fromarray(np.roll(base, (i % 3, i // 3), axis=(0, 1))).save(refs / f"n{i}.png")
    Image.fromarray(with_defect(base)).save(refs / "scrap.png")
    Image.fromarray(np.zeros_like(base)).save(refs / "dark.png")
    for i in range(2):
        Image.fromarray(base).save(lot / f"q{i}.png")
    return {"refs": refs, "lot": tmp_path / "lot", "out": tmp_path / "out"}


def test_a_defective_and_a_blank_reference_are_named_and_the_normal_ones_are_not(tiny_copilot, pool):
    paths = sorted(pool["refs"].iterdir())
    found = {f.path.name: f for f in check_pool(tiny_copilot, paths)}
    assert set(found) == {"scrap.png", "dark.png"}
    assert "blank" in found["dark.png"].reason and found["dark.png"].score is None
    assert "may show a defect" in found["scrap.png"].reason and found["scrap.png"].score is not None
    assert found["scrap.png"].note().startswith("reference scrap.png: ")


def test_a_pool_too_small_for_a_median_gets_the_image_check_only(tiny_copilot, pool):
    small = [pool["refs"] / n for n in ("n0.png", "n1.png", "scrap.png", "dark.png")]
    assert len(small) < MIN_POOL
    assert [f.path.name for f in check_pool(tiny_copilot, small)] == ["dark.png"]


def test_a_batch_names_them_in_its_summary_and_report_and_reads_them_back(tiny_copilot, pool, monkeypatch):
    s = run_batch(tiny_copilot, collect([pool["lot"]]), [pool["refs"]], pool["out"], _cfg())
    assert sorted(n.split(":")[0] for n in s.reference_notes) == ["reference dark.png", "reference scrap.png"]
    summary = json.loads((pool["out"] / "summary.json").read_text())
    assert summary["reference_check"]["checked"] == 9
    assert sorted(summary["reference_check"]["named"]) == sorted(s.reference_notes)
    page = (pool["out"] / "report.html").read_text()
    assert "References to look at (2 of 9)" in page and "scrap.png" in page
    # A resumed run reads the findings back instead of comparing the pool again.
    saved = pool["out"] / CHECK_FILE
    found = json.loads(saved.read_text())
    found["findings"] = found["findings"][:1]
    saved.write_text(json.dumps(found))
    again = run_batch(tiny_copilot, collect([pool["lot"]]), [pool["refs"]], pool["out"], _cfg())
    assert again.reference_notes == [found["findings"][0]["note"]]
    # Another pool is checked again.
    (pool["refs"] / "dark.png").unlink()
    other = run_batch(tiny_copilot, collect([pool["lot"]]), [pool["refs"]], pool["out"], _cfg(restart=True))
    assert [n.split(":")[0] for n in other.reference_notes] == ["reference scrap.png"]


@pytest.mark.parametrize("cfg", [{"check_references": False}, {"shots": 9}], ids=["turned off", "no choice"])
def test_no_check_when_turned_off_or_every_reference_is_used(tiny_copilot, pool, cfg):
    s = run_batch(tiny_copilot, collect([pool["lot"]]), [pool["refs"]], pool["out"], _cfg(**cfg))
    assert s.reference_notes == [] and not (pool["out"] / CHECK_FILE).exists()
    assert "reference_check" not in json.loads((pool["out"] / "summary.json").read_text())
