"""JPEG images: the quality read from the file's quantization table (also from a reference's header without
decoding it), and a pair with a strongly compressed query or reference compared after both sides are smoothed
alike (in both inspection paths, cached apart, said in the notes)."""

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
    pair_deblock,
    peek_jpeg_quality,
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


@pytest.mark.parametrize("quality", [50, 75, 95])
def test_the_quality_is_peeked_from_the_header_as_loading_reads_it(tmp_path, quality):
    data = _jpeg(_scene(size=1200), quality)
    path = tmp_path / "ref.jpg"
    path.write_bytes(data)
    for src in (data, path, str(path), Image.open(io.BytesIO(data))):
        assert peek_jpeg_quality(src) == quality == load_image(src).info[JPEG_QUALITY]
    # Decoded at a reduced scale (a large frame), as load_image would: no quality to act on.
    assert peek_jpeg_quality(path, draft=256) is None and deblock_sigma(load_image(path, draft=256)) == 0.0
    assert peek_jpeg_quality(path, draft=1200) == quality


def test_nothing_is_peeked_from_pixels_lossless_or_unreadable_sources(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(_scene()).save(buf, "PNG")
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff not really")
    for src in (_scene(), buf.getvalue(), tmp_path / "bad.jpg", tmp_path / "missing.jpg", b""):
        assert peek_jpeg_quality(src) is None


def test_a_compressed_reference_smooths_a_lossless_pair(copilot):
    ref, query = _scene(2, size=64), _scene(2, size=64).copy()  # the model's size: no resize averages the blur away
    query[20:40, 10:30] = 0
    data = _jpeg(ref, 50)
    decoded = np.asarray(load_image(data))
    smooth = [cv2.GaussianBlur(a, (0, 0), DEBLOCK_SIGMA) for a in (query, decoded)]
    assert pair_deblock(load_image(query), [ref, data]) == (DEBLOCK_SIGMA, 50, 1)
    assert pair_deblock(load_image(query), [ref, _jpeg(ref, 95)]) == (0.0, None, None)
    got = copilot.inspect(query, [data])
    assert got.score == pytest.approx(copilot.inspect(smooth[0], [smooth[1]]).score, abs=1e-6)
    assert got.score != pytest.approx(copilot.inspect(query, [decoded]).score, abs=1e-4)
    assert any("reference 1 is a JPEG of quality about 50" in n for n in got.notes)
    assert copilot.inspect_batch([(query, [data])])[0].score == pytest.approx(got.score, abs=1e-5)
    # The same reference as a sharp array is not smoothed (cached apart), nor when turned off.
    assert not any("JPEG" in n for n in copilot.inspect(query, [decoded]).notes)
    off = Copilot(copilot.detector, model_name="tiny", deblock=False)
    assert off.inspect(query, [data]).score == pytest.approx(copilot.inspect(query, [decoded]).score, abs=1e-6)
