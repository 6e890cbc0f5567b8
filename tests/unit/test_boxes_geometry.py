"""Boxes from anomaly maps, regions on MMAD's 3x3 grid, IoU."""

from __future__ import annotations

import numpy as np

from adcopilot.geometry import box_iou, region_name
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
