"""End to end with the real vision weights: the baseline finds a painted defect and boxes it."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from PIL import Image

from adcopilot import Copilot
from adcopilot.geometry import box_iou


def _pair():
    from skimage import data

    ref = data.brick()  # real 512x512 texture
    query = ref.copy()
    query[200:240, 300:340] = 250
    return ref, query


def test_baseline_finds_and_boxes_a_defect():
    ref, query = _pair()
    cp = Copilot.load("baseline")
    r = cp.inspect(query, [ref])
    assert r.verdict == "anomalous"
    assert r.boxes and box_iou(r.boxes[0].bbox_2d, [300, 200, 340, 240]) > 0.4
    clean = cp.inspect(ref, [ref])
    assert clean.verdict == "normal" and clean.score < r.score
    json.loads(r.to_json())


def test_cli_json_and_save(tmp_path):
    ref, query = _pair()
    Image.fromarray(ref).save(tmp_path / "ref.png")
    Image.fromarray(np.stack([query] * 3, -1)).save(tmp_path / "q.png")
    out = tmp_path / "ann.png"
    p = subprocess.run(
        [sys.executable, "-m", "adcopilot", "inspect", str(tmp_path / "q.png"), "--ref", str(tmp_path / "ref.png"),
         "--model", "baseline", "--json", "--save", str(out)],
        capture_output=True, text=True,
    )
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["verdict"] == "anomalous" and d["boxes"][0]["bbox_2d"] and "threshold" in d
    assert Image.open(out).size == (512, 512)


def test_cli_refocus_softens_the_reference_for_an_out_of_focus_shot_of_a_real_texture(tmp_path):
    import cv2

    from adcopilot.model.focus import BLURRED_RATIO, SOFT_RATIO, sharpness

    ref, _ = _pair()
    shot = cv2.GaussianBlur(ref, (0, 0), 3.0)  # the same brick wall out of focus, 512 px (sigma 1.5 px at 256)
    small = [np.asarray(Image.fromarray(a).convert("RGB").resize((256, 256)), np.float32) / 255 for a in (shot, ref)]
    ratio = sharpness(small[0]) / sharpness(small[1])
    assert BLURRED_RATIO <= ratio < SOFT_RATIO, ratio  # mildly soft: not what the image check calls blurred
    Image.fromarray(ref).save(tmp_path / "ref.png")
    Image.fromarray(shot).save(tmp_path / "shot.png")

    def inspect(*extra: str) -> dict:
        p = subprocess.run([sys.executable, "-m", "adcopilot", "inspect", str(tmp_path / "shot.png"), "--ref",
                            str(tmp_path / "ref.png"), "--json", *extra], capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)

    plain, refocused = inspect(), inspect("--refocus")
    assert not any("softer" in n for n in plain.get("notes", []))
    assert any("softer than its references" in n for n in refocused.get("notes", []))
    assert refocused["score"] < plain["score"]  # the texture the shot lost no longer reads as a defect
