"""Mask -> regions, boxes and measurements, on hand-made masks."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from adcopilot.data.masks import MaskError, MaskRules, colour_name, describe_regions, load_mask, mask_to_boxes


def test_empty_mask_gives_no_regions():
    assert mask_to_boxes(np.zeros((40, 50), np.uint8)) == []
    facts = describe_regions(None, np.zeros((40, 50), bool))
    assert facts["count"] == 0 and facts["regions"] == [] and facts["size"] == "none"
    assert facts["image_size"] == [50, 40]


def test_tight_box_exclusive_coordinates_and_grid_cell():
    m = np.zeros((90, 90), np.uint8)
    m[10:20, 60:85] = 255
    (r,) = mask_to_boxes(m)
    assert r.bbox_2d == [60, 10, 85, 20]
    assert r.area == 250
    assert r.grid == "top right"
    assert r.touches_border is False


def test_holes_are_filled():
    m = np.zeros((100, 100), bool)
    m[20:60, 20:60] = True
    m[30:50, 30:50] = False  # an enclosed hole
    (r,) = mask_to_boxes(m)
    assert r.area == 40 * 40
    (r2,) = mask_to_boxes(m, MaskRules(fill_holes=False))
    assert r2.area == 40 * 40 - 20 * 20
    assert r.bbox_2d == r2.bbox_2d == [20, 20, 60, 60]


def test_touching_regions_are_one_and_far_ones_are_two():
    m = np.zeros((200, 200), bool)
    m[10:30, 10:30] = True
    m[30:50, 30:50] = True  # touches the first one diagonally
    m[150:170, 150:180] = True
    regions = mask_to_boxes(m, MaskRules(merge_frac=0.0))
    assert [r.bbox_2d for r in regions] == [[10, 10, 50, 50], [150, 150, 180, 170]]  # largest first


def test_nearby_pieces_merge_within_merge_distance():
    m = np.zeros((200, 200), bool)
    m[50:52, 20:60] = True
    m[50:52, 63:100] = True  # 3 px gap, merge distance 2% of the diagonal = 6 px
    assert [r.bbox_2d for r in mask_to_boxes(m)] == [[20, 50, 100, 52]]
    assert len(mask_to_boxes(m, MaskRules(merge_frac=0.0))) == 2


def test_specks_dropped_unless_all_are_specks():
    m = np.zeros((300, 300), bool)
    m[100:140, 100:140] = True
    m[10, 10] = True  # a 1-pixel speck far away
    m[250:252, 250:252] = True  # 4 pixels
    assert [r.bbox_2d for r in mask_to_boxes(m)] == [[100, 100, 140, 140]]
    only = np.zeros((300, 300), bool)
    only[5, 200] = True
    only[290:292, 10:12] = True
    kept = mask_to_boxes(only)
    assert [r.bbox_2d for r in kept] == [[10, 290, 12, 292]]  # the largest speck stays


def test_regions_on_the_border():
    m = np.zeros((60, 80), bool)
    m[0:10, 70:80] = True
    m[50:60, 0:5] = True
    regions = mask_to_boxes(m)
    assert sorted(r.bbox_2d for r in regions) == [[0, 50, 5, 60], [70, 0, 80, 10]]
    assert all(r.touches_border for r in regions)
    assert {r.grid for r in regions} == {"top right", "bottom left"}


def test_elongation_and_orientation():
    m = np.zeros((200, 200), bool)
    m[100:104, 20:180] = True  # a horizontal bar, 40:1
    (r,) = mask_to_boxes(m)
    assert r.elongation > 20 and r.shape == "elongated" and r.orientation == "horizontal"
    v = np.zeros((200, 200), bool)
    v[20:180, 100:104] = True
    (rv,) = mask_to_boxes(v)
    assert rv.orientation == "vertical" and abs(rv.orientation_deg - 90) < 1
    d = np.eye(120, dtype=bool)[::-1]  # from bottom left to top right: rising to the right
    d = d | np.roll(d, 1, axis=1)
    (rd,) = mask_to_boxes(d)
    assert rd.orientation == "diagonal" and abs(rd.orientation_deg - 45) < 3
    sq = np.zeros((100, 100), bool)
    sq[30:60, 30:60] = True
    (rs,) = mask_to_boxes(sq)
    assert rs.elongation == pytest.approx(1.0, abs=0.01) and rs.shape == "compact" and rs.orientation == "none"


def test_irregular_outline():
    m = np.zeros((100, 100), bool)
    m[10:90, 10:14] = True
    m[10:14, 10:90] = True
    m[86:90, 10:90] = True  # a "C": low solidity, not elongated
    (r,) = mask_to_boxes(m)
    assert r.solidity < 0.6 and r.shape == "irregular"


def test_brightness_and_colour_against_the_surround():
    img = np.full((100, 100, 3), 180, np.uint8)
    m = np.zeros((100, 100), bool)
    m[40:60, 40:60] = True
    img[m] = (40, 40, 40)
    img[10:20, 10:20] = (200, 30, 30)  # a red patch
    m2 = np.zeros((100, 100), bool)
    m2[10:20, 10:20] = True
    facts = describe_regions(img, m | m2, MaskRules(merge_frac=0.0))
    assert facts["count"] == 2
    dark, red = facts["regions"]  # largest first
    assert dark["brightness"] == "darker" and dark["brightness_delta"] < -100 and not dark["colour_differs"]
    assert red["colour_differs"] and red["colour"] == "red" and red["surround_colour"] == "grey"
    assert facts["area_fraction"] == pytest.approx((400 + 100) / 10000)
    assert facts["size"] == "large"  # 5% is the lower limit of "large"


def test_colour_names():
    assert colour_name((250, 250, 250)) == "white"
    assert colour_name((10, 10, 10)) == "black"
    assert colour_name((30, 200, 40)) == "green"
    assert colour_name((30, 40, 220)) == "blue"
    assert colour_name((120, 60, 20)) == "brown"


def test_load_mask_checks_size_and_file(tmp_path):
    p = tmp_path / "m.png"
    arr = np.zeros((20, 30), np.uint8)
    arr[5:10, 5:10] = 255
    Image.fromarray(arr).save(p)
    m = load_mask(p, (30, 20))
    assert m.dtype == bool and m.sum() == 25
    with pytest.raises(MaskError, match="m.png: mask is 30x20 but its image is 40x20"):
        load_mask(p, (40, 20))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"garbage")
    with pytest.raises(MaskError, match="bad.png: unreadable mask"):
        load_mask(bad)
    with pytest.raises(MaskError, match="no such mask file"):
        load_mask(tmp_path / "missing.png")
    # 0/1 masks binarise too
    Image.fromarray((arr > 0).astype(np.uint8)).save(p)
    assert load_mask(p).sum() == 25
