"""The images ``adapt`` carries to its end: per-variant views and re-reading at the model's size."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from adcopilot.data.folders import load_folder_groups
from adcopilot.errors import AdcopilotError
from adcopilot.train.adapt_finish import Images


def _folder(tmp_path):
    rng = np.random.default_rng(0)
    for i, variant in enumerate(["a", "a", "b"]):
        (tmp_path / variant).mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / variant / f"{i}.png")
    images, groups, _ = load_folder_groups(tmp_path, 16)
    return Images(tmp_path, images, groups, [True, False, False])


def test_views_by_variant_and_held_out_flag(tmp_path):
    imgs = _folder(tmp_path)
    assert {k: len(v) for k, v in imgs.by_variant(True).items()} == {"a": 1}
    assert {k: len(v) for k, v in imgs.by_variant(False).items()} == {"a": 1, "b": 1}


def test_at_size_rereads_the_same_files_and_refuses_a_changed_folder(tmp_path):
    imgs = _folder(tmp_path)
    assert imgs.at_size(16) is imgs  # already at that size: nothing read
    big = imgs.at_size(32)
    assert [i.shape for i in big.images] == [(32, 32, 3)] * 3 and big.groups == imgs.groups and big.held == imgs.held
    (tmp_path / "b" / "2.png").unlink()
    with pytest.raises(AdcopilotError, match="changed during the adaptation"):
        imgs.at_size(32)
