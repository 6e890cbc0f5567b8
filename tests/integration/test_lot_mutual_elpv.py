"""``batch --mutual`` on a small lot of real ELPV mono cells with the shipped model and no references:
the defective cells rank above the normal ones, the lot's threshold splits them, a blank frame is
flagged with its reason, a truncated file is skipped, and a re-run resumes with nothing to do."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from adcopilot.data.elpv import load_cells
from adcopilot.eval.detection import auroc

from .conftest import run


@pytest.fixture(scope="module")
def mono_lot(tmp_path_factory):
    """lot/good: 24 normal mono cells and a blank frame; lot/defect: 4 defective ones and a truncated file."""
    root = tmp_path_factory.mktemp("mono-lot")
    mono = [c for c in load_cells() if c.kind == "mono"]
    picks = {"good": [c for c in mono if c.probability == 0.0][:24], "defect": [c for c in mono if c.probability == 1.0][:4]}
    for folder, chosen in picks.items():
        (root / "lot" / folder).mkdir(parents=True)
        for c in chosen:
            shutil.copyfile(c.path, root / "lot" / folder / c.name)
    Image.new("L", (300, 300), 40).save(root / "lot" / "good" / "blank.png")
    (root / "lot" / "defect" / "truncated.png").write_bytes(picks["defect"][0].path.read_bytes()[:500])
    return root


def _run_lot(mono_lot, tmp_path, *extra: str) -> tuple[dict, dict, tuple]:
    """``batch LOT --mutual EXTRA``: (its JSON summary, the records but the blank frame's, the arguments);
    the truncated file skipped, the blank frame flagged by the image check."""
    out = tmp_path / "out"
    args = ("batch", str(mono_lot / "lot"), "--mutual", *extra, "--out", str(out), "--json", "--quiet")
    p = run(*args, home=tmp_path)
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["processed"] == 29 and [s["file"] for s in d["skipped"]] == ["defect/truncated.png"]
    recs = {r["file"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    blank = recs.pop("good/blank.png")
    assert blank["verdict"] == "anomalous" and blank["image_check"] == "blank image"
    return d, recs, args


def test_mutual_batch_without_references_on_real_cells(mono_lot, tmp_path):
    out = tmp_path / "out"
    d, recs, args = _run_lot(mono_lot, tmp_path)
    assert all(r["image_check"] is None for r in recs.values())
    labels = [int(r["truth"] == "defective") for r in recs.values()]
    scores = np.array([r["mutual_score"] for r in recs.values()])
    assert auroc(scores, labels) >= 0.95
    # The lot's own threshold: at most 2 of the 24 normal cells flagged (one sits within 1e-3 of the
    # threshold, on either side by the products' rounding), at most one defect missed.
    t = d["summary"]["truth"]
    assert t["overkill"] - 1 <= 2 and t["miss"] <= 1, t  # the blank frame is one false alarm
    assert all((out / r["annotated"]).exists() for r in recs.values())
    assert d["summary"]["image_check"] == {"blank image": 1}
    again = json.loads(run(*args, home=tmp_path).stdout)
    assert again["processed"] == 0 and again["done_before"] == 29
    # A labelled lot's mutual scores are on the lot's scale: calibrate reports a threshold for batch --mutual
    # and never saves it as the model's (which inspect, batch --refs and serve would then use).
    c = run("calibrate", "--results", str(out), "--target-false-alarm-rate", "0.1", "--json", "--quiet",
            "--out", str(tmp_path / "cal"), home=tmp_path)
    assert c.returncode == 0, c.stderr
    cal = json.loads(c.stdout)
    assert cal["saved"] is None and cal["lot_scores"] is True and not (tmp_path / "calibration").exists()


def test_lot_references_on_real_cells(mono_lot, tmp_path):
    """``--lot-refs 3``: the shipped model inspects each cell against three of the lot's own cells the mutual
    score calls normal; the joined score still ranks the defects first and boxes them from the model's map."""
    d, recs, _ = _run_lot(mono_lot, tmp_path, "--lot-refs", "3", "--no-images")
    lot_files = {str(mono_lot / "lot" / k) for k in recs} | {str(mono_lot / "lot" / "good" / "blank.png")}
    for k, r in recs.items():
        assert len(r["references"]) == 3 and set(r["references"]) <= lot_files
        assert str(mono_lot / "lot" / k) not in r["references"] and not any("blank" in f for f in r["references"])
    labels = [int(r["truth"] == "defective") for r in recs.values()]
    assert auroc(np.array([r["score"] for r in recs.values()]), labels) >= 0.95
    t = d["summary"]["truth"]
    assert t["overkill"] - 1 <= 2 and t["miss"] <= 1, t
    assert all(r["boxes"] for r in recs.values() if r["verdict"] == "anomalous")


def test_an_aligned_lot_on_real_cells(mono_lot, tmp_path):
    """``--aligned``: PaDiM fitted on the lot's own cells joins the mutual score; the defects still rank first
    (the lot is small for PaDiM, which the run warns about), the blank frame keeps its reason, and the lot's PaDiM
    agrees with the mutual score (no note that the parts may not be aligned)."""
    d, recs, _ = _run_lot(mono_lot, tmp_path, "--aligned", "--no-images")
    labels = [int(r["truth"] == "defective") for r in recs.values()]
    assert auroc(np.array([r["score"] for r in recs.values()]), labels) >= 0.95
    assert auroc(np.array([r["lot_padim_score"] for r in recs.values()]), labels) >= 0.9
    t = d["summary"]["truth"]
    assert t["overkill"] - 1 <= 2 and t["miss"] <= 1, t
    assert d["summary"]["run"]["mutual"]["aligned"] is True
    assert d["lot_notes"] == []  # aligned cells: the lot PaDiM ranks them as the mutual score does


def test_a_lot_threshold_is_not_the_models(mono_lot, tmp_path):
    """``--threshold`` with ``--mutual`` alone is the lot score's threshold: with ``--lot-refs`` the model keeps
    its own threshold (its map, on which boxes are drawn, is read on that scale)."""
    small = tmp_path / "small"
    for folder, n in (("good", 4), ("defect", 2)):
        (small / folder).mkdir(parents=True)
        for f in sorted(p for p in (mono_lot / "lot" / folder).glob("*.png") if p.stat().st_size > 1000)[:n]:
            shutil.copyfile(f, small / folder / f.name)
    out = tmp_path / "out"
    p = run("batch", str(small), "--mutual", "--lot-refs", "2", "--threshold", "100", "--out", str(out), "--json",
            "--quiet", "--no-images", home=tmp_path)
    assert p.returncode == 0, p.stderr
    recs = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(recs) == 6 and all(r["threshold"] == 100 and r["verdict"] == "normal" for r in recs)
    assert all(0 < r["reference_threshold"] < 1 for r in recs)  # the model's own threshold, not 100


def test_a_defect_imaged_twice_does_not_vouch_for_itself(mono_lot, tmp_path):
    """Each defective cell twice in the lot (a file copied again, a re-triggered camera writing the same
    frame): each copy must not be the other's closest match, or half of the defects pass as normal."""
    lot = tmp_path / "lot"
    shutil.copytree(mono_lot / "lot", lot)
    (lot / "good" / "blank.png").unlink()
    (lot / "defect" / "truncated.png").unlink()
    for f in sorted((lot / "defect").iterdir()):
        shutil.copyfile(f, f.with_name("again_" + f.name))
    out = tmp_path / "out"
    p = run("batch", str(lot), "--mutual", "--out", str(out), "--json", "--quiet", home=tmp_path)
    assert p.returncode == 0, p.stderr
    recs = {r["file"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    defects = {k: r for k, r in recs.items() if k.startswith("defect/")}
    assert len(defects) == 8
    for name, r in defects.items():  # a copy scores as its original, and above every normal cell
        twin = defects[name.replace("again_", "")] if "again_" in name else defects[name.replace("/", "/again_")]
        assert r["mutual_score"] == pytest.approx(twin["mutual_score"], abs=1e-6)
    assert json.loads(p.stdout)["summary"]["truth"]["miss"] == 0
