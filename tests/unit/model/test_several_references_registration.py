"""Registration onto the first of one or two references; with three or more the query is compared as it was
taken, on every path (``Copilot.inspect``, the staged service path of ``inspect_batch``)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from adcopilot.model import inspection
from adcopilot.model.inspection import registers


def _scene(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros((96, 96, 3), np.float32)
    for _ in range(12):
        x, y = rng.integers(12, 84, 2)
        cv2.circle(img, (int(x), int(y)), int(rng.integers(4, 9)), tuple(float(v) for v in rng.random(3)), -1)
    return (cv2.GaussianBlur(img, (0, 0), 1.0) * 255).astype(np.uint8)


def test_the_rule():
    assert registers(True, 1) and registers(True, 2) and not registers(True, 3) and not registers(False, 1)


def test_one_or_two_references_register_three_do_not(nano_copilot, monkeypatch):
    copilot = nano_copilot
    ref, other, third = _scene(0), _scene(1), _scene(2)
    shifted = np.ascontiguousarray(np.roll(ref, (3, 4), axis=(0, 1)))
    two = copilot.inspect(shifted, [ref, other])
    assert two.registration["method"] != "identity"
    three = copilot.inspect(shifted, [ref, other, third])
    assert three.registration["method"] == "identity"
    staged = copilot.inspect_batch([(shifted, [ref, other]), (shifted, [ref, other, third])])  # the service's path
    assert [r.registration["method"] for r in staged] == [two.registration["method"], "identity"]
    assert staged[1].score == pytest.approx(three.score, abs=1e-5)
    monkeypatch.setattr(inspection, "REGISTER_UP_TO", 5)
    assert copilot.inspect(shifted, [ref, other, third]).registration["method"] != "identity"
