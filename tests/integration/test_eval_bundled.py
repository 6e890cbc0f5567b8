"""The bundled benchmark is built from the installed data, deterministically, in MMAD's format."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from adcopilot.data.normals import HELDOUT_FOR_EVALUATION
from adcopilot.eval import bundled
from adcopilot.eval.bbox import gt_boxes_from_mask
from adcopilot.eval.mmad import SUBTASKS, load_mmad


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    a = tmp_path_factory.mktemp("bundle") / "a"
    summary = bundled.build_bundled(a, progress=False)
    return a, summary


def test_heldout_sources_are_the_ones_training_excludes():
    assert set(bundled.BUNDLED_HELDOUT_SOURCES) == set(HELDOUT_FOR_EVALUATION)


def test_contents_and_format(built):
    root, summary = built
    bench = load_mmad(root / "mmad.json")
    assert summary["images"] == len(bench.items) == 280 and summary["normal"] == 120
    elpv = [i for i in bench.items if i.dataset == "ELPV"]
    photos = [i for i in bench.items if i.dataset == "HeldOut-Photos"]
    assert len(elpv) == 160 and {i.class_name for i in elpv} == {"mono", "poly"}
    assert all(q.type == "Anomaly Detection" for i in elpv for q in i.questions)
    assert {q.subtask for i in photos for q in i.questions} == set(SUBTASKS)
    assert {i.class_name for i in photos} == {"gravel", "coffee_cup", "coins", "flower"}
    for item in bench.items:
        assert bench.query(item).is_file() and item.image_path != item.key  # the real layout
        assert len(item.random_templates) == len(item.similar_templates) == 4
        assert all(bench.resolve(t).is_file() and "good" in t for t in item.random_templates + item.similar_templates)
        assert item.is_normal == (item.mask_path is None) or item.dataset == "ELPV"
        ad = [q for q in item.questions if q.type == "Anomaly Detection"]
        assert len(ad) == 1 and ad[0].options[ad[0].answer] == ("No." if item.is_normal else "Yes.")
    for item in photos:
        if not item.is_normal:
            assert gt_boxes_from_mask(bench.mask(item))
    letters = [q.answer for i in bench.items for q in i.questions if len(q.options) == 4]
    assert max(letters.count(x) for x in "ABCD") - min(letters.count(x) for x in "ABCD") <= 4  # balanced


def test_defect_records_describe_every_synthetic_defect(built):
    root, _ = built
    bench = load_mmad(root / "mmad.json")
    records = json.loads((root / "defects.json").read_text())
    defective = [i for i in bench.items if i.mask_path is not None and i.key.startswith(bundled.PHOTOS_DATASET)]
    assert sorted(records) == sorted(i.key for i in defective)
    for item in defective:
        r = records[item.key]
        mask = np.asarray(Image.open(bench.mask(item))) > 0
        assert r["area_px"] == int(mask.sum())
        assert 0 < r["contrast"] <= 1
        assert r["label"].replace(" ", "_") in item.key


def test_build_is_deterministic(built, tmp_path):
    root, _ = built
    bundled.build_bundled(tmp_path / "b", progress=False)
    assert _digest(root) == _digest(tmp_path / "b")


def test_ensure_builds_once_into_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("ADCOPILOT_HOME", str(tmp_path))
    path = bundled.ensure_bundled(progress=False)
    assert path == tmp_path / "benchmarks" / "bundled" / "mmad.json" and path.is_file()
    stamp = path.stat().st_mtime_ns
    assert bundled.ensure_bundled(progress=False) == path and path.stat().st_mtime_ns == stamp
    meta = json.loads((path.parent / "bundle.json").read_text())
    assert meta["version"] == bundled.BUNDLE_VERSION
    assert not list(tmp_path.glob("benchmarks/*.partial-*"))
