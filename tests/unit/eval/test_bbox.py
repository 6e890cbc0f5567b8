"""MMAD-BBox: tolerant box parsing, union IoU, the summary rules, ground truth from masks."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from adcopilot.eval.bbox import (
    BBoxRecord,
    bbox_prompt,
    gt_boxes_from_mask,
    parse_box_text,
    parse_boxes,
    summarize_bbox,
    union_area,
    union_iou,
)


@pytest.mark.parametrize(
    ("text", "boxes"),
    [
        ('[{"bbox_2d": [10, 20, 30, 40], "label": "crack"}]', [[10, 20, 30, 40]]),
        ('Sure!\n```json\n[{"bbox_2d": [10, 20, 30, 40], "label": "crack"}]\n```\nDone.', [[10, 20, 30, 40]]),
        ("[{'bbox_2d': [10, 20, 30, 40], 'label': 'crack'},]", [[10, 20, 30, 40]]),  # quotes, trailing comma
        ('[{"bbox_2d": [1, 2, 3, 4]}, {"bbox_2d": [5, 6, 7, 8], "label": "cut"', [[1, 2, 3, 4], [5, 6, 7, 8]]),  # truncated
        ('{"bbox_2d": [1.5, 2, 3, 4], "label": "x"}', [[1.5, 2, 3, 4]]),
        ('{"description": "a cap", "defect_details": [{"bbox_2d": [1, 2, 3, 4], "label": "x"}]}', [[1, 2, 3, 4]]),
        ("The defect is at [12, 14, 40, 41].", [[12, 14, 40, 41]]),
        ('bbox_2d": [5, 6, 7, 8] and "bbox_2d": [1, 1, 2, 2', [[5, 6, 7, 8]]),
        ("```json\n[]\n```", []),
        ("[]", []),
        ("There is no defect.", None),
        ("", None),
        ('{"answer": "none"}', None),
    ],
)
def test_parse_box_text(text, boxes):
    assert parse_box_text(text) == boxes


def test_coordinates_mapped_to_query_pixels():
    rel = parse_boxes('[{"bbox_2d": [0, 0, 500, 500]}]', (200, 100), coords="relative1000")
    assert rel == [[0.0, 0.0, 100.0, 50.0]]
    framed = parse_boxes('[{"bbox_2d": [10, 10, 50, 60]}]', (200, 200), frame=(100, 100))
    assert framed == [[20.0, 20.0, 100.0, 120.0]]
    clipped = parse_boxes('[{"bbox_2d": [90, 80, -5, 300]}]', (100, 100))  # reversed, out of the image
    assert clipped == [[0.0, 80.0, 90.0, 100.0]]


def test_union_area_and_iou_hand_computed():
    assert union_area([[0, 0, 10, 10], [5, 5, 15, 15]]) == 175.0
    assert union_area([[0, 0, 10, 10], [0, 0, 10, 10]]) == 100.0
    assert union_iou([[0, 0, 10, 10]], [[5, 0, 15, 10]]) == pytest.approx(50 / 150)
    assert union_iou([[0, 0, 5, 10], [5, 0, 10, 10]], [[0, 0, 10, 10]]) == pytest.approx(1.0)
    assert union_iou([[0, 0, 10, 10], [5, 5, 15, 15]], [[0, 0, 10, 10]]) == pytest.approx(100 / 175)
    assert union_iou([], [[0, 0, 1, 1]]) == 0.0


def test_summary_rules():
    gt = [[0.0, 0.0, 10.0, 10.0]]
    recs = [
        BBoxRecord("A/c/bad/0.png", '[{"bbox_2d": [0, 0, 10, 10]}]', gt, (20, 20)),  # IoU 1
        BBoxRecord("A/c/bad/1.png", '[{"bbox_2d": [5, 0, 15, 10]}]', gt, (20, 20)),  # IoU 1/3
        BBoxRecord("A/c/bad/2.png", "no idea", gt, (20, 20)),  # unparsable: 0, kept
        BBoxRecord("A/c/bad/3.png", "[]", gt, (20, 20)),  # empty: 0, kept
        BBoxRecord("B/c/bad/4.png", "", gt, (20, 20), error="q.png: no such file"),  # failed: 0, kept
        BBoxRecord("A/c/good/5.png", '[{"bbox_2d": [1, 1, 2, 2]}]', [], (20, 20)),  # false alarm
        BBoxRecord("A/c/good/6.png", "[]", [], (20, 20)),
    ]
    s = summarize_bbox(recs)
    o = s["overall"]
    assert o["anomalous_images"] == 5
    assert o["mIoU"] == pytest.approx(100 * (1 + 1 / 3) / 5)
    assert o["acc@0.1"] == pytest.approx(40.0) and o["acc@0.3"] == pytest.approx(40.0)
    assert o["acc@0.5"] == pytest.approx(20.0)
    assert (o["unparsable"], o["empty"]) == (2, 1)
    assert (o["normal_images"], o["false_alarms"], o["false_alarm_rate"]) == (2, 1, 50.0)
    assert s["datasets"]["B"]["mIoU"] == 0.0


def test_gt_boxes_from_mask(tmp_path):
    m = np.zeros((40, 80), np.uint8)
    m[5:15, 10:30] = 255
    m[30:35, 60:70] = 255
    Image.fromarray(m).save(tmp_path / "m.png")
    boxes = gt_boxes_from_mask(tmp_path / "m.png")
    assert sorted(boxes) == [[10, 5, 30, 15], [60, 30, 70, 35]]
    scaled = gt_boxes_from_mask(tmp_path / "m.png", (160, 80))  # the image is twice the mask
    assert sorted(scaled) == [[20, 10, 60, 30], [120, 60, 140, 70]]


def test_prompt_mentions_the_references():
    assert bbox_prompt(1).startswith("The first image is a normal sample. The last image is the query sample.")
    assert "The first 2 images are normal samples." in bbox_prompt(2)
    assert '"bbox_2d"' in bbox_prompt(1)


@pytest.mark.parametrize(
    ("text", "boxes"),
    [
        # Truncated nested replies: only the repaired JSON holds the second box (the fragments' regexes need a "]").
        ('{"defects": [{"bbox": [1, 2, 3, 4]}, {"box": [5, 6, 7, 8', [[1, 2, 3, 4], [5, 6, 7, 8]]),
        ('[{"bbox_2d": [1, 2, 3, 4], "label": "a"}, {"bbox_2d": [5, 6, 7, 8', [[1, 2, 3, 4], [5, 6, 7, 8]]),
        # An explicit empty answer inside an object, with the JSON faults the repair mends.
        ('{"bbox_2d": []}', []),
        ("{'defects': []}", []),
        ('{"defects": [],}', []),
        ('Boxes: {"defects": []}', []),
        ('{"note": {"ok": true}, "defects": []}', []),
        # A box key wins over the object's other number lists, whichever comes first.
        *((f'{{"size": [640, 480, 640, 480], "{key}": [1, 2, 3, 4]}}', [[1, 2, 3, 4]]) for key in ("bbox_2d", "bbox", "box")),
        # Only the brackets still open are closed, innermost first.
        ('{"note": [1], "defects": {"box": [5, 6, 7, 8', [[5, 6, 7, 8]]),
        # A stray closing bracket before the JSON does not stop the repair.
        ("Defects] [[1, 2, 3, 4], [5, 6, 7, 8", [[1, 2, 3, 4], [5, 6, 7, 8]]),
        # Four boxes are four boxes, not one box of four objects.
        ("[" + ", ".join(f'{{"bbox_2d": [{i}, 0, {i + 1}, 9]}}' for i in range(4)) + "]",
         [[i, 0, i + 1, 9] for i in range(4)]),
        # Numbers that are not a box are no answer, not an empty one.
        ("The image is [640, 480] pixels.", None),
        # Without readable JSON: a keyed box wins over bare number lists; a keyed list of three is no box.
        ('Defect {at} "bbox_2d": [1, 2, 3, 4]; the image is [0, 0, 640, 480].', [[1, 2, 3, 4]]),
        ('Defect {at} "bbox": [1, 2, 3] near [5, 6, 7, 8].', [[5, 6, 7, 8]]),
        ("At {x}: [12, 14, 40, 41]", [[12, 14, 40, 41]]),
    ],
)
def test_parse_box_text_reads_json_first_then_fragments(text, boxes):
    assert parse_box_text(text) == boxes


def test_prompt_wording_follows_the_number_of_references():
    one, three = bbox_prompt(1), bbox_prompt(3)
    assert "Compare the query with the normal sample and locate every defect in the query image." in one
    assert three.startswith("The first 3 images are normal samples. The last image is the query sample.")
    assert "Compare the query with the normal samples and locate every defect in the query image." in three
