"""The curation pipeline end to end on tiny trees: sources, splits, skips, card, resume, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adcopilot.data.curate import CurateConfig, assign_splits, curate
from adcopilot.data.leak import load_manifest
from adcopilot.data.sources import detect_kind, read_mmad, scan_sources
from adcopilot.errors import AdcopilotError


def _read(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def _sources(root: Path) -> list[str]:
    return [str(root / "mvtec"), str(root / "cells"), str(root / "plates"), str(root / "unknown")]


def test_layouts_are_detected(curate_tree):
    assert detect_kind(curate_tree / "mvtec") == "mvtec"
    assert detect_kind(curate_tree / "mvtec" / "bottle") == "mvtec"
    assert detect_kind(curate_tree / "cells") == "labels"
    assert detect_kind(curate_tree / "plates") == "normal"
    with pytest.raises(AdcopilotError, match="unknown source layout"):
        detect_kind(curate_tree / "unknown")
    entries, problems = scan_sources(_sources(curate_tree), curate_tree / "out", variants=2)
    assert [p[0] for p in problems] == [str(curate_tree / "unknown")]
    kinds = {e.kind for e in entries}
    assert kinds == {"mvtec", "labels", "normal"}
    synth = [e for e in entries if e.synth_kind]
    assert len(synth) == 8 and all(e.defect and e.mask_path and e.base_path for e in synth)
    masked = [e for e in entries if e.kind == "mvtec" and e.defect and not e.image_path.endswith("bad.png")]
    assert masked and all(e.mask_path for e in masked)


def test_curate_end_to_end(curate_tree, tmp_path):
    out = tmp_path / "out"
    rep = curate(CurateConfig(sources=_sources(curate_tree), out=out, variants=2, progress=False, workers=1))
    # bad files reported and skipped; the run went on
    reasons = " | ".join(s["reason"] for s in rep.skipped)
    assert len(rep.skipped) == 2 and "mask is 10x10 but its image is 64x64" in reasons and "bad.png" in reasons
    assert len(rep.source_problems) == 1 and "unknown source layout" in rep.source_problems[0]["reason"]
    train, test = _read(out / "train.jsonl"), _read(out / "test.jsonl")
    assert rep.n_samples == len(train) + len(test) > 0
    assert {s["split"] for s in train} == {"train"} and {s["split"] for s in test} == {"test"}
    # no image is both a training and a test query; references always come from training images
    train_imgs, test_imgs = {s["image"] for s in train}, {s["image"] for s in test}
    assert not train_imgs & test_imgs
    all_train_queries = train_imgs | {s["image"] for s in train}
    bases = {str(p.resolve()) for p in (curate_tree / "plates").iterdir()}
    for s in train + test:
        if s["task"] == "comparison" and "identical" in s["turns"][-1]["content"]:
            continue  # exact before/after pairs use the image's own base
        assert set(s["references"]) <= all_train_queries | bases, s["id"]
        assert s["image"] not in s["references"]
    # synthetic variants share the split of their normal image, and were written with their masks
    splits = json.loads((out / "splits.json").read_text())
    for key, rec in splits.items():
        if "#v" in key:
            assert rec["split"] == splits[key.split("#")[0]]["split"]
            assert rec["image"].startswith("synthetic/")  # inside the curated folder: relative
            assert (out / rec["image"]).is_file()
            assert (out / rec["image"].replace(".png", "_mask.png")).is_file()
    card = json.loads((out / "card.json").read_text())
    assert set(card["by_task"]) == {"caption", "vqa", "localization", "mcq", "comparison"}
    assert {"Anomaly Detection", "Defect Classification", "Defect Localization", "Defect Description",
            "Defect Analysis", "Object Classification", "Object Structure", "Object Details",
            "Object Analysis"} <= set(card["by_type"])
    assert card["n_problems"] == 0 and "## Example samples" in (out / "card.md").read_text()
    assert set(card["images_by_class"]) == {"bottle", "cells", "plates"}
    hashes = load_manifest(out)
    assert len(hashes) == rep.n_images
    # label-only images have no boxes: no captions or localization for them
    cells = [s for s in train + test if s["category"] == "cells" and s["defect"]]
    assert cells and not [s for s in cells if s["task"] in ("caption", "localization")]


def test_deterministic_and_resumable(curate_tree, tmp_path):
    srcs = _sources(curate_tree)[:3]
    a, b = tmp_path / "a", tmp_path / "b"
    curate(CurateConfig(sources=srcs, out=a, seed=3, progress=False))
    curate(CurateConfig(sources=srcs, out=b, seed=3, progress=False, workers=2))
    for name in ("train.jsonl", "test.jsonl", "card.json", "hashes.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    # Interrupt b: forget the last 10 images and leave a half-written sample line behind.
    prog = (b / "progress.jsonl").read_text().splitlines()
    (b / "progress.jsonl").write_text("\n".join(prog[:-10]) + "\n")
    with open(b / "samples.partial.jsonl", "a") as fh:
        fh.write('{"id": "half')
    (b / "train.jsonl").unlink()
    curate(CurateConfig(sources=srcs, out=b, seed=3, progress=False))
    for name in ("train.jsonl", "test.jsonl", "card.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    # another seed: another split or phrasing
    c = tmp_path / "c"
    curate(CurateConfig(sources=srcs, out=c, seed=4, progress=False))
    assert (a / "train.jsonl").read_bytes() != (c / "train.jsonl").read_bytes()


def test_other_settings_in_the_same_folder_are_refused(curate_tree, tmp_path):
    out = tmp_path / "o"
    curate(CurateConfig(sources=[str(curate_tree / "cells")], out=out, progress=False))
    with pytest.raises(AdcopilotError, match="curated with other settings"):
        curate(CurateConfig(sources=[str(curate_tree / "cells")], out=out, seed=1, progress=False))


def test_no_usable_source(tmp_path):
    with pytest.raises(AdcopilotError, match="no usable source"):
        curate(CurateConfig(sources=[str(tmp_path / "nothing")], out=tmp_path / "o", progress=False))


def test_splits_keep_instances_together_and_follow_the_fraction(curate_tree, tmp_path):
    entries, _ = scan_sources([str(curate_tree / "plates"), str(curate_tree / "mvtec")], tmp_path, variants=3)
    split = assign_splits(entries, seed=0, test_fraction=0.5)
    by_inst: dict[str, set[str]] = {}
    for e in entries:
        by_inst.setdefault(e.instance, set()).add(split[e.key])
    assert all(len(v) == 1 for v in by_inst.values())
    goods = [e for e in entries if e.kind == "mvtec" and e.defect is None]
    assert sum(split[e.key] == "test" for e in goods) == len(goods) // 2
    with pytest.raises(AdcopilotError, match="test-fraction"):
        assign_splits(entries, 0, 1.5)


def test_mmad_source_is_test_only(tmp_path, caplog):
    # The real file's layout: keys relative to the root, image_path and mask_path to the class folder.
    root = tmp_path / "MMAD"
    for rel in ("DS-MVTec/bottle/image/good/000.png", "DS-MVTec/bottle/image/broken_large/000.png",
                "MVTec-AD/bottle/train/good/001.png", "DS-MVTec/bottle/rbg_mask/broken_large/000_rbg_mask.png"):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((32, 32, 3), 100 + len(rel), np.uint8)).save(p)
    q = {"Question": "Is there any defect in the object?", "Answer": "A", "Options": {"A": "Yes.", "B": "No."},
         "type": "Anomaly Detection", "annotation": True}
    data = {
        "DS-MVTec/bottle/image/broken_large/000.png": {
            "image_path": "image/broken_large/000.png", "mask_path": "rbg_mask/broken_large/000_rbg_mask.png",
            "random_templates": ["MVTec-AD/bottle/train/good/001.png"], "conversation": [q, {**q, "Answer": "Z"}]},
        "DS-MVTec/bottle/image/good/000.png": {
            "image_path": "image/good/000.png", "random_templates": ["MVTec-AD/bottle/train/good/001.png"],
            "conversation": [{**q, "Answer": "B"}]},
        "DS-MVTec/bottle/image/good/404.png": {
            "image_path": "image/good/404.png", "random_templates": ["MVTec-AD/bottle/train/good/001.png"],
            "conversation": [{**q, "Answer": "B"}]},
    }
    (root / "mmad.json").write_text(json.dumps(data))
    entries = read_mmad(root / "mmad.json")
    bad = next(e for e in entries if "broken_large" in e.key)
    assert bad.image_path == str((root / "DS-MVTec/bottle/image/broken_large/000.png").resolve())
    assert bad.mask_path == str((root / "DS-MVTec/bottle/rbg_mask/broken_large/000_rbg_mask.png").resolve())
    assert bad.category == "bottle" and bad.defect == "broken_large" and bad.dataset == "DS-MVTec"
    missing = [r.getMessage() for r in caplog.records if "404.png" in r.getMessage()]
    assert missing and "no query image found (tried" in missing[0] and str(root / "image/good/404.png") in missing[0]
    out = tmp_path / "out"
    rep = curate(CurateConfig(sources=[f"mmad:{root / 'mmad.json'}"], out=out, progress=False))
    test = _read(out / "test.jsonl")
    assert (out / "train.jsonl").read_text() == ""
    assert rep.n_samples == 2 and {s["task"] for s in test} == {"mcq"}
    assert {s["answer"] for s in test} == {"A", "B"}  # the bad letter "Z" was dropped
    assert all(s["references"] == [str((root / "MVTec-AD/bottle/train/good/001.png").resolve())] for s in test)
    assert {v["split"] for v in load_manifest(out).values()} == {"test"}
    assert any("404.png" in s["key"] for s in rep.skipped)  # the missing query is reported, not used


def test_same_image_in_two_sources_never_leaks_into_test(curate_tree, tmp_path):
    import shutil

    shutil.copytree(curate_tree / "cells", tmp_path / "copies" / "cells")  # the same files, another source
    out = tmp_path / "out"
    rep = curate(CurateConfig(sources=[str(curate_tree / "cells"), str(tmp_path / "copies")], out=out,
                              test_fraction=0.5, progress=False))
    dropped = [s for s in rep.skipped if "identical to a training image" in s["reason"]]
    assert dropped  # with this seed some copies fell on the other side of the split
    test = _read(out / "test.jsonl")
    from adcopilot.data.leak import find_leaks

    assert test and find_leaks(sorted({s["image"] for s in test}), [out]) == []
