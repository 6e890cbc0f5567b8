"""Several references: the query is registered onto the first, and from ``COMMON_FRAME_FROM`` on the other
references are brought into the first one's frame, on every path (``Copilot.inspect``, the staged service path of
``inspect_batch``, the language model's visual inputs)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from adcopilot.inputs import cache_key, frame_key
from adcopilot.model import inspection
from adcopilot.model.inspection import in_common_frame, into_frame
from adcopilot.registration import register


def _scene(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros((96, 96, 3), np.float32)
    for _ in range(12):
        x, y = rng.integers(12, 84, 2)
        cv2.circle(img, (int(x), int(y)), int(rng.integers(4, 9)), tuple(float(v) for v in rng.random(3)), -1)
    return (cv2.GaussianBlur(img, (0, 0), 1.0) * 255).astype(np.uint8)


def _moved(img: np.ndarray, dy: int, dx: int) -> np.ndarray:
    return np.ascontiguousarray(np.roll(img, (dy, dx), axis=(0, 1)))


def test_the_rule():
    assert not in_common_frame(True, 1) and not in_common_frame(True, 2)
    assert in_common_frame(True, 3) and in_common_frame(True, 5) and not in_common_frame(False, 3)


def test_into_frame_moves_a_shifted_reference_back():
    first = _scene(0).astype(np.float32) / 255.0
    shifted = _moved(_scene(0), 4, -3).astype(np.float32) / 255.0
    moved = into_frame(shifted, first)
    inner = (slice(10, -10), slice(10, -10))
    assert np.abs(moved[inner] - first[inner]).mean() < 0.25 * np.abs(shifted[inner] - first[inner]).mean()
    assert into_frame(first, first) is first  # nothing to correct: the reference itself, no copy
    assert register(moved, first).method in ("identity", "ecc")


def test_three_references_share_the_first_ones_frame(nano_copilot):
    copilot = nano_copilot
    ref = _scene(0)
    refs = [ref, _moved(ref, 5, 3), _moved(ref, -4, 6)]  # one product placed three ways
    query = _moved(ref, 3, -4)
    framed = copilot._references(refs)
    own = copilot._plain_arrays(refs)
    inner = (slice(12, -12), slice(12, -12))
    for (arr, _), plain in zip(framed[1:], own[1:], strict=True):  # both moved back onto the first
        assert np.abs(arr[inner] - own[0][inner]).mean() < 0.3 * np.abs(plain[inner] - own[0][inner]).mean()
    three = copilot.inspect(query, refs)
    assert three.registration["method"] != "identity"  # the query too, whatever the count
    # the same pair as taken: every image compared unregistered scores higher (misaligned parts look different)
    as_taken = type(copilot)(copilot.detector, registration=False).inspect(query, refs)
    assert three.score < as_taken.score
    staged = copilot.inspect_batch([(query, refs), (query, refs[:2])])  # the service's path
    assert staged[0].score == pytest.approx(three.score, abs=1e-5)
    assert staged[1].score == pytest.approx(copilot.inspect(query, refs[:2]).score, abs=1e-5)
    # the pair entries are cached and forgotten with either side
    assert copilot.cached_references >= 5
    copilot.forget_references([refs[0]])
    assert not [k for k in copilot._cache if "@" in k]


def test_a_query_registration_cannot_place_is_compared_with_the_references_as_taken(nano_copilot):
    """The references in the first one's frame serve a query registered there; one left where it was (the
    identity fallback) is compared with the references as they were taken, on every path."""
    copilot = nano_copilot
    ref = _scene(3)
    refs = [ref, _moved(ref, 6, 2), _moved(ref, -2, 7)]
    stranger = np.full((96, 96, 3), 128, np.uint8)  # a blank frame: nothing to register
    placed = copilot.inspect(stranger, refs)
    assert placed.registration["method"] == "identity"
    as_taken = type(copilot)(copilot.detector, registration=False).inspect(stranger, refs)
    assert placed.score == pytest.approx(as_taken.score, abs=1e-6)
    in_frame = inspection.inspect_arrays(copilot.detector, copilot._plain_arrays([stranger])[0],
                                         copilot._references(refs))
    assert in_frame.score != pytest.approx(placed.score, abs=1e-6)  # the frame would have changed the comparison
    assert copilot.inspect_batch([(stranger, refs)])[0].score == pytest.approx(placed.score, abs=1e-5)


def test_frame_keys():
    a, b = _scene(0), _scene(1)
    assert frame_key(a, None, 64) == cache_key(a, 64)
    assert frame_key(a, b, 64) == f"{cache_key(a, 64)}@{cache_key(b, 64)}" != frame_key(b, a, 64)
    assert frame_key(object(), b, 64) is None and frame_key(a, object(), 64) is None  # cannot be keyed: not cached
