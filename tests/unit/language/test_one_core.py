"""The language side builds on the inspection core: on an adapted model it reads inspect's score."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from adcopilot.api import AnsweringCopilot, Copilot
from adcopilot.language.nano_language import NanoLanguage
from adcopilot.language.visual import CELL_STATS
from adcopilot.model.memory import build_memory
from adcopilot.model.nano import NanoDetector


@pytest.fixture
def adapted(detector, pair_images):
    """The tiny detector with a product memory built from jittered copies of the reference."""
    _, r = pair_images
    rng = np.random.default_rng(0)
    goods = [np.clip(r / 255.0 + rng.normal(0, 0.03, r.shape), 0, 1).astype(np.float32) for _ in range(4)]
    memory = build_memory(goods, [""] * 4, detector.patch_features, patches=100)
    return NanoDetector(detector.model, detector.tower, memory=memory, memory_weight=0.5)


@pytest.mark.parametrize("registration", [False, True])
def test_ask_reads_exactly_the_score_inspect_reports(model, detector, adapted, pair_images, registration):
    q, r = pair_images
    lang = NanoLanguage(model=model, detector=adapted, registration=registration)
    cp = AnsweringCopilot(adapted, lang, registration=registration, threshold=0.5)
    result = cp.inspect(q, [r])
    seen = lang.visual(q, [r], cp.threshold)  # what ask / answer_choice / localize feed the language model
    assert seen.score == result.score
    assert torch.equal(seen.cells[:, CELL_STATS - 1], torch.full((9,), result.score))
    # The memory's fusion moves the score: without it the language model would read another one.
    assert abs(Copilot(detector, registration=registration).inspect(q, [r]).score - result.score) > 1e-3
    assert isinstance(cp.ask(q, [r], "What is different?", max_new_tokens=2), str)


def test_the_cells_read_inspects_map_in_the_query_frame(model, adapted, pair_images):
    q, r = pair_images
    lang = NanoLanguage(model=model, detector=adapted, registration=False)
    cp = AnsweringCopilot(adapted, lang, registration=False)
    amap = cp.inspect(q, [r]).anomaly_map  # (64, 64): the query is 64 px, so no resize
    cells = lang.visual(q, [r]).cells
    top_left = float(amap[:22, :22].max())  # adaptive pooling's first of 3 cells over 64 px: [0, 22)
    assert cells[0, 0].item() == pytest.approx(top_left, abs=1e-6)  # the defect square's cell: its peak


def _jpeg(arr, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


@pytest.mark.parametrize("compressed", ["none", "query", "reference"])
def test_ask_reads_inspects_score_for_a_softer_or_compressed_pair(model, adapted, pair_images, compressed):
    q, r = pair_images
    soft = cv2.GaussianBlur(q, (0, 0), 0.35)  # in the band where the reference is softened to match
    # A JPEG of quality 50 on either side: both sides smoothed first.
    query: object = _jpeg(soft, 50) if compressed == "query" else soft
    ref: object = _jpeg(r, 50) if compressed == "reference" else r
    lang = NanoLanguage(model=model, detector=adapted, registration=False)
    cp = AnsweringCopilot(adapted, lang, registration=False, threshold=0.5, refocus=True)
    result = cp.inspect(query, [ref])
    assert any("softer than its references" in n for n in result.notes), result.notes
    assert any("JPEG" in n for n in result.notes) == (compressed != "none")
    assert lang.visual(query, [ref], cp.threshold).score == result.score
    cp.refocus = False  # the language model follows the copilot's setting
    assert lang.encoder.refocus is False


@pytest.mark.parametrize("framing", ["wider", "stretched"])
def test_ask_reads_inspects_score_with_a_reference_framed_unlike_the_query(model, adapted, pair_images, framing):
    q, r = pair_images
    # 96 x 64 against the 64 x 64 query: the same view with more at its sides (cut back), or the view resized.
    ref = np.pad(r, ((0, 0), (16, 16), (0, 0)), mode="reflect") if framing == "wider" else cv2.resize(r, (96, 64))
    lang = NanoLanguage(model=model, detector=adapted, registration=True)
    cp = AnsweringCopilot(adapted, lang, registration=True, threshold=0.5)
    result = cp.inspect(q, [ref])
    assert any("reference 1 is 96 x 64 where the query is 64 x 64" in n for n in result.notes), result.notes
    assert lang.visual(q, [ref], cp.threshold).score == result.score


@pytest.mark.parametrize("large", ["query", "reference"])
def test_ask_reads_inspects_score_for_a_large_jpeg_decoded_at_a_reduced_scale(model, detector, pair_images, large):
    q, r = pair_images
    # 1,024 px against the model's 64: inspect decodes it at 1/8 scale, and so must the language inputs.
    big = _jpeg(cv2.resize(q if large == "query" else r, (1024, 1024), interpolation=cv2.INTER_CUBIC), 95)
    query, ref = (big, r) if large == "query" else (q, big)
    lang = NanoLanguage(model=model, detector=detector, registration=False)
    cp = AnsweringCopilot(detector, lang, registration=False, threshold=0.5)
    assert lang.visual(query, [ref], cp.threshold).score == cp.inspect(query, [ref]).score
