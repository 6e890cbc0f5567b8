"""The defect-type head's own labelled set (painted, encoded, split by product) and its fitting."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest
import torch

from adcopilot.data.synth import DEFECT_KINDS
from adcopilot.errors import AdcopilotError
from adcopilot.language.visual import CELL_STATS, CELL_WIDTH
from adcopilot.model.checkpoint_kind import DEFAULT_CHECKPOINT
from adcopilot.train.stage_language import fit_head
from adcopilot.train.type_head_data import TypeHeadDataConfig, build, display_label, load_split, read_set

CFG = TypeHeadDataConfig(size=64, instances=2, per_kind=1, refs=1, categories=["screw", "tiles"], photos=False,
                         val_fraction=0.3, test_fraction=0.3)


@pytest.fixture(scope="module")
def built(tmp_path_factory, detector):
    root = tmp_path_factory.mktemp("typehead")
    cmp_dir = detector.model.save(root / "stage1")
    n = build(root / "set", cmp_dir, CFG, progress=False, detector=detector)
    return root, cmp_dir, n


def test_the_synthetic_kinds_are_the_shipped_heads_labels():
    cfg = json.loads((DEFAULT_CHECKPOINT / "language" / "config.json").read_text())
    assert sorted(display_label(k) for k in DEFECT_KINDS) == cfg["defect_labels"]


def test_every_product_has_every_kind_and_one_split(built):
    root, _, n = built
    rows, t = read_set(root / "set")
    assert n == len(rows) == 4 * len(DEFECT_KINDS)
    assert t["cells"].shape == (n, 9, CELL_WIDTH) and t["cover"].shape == (n, 9)
    kinds, splits = defaultdict(set), defaultdict(set)
    for r in rows:
        kinds[r["product"]].add(r["kind"])
        splits[r["product"]].add(r["split"])
    assert len(kinds) == 4 and all(k == set(DEFECT_KINDS) for k in kinds.values())
    assert all(len(s) == 1 for s in splits.values())  # a product never straddles splits
    assert float(t["cover"].sum(1).min()) > 0  # every defect lies on the grid


def test_split_features_pick_the_hottest_or_the_defect_cell(built):
    root, _, _ = built
    rows, t = read_set(root / "set")
    labels = sorted({display_label(k) for k in DEFECT_KINDS})
    total = 0
    for split in ("train", "val", "test"):
        try:
            x, y = load_split(root / "set", split, labels)
        except AdcopilotError:  # a split may be empty at this size
            continue
        idx = [i for i, r in enumerate(rows) if r["split"] == split]
        hot = t["cells"][idx, :, 0].argmax(1)
        assert torch.equal(x, t["cells"][idx][torch.arange(len(idx)), hot, CELL_STATS:])
        assert [labels[i] for i in y.tolist()] == [rows[i]["label"] for i in idx]
        xd, _ = load_split(root / "set", split, labels, cell="defect")
        cov = t["cover"][idx][torch.arange(len(idx)), t["cover"][idx].argmax(1)]
        assert xd.shape == x.shape and float(cov.min()) > 0
        total += len(y)
    assert total == len(rows)


def test_parts_build_the_same_set(built, detector, tmp_path):
    root, cmp_dir, _ = built
    for p in (0, 1):
        build(tmp_path / "parts", cmp_dir, CFG, part=p, parts=2, progress=False, detector=detector)
    whole, t1 = read_set(root / "set")
    parts, t2 = read_set(tmp_path / "parts")

    def key(r: dict) -> tuple:
        return r["product"], r["kind"], r["n"]

    order1 = sorted(range(len(whole)), key=lambda i: key(whole[i]))
    order2 = sorted(range(len(parts)), key=lambda i: key(parts[i]))
    assert [whole[i] for i in order1] == [parts[i] for i in order2]
    assert torch.allclose(t1["cells"][order1], t2["cells"][order2], atol=1e-5)


def test_a_folder_built_otherwise_is_refused(built, detector):
    root, cmp_dir, _ = built
    other = TypeHeadDataConfig(**{**CFG.__dict__, "per_kind": 2})
    with pytest.raises(AdcopilotError, match="other settings"):
        build(root / "set", cmp_dir, other, progress=False, detector=detector)
    with pytest.raises(AdcopilotError, match="part 2"):
        build(root / "set", cmp_dir, CFG, part=2, parts=2, progress=False, detector=detector)
    with pytest.raises(AdcopilotError, match="unknown split"):
        load_split(root / "set", "dev", ["Crack"])


def _head(k: int, width: int) -> torch.nn.Sequential:
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.LayerNorm(width), torch.nn.Linear(width, k))


def test_fit_head_separates_clusters_and_l2_shrinks_the_weights():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 8, generator=g) * 3
    y = torch.arange(3).repeat_interleave(40)
    x = centres[y] + torch.randn(len(y), 8, generator=g) * 0.3
    free, tight = _head(3, 8), _head(3, 8)
    fit_head(free, x, y, steps=200, l2=0.0)
    fit_head(tight, x, y, steps=200, l2=1.0)
    with torch.no_grad():
        assert float((free(x).argmax(-1) == y).float().mean()) == 1.0
    assert float(tight[-1].weight.detach().norm()) < float(free[-1].weight.detach().norm())


def test_balanced_fit_names_the_rare_label_more_often():
    g = torch.Generator().manual_seed(0)
    y = torch.cat([torch.zeros(180, dtype=torch.long), torch.ones(20, dtype=torch.long)])
    x = torch.randn(200, 4, generator=g)
    x[:, 0] += y.float() * 1.0  # overlapping classes: the prior decides many
    plain, fair = _head(2, 4), _head(2, 4)
    fit_head(plain, x, y, steps=300, l2=0.0)
    fit_head(fair, x, y, steps=300, l2=0.0, balanced=True)
    with torch.no_grad():
        assert int((fair(x).argmax(-1) == 1).sum()) > int((plain(x).argmax(-1) == 1).sum())


def test_a_damaged_set_is_named_in_the_error(built, tmp_path):
    import shutil

    root, _, _ = built
    shutil.copytree(root / "set", tmp_path / "set")
    (tmp_path / "set" / "features-00.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(AdcopilotError, match="features-00.safetensors: not a readable"):
        read_set(tmp_path / "set")
    (tmp_path / "set" / "samples-00.jsonl").write_text("{broken\n")
    with pytest.raises(AdcopilotError, match="samples-00.jsonl: unreadable"):
        read_set(tmp_path / "set")
    with pytest.raises(AdcopilotError, match="not a type-head set"):
        read_set(tmp_path)
