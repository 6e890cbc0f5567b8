"""JPEG queries: the quality read from the file's quantization table, and a strongly compressed query compared
with its references after both are smoothed alike (in both inspection paths, cached apart, said in the notes)."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from adcopilot.api import Copilot
from adcopilot.imaging import (
    DEBLOCK_BELOW,
    DEBLOCK_SIGMA,
    JPEG_QUALITY,
    deblock_sigma,
    jpeg_quality,
    load_image,
)
from adcopilot.model.baseline import NearestPatchDetector
from adcopilot.model.vision import load_vision_tower


def _scene(seed: int = 0, size: int = 96) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.random((size, size, 3)).astype(np.float32), (0, 0), 2)
    return (255 * (img - img.min()) / (img.max() - img.min())).astype(np.uint8)


def _jpeg(arr: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


@pytest.fixture(scope="module")
def copilot() -> Copilot:
    torch.manual_seed(0)
    return Copilot(NearestPatchDetector(tower=load_vision_tower(pretrained=False), image_size=64), model_name="tiny")


@pytest.mark.parametrize("quality", [30, 50, 75, 89, 90, 95])
def test_the_quality_is_read_from_the_quantization_table(quality):
    data = _jpeg(_scene(), quality)
    assert jpeg_quality(Image.open(io.BytesIO(data))) == quality
    img = load_image(data)
    assert img.info[JPEG_QUALITY] == quality
    assert load_image(Image.open(io.BytesIO(data))).info[JPEG_QUALITY] == quality  # an opened file, converted
    assert load_image(img).info[JPEG_QUALITY] == quality  # and an image this project loaded
    assert deblock_sigma(img) == (DEBLOCK_SIGMA if quality < DEBLOCK_BELOW else 0.0)


def test_lossless_images_and_pixels_have_no_quality():
    buf = io.BytesIO()
    Image.fromarray(_scene()).save(buf, "PNG")
    for src in (buf.getvalue(), _scene()):
        img = load_image(src)
        assert jpeg_quality(img) is None and JPEG_QUALITY not in img.info and deblock_sigma(img) == 0.0


def test_a_jpeg_decoded_at_a_reduced_scale_is_not_smoothed(tmp_path):
    path = tmp_path / "frame.jpg"
    Image.fromarray(_scene(size=1200)).save(path, quality=50)
    assert deblock_sigma(load_image(path)) == DEBLOCK_SIGMA
    assert deblock_sigma(load_image(path, draft=256)) == 0.0  # its blocks are averaged by the reduced decoding


def test_a_compressed_query_and_its_references_are_smoothed_alike(copilot):
    ref, query = _scene(0), _scene(0).copy()
    query[30:50, 40:60] = 255
    data = _jpeg(query, 50)
    decoded = np.asarray(load_image(data))
    smooth = [cv2.GaussianBlur(a, (0, 0), DEBLOCK_SIGMA) for a in (decoded, ref)]
    got = copilot.inspect(data, [ref])
    assert got.score == pytest.approx(copilot.inspect(smooth[0], [smooth[1]]).score, abs=1e-6)
    assert got.score != pytest.approx(copilot.inspect(decoded, [ref]).score, abs=1e-4)
    assert any("JPEG of quality about 50" in n for n in got.notes)
    # The staged path (the service's batches) compares the same arrays.
    assert copilot.inspect_batch([(data, [ref])])[0].score == pytest.approx(got.score, abs=1e-5)
    # The smoothed reference is cached apart: a lossless query of the same reference still sees it sharp.
    fresh = Copilot(copilot.detector, model_name="tiny")
    assert copilot.inspect(query, [ref]).score == pytest.approx(fresh.inspect(query, [ref]).score, abs=1e-6)
    # Turned off, the query's pixels are compared as they are.
    off = Copilot(copilot.detector, model_name="tiny", deblock=False)
    plain = off.inspect(data, [ref])
    assert plain.score == pytest.approx(copilot.inspect(decoded, [ref]).score, abs=1e-6) and not plain.notes


def test_a_lightly_compressed_query_is_compared_as_it_is(copilot):
    ref = _scene(1)
    data = _jpeg(ref, 95)
    got = copilot.inspect(data, [ref])
    assert got.score == pytest.approx(copilot.inspect(np.asarray(load_image(data)), [ref]).score, abs=1e-6)
    assert not any("JPEG" in n for n in got.notes)
