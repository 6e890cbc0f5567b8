"""The shipped model on real ELPV cells: a normal cell passes the global check against ELPV references
(a photo of another product, a black frame, a 1 x 1 image and noise do not), and the demo's dark
region is boxed whole."""

from __future__ import annotations

import json

import numpy as np
import pytest

from adcopilot import Copilot
from adcopilot.data.elpv import split
from adcopilot.model.registry import DEFAULT_CHECKPOINT
from adcopilot.model.sanity import BLANK, NOT_PRODUCT

pytestmark = pytest.mark.skipif(
    not (DEFAULT_CHECKPOINT / "config.json").exists(), reason="no shipped checkpoint in this checkout"
)


@pytest.fixture(scope="module")
def cells():
    parts = split(seed=0)
    train = [c.path for c in parts["train"] if c.kind == "mono" and c.probability == 0.0]
    test = [c.path for c in parts["test"] if c.kind == "mono" and c.probability == 0.0]
    return train[:2], test[:3]


@pytest.fixture(scope="module")
def copilot() -> Copilot:
    return Copilot.load()


def test_normal_cells_pass(copilot, cells):
    refs, queries = cells
    for q in queries:
        assert copilot.inspect(q, refs).image_check is None


def test_bad_frames_are_anomalous_with_a_reason(copilot, cells):
    from skimage import data

    refs, _ = cells
    noise = (np.random.default_rng(0).random((300, 300, 3)) * 255).astype(np.uint8)
    cases = {
        "photo of another product": (data.gravel(), NOT_PRODUCT),
        "black frame": (np.zeros((300, 300, 3), np.uint8), BLANK),
        "1 x 1 image": (np.full((1, 1, 3), 200, np.uint8), BLANK),
        "noise": (noise, NOT_PRODUCT),
    }
    for name, (image, reason) in cases.items():
        r = copilot.inspect(image, refs)
        assert (r.verdict, r.image_check) == ("anomalous", reason), name
        assert json.loads(r.to_json())["image_check"] == reason


def test_a_bad_reference_among_normal_cells_is_named_in_the_notes(copilot, cells, tmp_path):
    from PIL import Image
    from skimage import data

    refs, queries = cells
    assert copilot.inspect(queries[0], refs).notes == []  # two normal cells: nothing to say
    gravel, black = tmp_path / "gravel.png", tmp_path / "black.png"
    Image.fromarray(data.gravel()).save(gravel)
    Image.fromarray(np.zeros((300, 300), np.uint8)).save(black)
    for bad, reason in ((gravel, NOT_PRODUCT), (black, BLANK)):
        r = copilot.inspect(queries[0], [*refs, bad])
        assert r.notes == [f"the reference {bad} is unlike the other references ({reason}): remove it, or verdicts "
                           "compared with it may be wrong"]
        assert r.image_check is None  # the query itself is still a normal cell, judged against the set
    pair = copilot.inspect(queries[0], [refs[0], gravel]).notes
    assert len(pair) == 1 and pair[0].startswith(f"the reference {refs[0]} (")


def test_the_demo_dark_region_is_one_box_without_border_specks(copilot):
    cells = split(seed=0)["test"]
    normal = next(c for c in cells if c.kind == "mono" and c.probability == 0.0)
    defective = next(c for c in cells if c.kind == "mono" and c.probability == 1.0)
    r = copilot.inspect(defective.path, [normal.path])
    assert r.verdict == "anomalous" and r.image_check is None
    band = [b for b in r.boxes if b.bbox_2d[2] - b.bbox_2d[0] > 100]
    assert len(band) == 1  # measured [14, 74, 256, 165]: the dark band from end to end, one box
    x1, y1, x2, y2 = band[0].bbox_2d
    assert x1 < 40 and x2 > 230 and 60 < y1 < 100 and 140 < y2 < 190
    # Besides it at most a box on the dark spot right of centre below the band (measured [216, 184, 227, 191],
    # boxed since the query stays unaligned against this reference); no speck at the cell's border.
    for b in r.boxes:
        if b not in band:
            bx1, by1, bx2, by2 = b.bbox_2d
            assert 200 < bx1 < bx2 < 240 and 170 < by1 < by2 < 205
