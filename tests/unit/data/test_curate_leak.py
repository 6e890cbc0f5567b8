"""Leak guard: pixel hashes of curated images; test images found in a training split."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from PIL import Image

from adcopilot.data.curate import CurateConfig, curate
from adcopilot.data.leak import (
    LeakError,
    check_leaks,
    content_hash,
    find_leaks,
    load_manifest,
    write_manifest,
)
from adcopilot.errors import AdcopilotError


def test_hash_is_of_pixels_not_of_file_bytes(tmp_path):
    arr = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    Image.fromarray(arr).save(tmp_path / "b.bmp")  # same pixels, another format and name
    Image.fromarray(arr).save(tmp_path / "c.png", compress_level=9)
    other = arr.copy()
    other[0, 0, 0] ^= 1
    Image.fromarray(other).save(tmp_path / "d.png")
    h = content_hash(tmp_path / "a.png")
    assert h == content_hash(tmp_path / "b.bmp") == content_hash(tmp_path / "c.png") == content_hash(arr)
    assert h != content_hash(tmp_path / "d.png")
    assert (tmp_path / "a.png").read_bytes() != (tmp_path / "b.bmp").read_bytes()


def test_leaks_found_in_train_split_only(tmp_path, caplog):
    rng = np.random.default_rng(1)
    imgs = {n: rng.integers(0, 255, (16, 16, 3), dtype=np.uint8) for n in ("tr", "te", "new")}
    for n, a in imgs.items():
        Image.fromarray(a).save(tmp_path / f"{n}.png")
    write_manifest(tmp_path / "", {content_hash(imgs["tr"]): {"split": "train", "path": "x/tr.png"},
                                   content_hash(imgs["te"]): {"split": "test", "path": "x/te.png"}})
    copy = tmp_path / "eval" / "renamed.png"
    copy.parent.mkdir()
    Image.fromarray(imgs["tr"]).save(copy)
    Image.fromarray(imgs["te"]).save(copy.parent / "test_image.png")
    (copy.parent / "broken.png").write_bytes(b"nope")
    leaks = find_leaks([copy.parent, tmp_path / "new.png"], [tmp_path])
    assert [(lk.image, lk.train_path) for lk in leaks] == [(str(copy), "x/tr.png")]
    with caplog.at_level(logging.WARNING, logger="adcopilot.data.leak"):
        assert len(check_leaks([copy], [tmp_path])) == 1
    assert "DATA LEAK" in caplog.text and "broken.png" not in " ".join(lk.image for lk in leaks)
    with pytest.raises(LeakError, match="renamed.png: test image was in training set"):
        check_leaks([copy], [tmp_path / "hashes.json"], strict=True)
    assert check_leaks([tmp_path / "new.png"], [tmp_path], strict=True) == []


def test_curated_set_guards_its_test_split(curate_tree, tmp_path):
    out = tmp_path / "out"
    curate(CurateConfig(sources=[str(curate_tree / "cells")], out=out, progress=False))
    train_imgs = sorted({json.loads(x)["image"] for x in (out / "train.jsonl").read_text().splitlines()})
    test_imgs = sorted({json.loads(x)["image"] for x in (out / "test.jsonl").read_text().splitlines()})
    assert train_imgs and test_imgs
    assert find_leaks(test_imgs, [out]) == []
    assert len(find_leaks(train_imgs, [out])) == len(train_imgs)


@pytest.mark.parametrize("content,match", [("{", "malformed JSON"), ('{"format": "x"}', "not an adcopilot hash manifest")])
def test_bad_manifest(tmp_path, content, match):
    (tmp_path / "hashes.json").write_text(content)
    with pytest.raises(AdcopilotError, match=match):
        load_manifest(tmp_path)
    with pytest.raises(AdcopilotError, match="no such hash manifest"):
        load_manifest(tmp_path / "elsewhere")
