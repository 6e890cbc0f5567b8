"""Lots from folders and CSV lists: truth from folder names, deterministic shards, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from adcopilot.errors import AdcopilotError
from adcopilot.line.sources import collect, parse_shard, shard, shard_of


def _touch(root: Path, *rels: str) -> None:
    for r in rels:
        p = root / r
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")


def test_truth_from_folder_names_and_mvtec_layout(tmp_path):
    _touch(tmp_path, "test/good/a.png", "test/crack/b.png", "test/scratch/deep/c.jpg", "ok/d.png", "NG/e.bmp",
           "misc/f.png", "root.png", "notes.txt", ".hidden/g.png")
    items = {it.key: it.truth for it in collect([tmp_path])}
    assert items == {
        "NG/e.bmp": "defective",
        "misc/f.png": "defective",  # a sibling of the top-level ok/ folder
        "ok/d.png": "normal",
        "root.png": None,
        "test/crack/b.png": "defective",
        "test/good/a.png": "normal",
        "test/scratch/deep/c.jpg": "defective",
    }


def test_no_truth_without_telling_folder_names(tmp_path):
    _touch(tmp_path, "line1/a.png", "line2/b.png")
    assert {it.truth for it in collect([tmp_path])} == {None}


def test_csv_list_with_labels_and_relative_paths(tmp_path):
    _touch(tmp_path, "imgs/a.png", "imgs/b.png")
    (tmp_path / "lot.csv").write_text("Path,Label\nimgs/a.png,good\nimgs/b.png,1\nmissing.png,\n")
    items = collect([tmp_path / "lot.csv"])
    assert [(it.key, it.truth) for it in items] == [("imgs/a.png", "normal"), ("imgs/b.png", "defective"),
                                                    ("missing.png", None)]
    assert items[0].path == (tmp_path / "imgs/a.png").absolute()


def test_csv_errors_name_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("name,label\na.png,good\n")
    with pytest.raises(AdcopilotError, match=r"bad.csv: the CSV list needs a header with a 'path' column"):
        collect([bad])
    bad.write_text("path,label\na.png,maybe\n")
    with pytest.raises(AdcopilotError, match=r"bad.csv:2: unknown label 'maybe'"):
        collect([bad])
    with pytest.raises(AdcopilotError, match="nothing.csv: no such CSV list"):
        collect([tmp_path / "nothing.csv"])
    with pytest.raises(AdcopilotError, match="no such folder, image or CSV list"):
        collect([tmp_path / "nowhere"])


def test_several_roots_get_prefixed_keys(tmp_path):
    _touch(tmp_path, "a/x.png", "b/x.png")
    keys = [it.key for it in collect([tmp_path / "a", tmp_path / "b"])]
    assert keys == ["a/x.png", "b/x.png"]


def test_shards_partition_the_lot_deterministically():
    from adcopilot.line.sources import LotItem

    items = [LotItem(Path(f"/l/{i}.png"), f"part/{i:04d}.png") for i in range(400)]
    parts = [shard(items, i, 4) for i in range(1, 5)]
    keys = [it.key for p in parts for it in p]
    assert sorted(keys) == sorted(it.key for it in items) and len(keys) == len(set(keys))
    assert all(60 < len(p) < 140 for p in parts)  # roughly balanced
    # The same key always lands in the same shard (a hash, not the list position).
    assert [shard_of(k, 4) for k in ("part/0001.png", "part/0002.png")] == [shard_of("part/0001.png", 4),
                                                                            shard_of("part/0002.png", 4)]
    assert shard(items[::-1], 2, 4) == parts[1][::-1]
    assert shard(items, 1, 1) == items


@pytest.mark.parametrize("spec", ["0/4", "5/4", "a/b", "3", "1/0"])
def test_bad_shard_specs(spec):
    with pytest.raises(AdcopilotError, match="--shard"):
        parse_shard(spec)


def test_good_shard_specs():
    assert parse_shard(None) == (1, 1) and parse_shard("2/3") == (2, 3)


def test_files_left_out_by_name_are_counted_in_one_warning(tmp_path, caplog):
    _touch(tmp_path, "a.png", "b.PGM", "c.jfif", "d.gif", "e.gif", "notes.txt", ".hidden.gif", "sub/raw.dng")
    with caplog.at_level("WARNING", logger="adcopilot.line.sources"):
        keys = sorted(it.key for it in collect([tmp_path]))
    assert keys == ["a.png", "b.PGM", "c.jfif"]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    assert "4 files left out, not named as an image (.gif 2, .dng 1, .txt 1; read: PNG, JPEG" in warnings[0]
    caplog.clear()
    _touch(tmp_path / "clean", "x.png")
    collect([tmp_path / "clean"])
    assert not caplog.records
