"""The reference-set check: each reference against the others, as a query is checked; a bad reference is named
in every result's notes (both inspection paths) and logged once per set; the verdict is unchanged."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from adcopilot.api import Copilot
from adcopilot.model.baseline import NearestPatchDetector
from adcopilot.model.reference_check import reference_notes, reference_reasons
from adcopilot.model.sanity import BLANK, BLURRED, NOT_PRODUCT, OVEREXPOSED, CheckRules, image_profile
from adcopilot.model.vision import load_vision_tower

SIZE = 64


@pytest.fixture(scope="module")
def detector() -> NearestPatchDetector:
    torch.manual_seed(0)
    return NearestPatchDetector(tower=load_vision_tower(pretrained=False).eval(), image_size=SIZE)


@pytest.fixture
def shots(texture) -> list[np.ndarray]:
    """Three (64, 64, 3) float shots of one textured product, each shifted a little."""
    img = cv2.resize(texture, (SIZE, SIZE), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    base = 0.1 + 0.8 * img
    return [np.ascontiguousarray(np.roll(base, s, axis=1)) for s in (0, 2, 4)]


def _reasons(detector, arrays, rules=None):
    entries = [(a, detector.encode_reference(a)) for a in arrays]
    return reference_reasons(detector, entries, [image_profile(None, a) for a in arrays], rules or CheckRules())


def test_normal_shots_pass_and_a_bad_frame_is_blamed_alone(detector, shots):
    assert _reasons(detector, shots) == [None, None, None]
    assert _reasons(detector, shots[:1]) == [None]
    black = np.zeros_like(shots[0])
    assert _reasons(detector, [*shots[:2], black]) == [None, None, BLANK]  # the others' product test is dropped
    assert _reasons(detector, [black]) == [BLANK]  # one reference: the absolute test
    bright = np.clip(shots[2] * 1.5 + 0.4, 0, 1).astype(np.float32)  # much of it saturated, some contrast left
    assert _reasons(detector, [*shots[:2], bright]) == [None, None, OVEREXPOSED]
    blurred = cv2.GaussianBlur(shots[2], (0, 0), 4)
    assert _reasons(detector, [*shots[:2], blurred])[2] == BLURRED


def test_one_sharp_noise_frame_does_not_make_the_good_ones_look_blurred(detector, shots):
    noise = np.random.default_rng(1).random(shots[0].shape, dtype=np.float32)  # far sharper than the product
    t = [detector.reference_tokens(detector.encode_reference(a)) for a in (shots[0], shots[1], noise)]
    near = float(torch.quantile(1 - (t[0] @ t[1].T).max(1).values, 0.25))
    far = float(torch.quantile(1 - (t[2] @ torch.cat(t[:2]).T).max(1).values, 0.25))
    assert far > near  # the random tower's features still tell noise from the product
    rules = CheckRules(other_patches=(near + far) / 2, far_patches=2.0)
    # Against the two others' median (their mean) the good ones were "blurred"; against the set's, they pass.
    assert _reasons(detector, [*shots[:2], noise], rules) == [None, None, NOT_PRODUCT]
    assert _reasons(detector, [*shots[:2], noise])[:2] == [None, None]
    pair = _reasons(detector, [shots[0], noise], rules)
    assert all(r is not None for r in pair)  # two apart: which one is wrong cannot be told, one note names both


def test_the_product_test_reads_each_reference_against_the_others(detector, shots):
    everything_far = CheckRules(other_patches=0.0, far_patches=2.0)  # any distance is "another product"
    assert _reasons(detector, shots, everything_far) == [NOT_PRODUCT] * 3
    assert _reasons(detector, shots[:2], everything_far) == [NOT_PRODUCT] * 2
    # Blank frames are left out of the others' product test: the one good shot has no other left to be judged by.
    blanks = [np.zeros_like(shots[0]), np.full_like(shots[0], 0.5)]
    assert _reasons(detector, [shots[0], *blanks], everything_far) == [None, BLANK, BLANK]
    assert _reasons(detector, [*shots[:2], *blanks], everything_far) == [NOT_PRODUCT, NOT_PRODUCT, BLANK, BLANK]


class _NoTokens(NearestPatchDetector):
    """A detector whose encodings do not expose their patch features (the check inspects instead)."""

    def reference_tokens(self, reference):
        return None


def test_a_detector_without_tokens_is_checked_through_inspections(detector, shots):
    plain = _NoTokens(tower=detector.tower, image_size=SIZE)
    black = np.zeros_like(shots[0])
    assert _reasons(plain, [*shots[:2], black]) == _reasons(detector, [*shots[:2], black]) == [None, None, BLANK]
    assert _reasons(plain, shots) == [None, None, None]
    everything_far = CheckRules(other_patches=0.0, far_patches=2.0)
    assert _reasons(plain, shots, everything_far) == [NOT_PRODUCT] * 3


def test_notes_name_the_reference_or_both_of_a_pair():
    assert reference_notes(["a.png", "b.png"], [None, None]) == []
    pair = reference_notes(["a.png", "b.png"], [NOT_PRODUCT, NOT_PRODUCT])
    assert len(pair) == 1 and pair[0].startswith("the reference a.png (not the reference product) and the reference "
                                                 "b.png (not the reference product) do not look like one product")
    unnamed = reference_notes(["reference 1", "reference 2", "reference 3"], [None, None, BLANK])  # in-memory images
    assert unnamed[0].startswith("reference 3 is unlike the other references (blank image)")
    three = reference_notes(["a.png", "b.png", "c.png"], [None, BLANK, None])
    assert three == ["the reference b.png is unlike the other references (blank image): remove it, or verdicts "
                     "compared with it may be wrong"]
    one = reference_notes(["a.png"], [BLANK])
    assert len(one) == 1 and one[0].startswith("the reference a.png is a blank image (no contrast)")


def test_inspections_carry_the_note_logged_once_per_set(detector, shots, tmp_path, caplog):
    paths = []
    for i, a in enumerate([*shots[:2], np.zeros_like(shots[0])]):
        paths.append(tmp_path / f"ref{i}.png")
        Image.fromarray((a * 255).astype(np.uint8)).save(paths[-1])
    query = (shots[2] * 255).astype(np.uint8)
    cp = Copilot(detector)
    caplog.set_level(logging.WARNING, logger="adcopilot.api")
    whole = cp.inspect(query, paths)
    staged = cp.inspect_batch([(query, paths)])[0]
    for r in (whole, staged):
        assert r.notes == [f"the reference {paths[2]} is unlike the other references (blank image): remove it, or "
                           "verdicts compared with it may be wrong"]
        assert r.to_dict()["notes"] == r.notes
    assert whole.verdict == staged.verdict and whole.score == pytest.approx(staged.score, abs=1e-5)
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1  # the set is checked once
    assert cp.inspect(query, paths[:2]).notes == []  # the good two alone
    cp.forget_references([paths[2]])
    cp.inspect(query, paths)
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2  # forgotten: checked again


def test_an_elongated_reference_is_noted_and_the_check_can_be_off(detector, shots, tmp_path):
    strip = tmp_path / "strip.png"
    Image.fromarray((np.tile(shots[0], (1, 6, 1)) * 255).astype(np.uint8)).save(strip)
    query = (shots[1] * 255).astype(np.uint8)
    # (Squeezed six times, the strip is also far sharper than the query: refocusing is off to see this note alone.)
    notes = Copilot(detector, refocus=False).inspect(query, [strip]).notes
    assert notes == [f"the reference {strip} is 384 x 64 (6.0:1): the model sees it squeezed to 64 x 64; use "
                     "references shaped as the queries, of about square shape"]
    black = np.zeros((SIZE, SIZE, 3), np.uint8)
    assert Copilot(detector, image_check=False).inspect(query, [black]).notes == []
