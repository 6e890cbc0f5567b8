"""Boxes from anomaly maps, regions on MMAD's 3x3 grid, IoU."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from adcopilot.geometry import box_iou, region_name
from adcopilot.model import boxes as boxes_module
from adcopilot.model.boxes import BoxRules, boxes_from_map, deviation_map


def test_single_blob_tight_box():
    m = np.zeros((100, 100), np.float32)
    m[10:20, 30:50] = 1.0
    boxes = boxes_from_map(m, 0.5)
    assert boxes == [([30, 10, 50, 20], 1.0)]


def test_nearby_pieces_merge_far_ones_do_not():
    m = np.zeros((200, 200), np.float32)
    m[10:20, 10:20] = 0.9
    m[10:20, 23:30] = 0.8  # 3 px gap: merged
    m[150:160, 150:170] = 0.7  # far away
    boxes = boxes_from_map(m, 0.5, BoxRules(merge_frac=0.03))
    assert len(boxes) == 2
    assert boxes[0][0] == [10, 10, 30, 20]
    assert boxes[1][0] == [150, 150, 170, 160]


def test_specks_dropped_and_empty():
    m = np.zeros((100, 100), np.float32)
    m[50, 50] = 1.0
    assert boxes_from_map(m, 0.5, BoxRules(min_pixels=4)) == []
    assert boxes_from_map(np.zeros((10, 10), np.float32), 0.5) == []


def test_sorted_by_score_and_capped():
    m = np.zeros((300, 300), np.float32)
    for i in range(5):
        m[10 + 60 * i : 20 + 60 * i, 10:20] = 0.5 + 0.1 * i
    boxes = boxes_from_map(m, 0.4, BoxRules(max_boxes=3))
    assert [round(s, 2) for _, s in boxes] == [0.9, 0.8, 0.7]


def test_region_names():
    assert region_name([0, 0, 10, 10], 300, 300) == "top left"
    assert region_name([140, 140, 160, 160], 300, 300) == "center"
    assert region_name([290, 290, 300, 300], 300, 300) == "bottom right"
    assert region_name([140, 0, 160, 10], 300, 300) == "top"


def test_iou():
    assert box_iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    assert box_iou([0, 0, 10, 10], [10, 10, 20, 20]) == 0.0
    assert abs(box_iou([0, 0, 10, 10], [5, 0, 15, 10]) - 1 / 3) < 1e-9


def test_box_score_is_the_maximum_of_the_map_inside_it():
    # A ramp blob (0.55 .. 0.95, mean 0.75) and a flat one at 0.8: by the maximum the ramp ranks first.
    m = np.zeros((100, 100), np.float32)
    m[10:20, 10:50] = np.linspace(0.55, 0.95, 40, dtype=np.float32)[None, :]
    m[60:70, 60:80] = 0.8
    boxes = boxes_from_map(m, 0.5)
    assert [b for b, _ in boxes] == [[10, 10, 50, 20], [60, 60, 80, 70]]
    assert [round(s, 4) for _, s in boxes] == [0.95, 0.8]


def test_thresholded_pixels_bound_the_box_and_the_threshold_is_inclusive():
    m = np.zeros((100, 100), np.float32)
    m[30:40, 30:40] = 0.5  # exactly at the threshold: anomalous
    m[41:43, 30:40] = 0.3  # merged by the dilation's reach but below the threshold: outside the box
    assert boxes_from_map(m, 0.5) == [([30, 30, 40, 40], 0.5)]


def test_a_component_exactly_at_the_minimum_area_is_kept():
    m = np.zeros((100, 100), np.float32)
    m[50:52, 50:52] = 0.75  # 4 pixels
    assert boxes_from_map(m, 0.5, BoxRules(min_pixels=4, min_area_frac=0.0)) == [([50, 50, 52, 52], 0.75)]
    assert boxes_from_map(m, 0.5, BoxRules(min_pixels=5, min_area_frac=0.0)) == []
    # min_area_frac of a 100x100 image: 0.0005 -> 5 pixels, above min_pixels
    assert boxes_from_map(m, 0.5, BoxRules(min_pixels=4, min_area_frac=0.0005)) == []


def test_the_merge_reach_scales_with_the_image_diagonal():
    # merge_frac 0.03 of the diagonal: about 0.85 px at 20x20 (no dilation), 2 px at 47x47.
    def two_pieces(side: int) -> np.ndarray:
        m = np.zeros((side, side), np.float32)
        m[2:6, 2:6] = 0.75
        m[2:6, 7:11] = 0.625  # one pixel apart
        return m

    assert [b for b, _ in boxes_from_map(two_pieces(20), 0.5, BoxRules(min_pixels=1))] == [
        [2, 2, 6, 6], [7, 2, 11, 6]
    ]
    assert boxes_from_map(two_pieces(47), 0.5, BoxRules(min_pixels=1)) == [([2, 2, 11, 6], 0.75)]


def test_minimum_area_is_a_share_of_the_whole_image():
    # 100 x 400 pixels: 0.0005 of them is 20; a 12-pixel blob is a speck, a 24-pixel one is not.
    m = np.zeros((100, 400), np.float32)
    m[10:13, 10:14] = 0.75
    m[50:54, 300:306] = 0.625
    assert boxes_from_map(m, 0.5, BoxRules(min_pixels=4, min_area_frac=0.0005)) == [([300, 50, 306, 54], 0.625)]


def test_a_speck_does_not_hide_the_components_after_it():
    m = np.zeros((100, 100), np.float32)
    m[1, 1] = 0.9  # first in raster order, dropped
    m[60:70, 60:70] = 0.625
    assert boxes_from_map(m, 0.5, BoxRules(min_pixels=4)) == [([60, 60, 70, 70], 0.625)]


def test_no_minimum_area_keeps_every_component():
    m = np.zeros((100, 100), np.float32)
    m[1, 1] = 0.75
    m[60:62, 60:62] = 0.625
    rules = BoxRules(min_pixels=0, min_area_frac=0.0)
    assert boxes_from_map(m, 0.5, rules) == [([1, 1, 2, 2], 0.75), ([60, 60, 62, 62], 0.625)]
def _dark_band_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A query with a wide dark band whose map fires only at the band's two ends."""
    ref = np.full((200, 200, 3), 0.5, np.float32)
    query = ref.copy()
    query[80:120, 20:180] = 0.1
    amap = np.zeros((200, 200), np.float32)
    amap[80:120, 20:45] = 0.9
    amap[80:120, 155:180] = 0.8
    return query, ref, amap


def test_a_uniform_defect_seen_at_its_ends_is_boxed_whole():
    query, ref, amap = _dark_band_case()
    dev = deviation_map(query, [ref])
    assert dev[100, 100] < -0.6 and abs(dev[10, 10]) < 1e-3  # darker there, the same elsewhere
    boxes = boxes_from_map(amap, 0.5, BoxRules(), dev)
    assert len(boxes) == 1
    assert box_iou(boxes[0][0], [20, 80, 180, 120]) > 0.85
    # Without the deviation (or with growing off) the two ends stay two boxes.
    assert len(boxes_from_map(amap, 0.5, BoxRules())) == 2
    assert len(boxes_from_map(amap, 0.5, BoxRules(grow=False), dev)) == 2


def test_growth_stops_where_no_reference_disagrees():
    query, ref, amap = _dark_band_case()
    other = ref.copy()
    other[80:120, 60:140] = 0.1  # a second reference that is dark in the band's middle
    boxes = boxes_from_map(amap, 0.5, BoxRules(), deviation_map(query, [ref, other]))
    assert len(boxes) == 2


def test_specks_at_the_border_are_dropped_inside_they_are_kept():
    m = np.zeros((300, 300), np.float32)
    m[280:300, 185:194] = 0.9  # 180 px touching the bottom edge
    m[100:120, 100:109] = 0.8  # the same speck inside
    boxes = boxes_from_map(m, 0.5, BoxRules(border_speck_frac=0.003))
    assert [b for b, _ in boxes] == [[100, 100, 109, 120]]
    assert len(boxes_from_map(m, 0.5, BoxRules(border_speck_frac=0.0))) == 2


def test_a_map_above_the_pixel_cap_is_boxed_shrunk_with_the_same_boxes(monkeypatch):
    """A large query's map is boxed shrunk to BOX_WORK_PIXELS and the boxes scaled back: the same boxes as at
    full size to within the scale (a pixel of the shrunk map), the same order and scores."""
    h, w = 2400, 3000  # 7.2 megapixels
    amap = np.zeros((h, w), np.float32)
    amap[300:700, 400:1400] = 0.9  # a wide defect
    amap[1800:1900, 2500:2600] = 0.7  # a small one
    amap = cv2.GaussianBlur(amap, (0, 0), 8)
    deviation = np.where(amap > 0.3, -1.0, 0.0).astype(np.float32)
    shrunk = boxes_from_map(amap, 0.5, deviation=deviation)
    assert h * w > boxes_module.BOX_MAX_PIXELS
    monkeypatch.setattr(boxes_module, "BOX_MAX_PIXELS", h * w)
    full = boxes_from_map(amap, 0.5, deviation=deviation)
    assert len(full) == len(shrunk) == 2
    step = int(np.ceil(np.sqrt(h * w / boxes_module.BOX_WORK_PIXELS))) + 1
    for (a, sa), (b, sb) in zip(full, shrunk, strict=True):
        assert np.abs(np.array(a) - np.array(b)).max() <= step, (a, b)
        assert sa == pytest.approx(sb, abs=0.01)
