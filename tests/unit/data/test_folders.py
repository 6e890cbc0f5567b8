"""Folder loading for adapt: recursive listing, variants from sub-folders, bad files skipped."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from adcopilot.data.folders import load_folder, load_folder_groups
from adcopilot.errors import AdcopilotError


def _png(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((20, 30, 3), value, np.uint8)).save(path)


def test_groups_are_the_sub_folders(tmp_path):
    _png(tmp_path / "top.png", 10)
    _png(tmp_path / "mono" / "a.png", 20)
    _png(tmp_path / "poly" / "x" / "b.png", 30)
    (tmp_path / "mono" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    images, groups, bad = load_folder_groups(tmp_path, 16)
    assert [im.shape for im in images] == [(16, 16, 3)] * 3
    assert groups == ["mono", "poly/x", ""]  # sorted by path: mono/a, poly/x/b, top
    assert [int(im[0, 0, 0]) for im in images] == [20, 30, 10]
    assert len(bad) == 1 and bad[0][0].name == "broken.png"
    plain, bad2 = load_folder(tmp_path, 16)
    assert len(plain) == 3 and len(bad2) == 1


def test_empty_or_missing_folder(tmp_path):
    with pytest.raises(AdcopilotError, match="no images found"):
        load_folder_groups(tmp_path, 16)
    with pytest.raises(AdcopilotError, match="no such folder"):
        load_folder_groups(tmp_path / "nope", 16)


def test_a_folder_names_what_it_left_out(tmp_path, caplog):
    _png(tmp_path / "a.png", 10)
    (tmp_path / "b.heic").write_bytes(b"x")
    with caplog.at_level("WARNING", logger="adcopilot.data.folders"):
        images, _ = load_folder(tmp_path, 16)
    assert len(images) == 1
    assert any("1 file left out, not named as an image (.heic 1;" in r.getMessage() for r in caplog.records)
