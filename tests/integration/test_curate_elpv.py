"""Curation on real images: ELPV solar cells as label-only folders and as normals with synthetic defects."""

from __future__ import annotations

import json
import os

from adcopilot.data import elpv
from adcopilot.data.curate import CurateConfig, curate
from adcopilot.data.leak import find_leaks


def test_curate_real_solar_cells(tmp_path):
    cells = elpv.split(seed=0)["train"]
    good = [c for c in cells if c.probability == 0.0][:12]
    bad = [c for c in cells if c.probability == 1.0][:6]
    labels = tmp_path / "labels" / "solar_cell"
    normal = tmp_path / "normal" / "solar_cell"
    for folder, chosen in ((labels / "good", good[:6]), (labels / "defective", bad), (normal, good[6:])):
        folder.mkdir(parents=True)
        for c in chosen:
            os.symlink(c.path, folder / c.name)  # the licensed images are read in place, never copied
    out = tmp_path / "out"
    rep = curate(CurateConfig(sources=[f"labels:{labels}", f"normal:{normal}"], out=out, variants=2,
                              test_fraction=0.3, progress=False, workers=1))
    assert rep.skipped == [] and rep.problems == []
    samples = [json.loads(x) for f in ("train.jsonl", "test.jsonl") for x in (out / f).read_text().splitlines()]
    assert {s["task"] for s in samples} == {"caption", "vqa", "localization", "mcq", "comparison"}
    # synthetic defects on real cells: boxes inside 300x300, facts measured from exact masks
    synth = [s for s in samples if s["image"].startswith("synthetic/") and s["task"] == "caption"]
    assert len(synth) == 12
    for s in synth:
        cap = json.loads(s["turns"][-1]["content"])
        assert cap["defect_details"] and all(0 <= b["bbox_2d"][0] < b["bbox_2d"][2] <= 300
                                             for b in cap["defect_details"])
        assert cap["description"].startswith("An electroluminescence image of a square solar cell")
    # ELPV's "defective" label is generic: no invented defect type for those images
    elpv_bad = [s for s in samples if s["defect"] == "defective"]
    assert elpv_bad and not any(s.get("type") == "Defect Classification" for s in elpv_bad)
    test_imgs = sorted({s["image"] for s in samples if s["split"] == "test" and not s["image"].startswith("synthetic/")})
    assert test_imgs and find_leaks(test_imgs, [out]) == []
