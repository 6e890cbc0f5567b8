"""The product memory's PaDiM part: built in the same tower pass, mixed by its share, its peak in the image score,
in the detector, saved; fitted on grey-level-stretched images, the query stretched alike."""

from __future__ import annotations

import json
import re

import cv2
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from adcopilot.errors import CheckpointError
from adcopilot.model.detector import to_batch
from adcopilot.model.memory import MEMORY_FILE, SMOOTH_SIGMA, ProductMemory, build_memory
from adcopilot.model.nano import NanoComparisonModel, NanoConfig, NanoDetector
from adcopilot.model.padim import PadimAccumulator, neighbourhood_means, stretch_grey
from adcopilot.model.score import pooled_score
from adcopilot.model.upsample import upsample_centered
from adcopilot.model.vision import load_vision_tower
from adcopilot.registration import warp

TINY = NanoConfig(image_size=64, width=32, num_heads=4, mlp_hidden=48, num_queries=4, out_width=24, head_hidden=8)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    tower = load_vision_tower(pretrained=False)
    model = NanoComparisonModel(TINY).eval()
    return tower, model, NanoDetector(model, tower)


def halves(rng: np.random.Generator, swapped: bool = False) -> np.ndarray:
    """An aligned product: a dark left half and a bright right half (swapped: the other way round), noisy."""
    img = np.empty((64, 64, 3), np.float32)
    dark, bright = 0.15 + 0.05 * rng.random((64, 32, 3)), 0.8 + 0.05 * rng.random((64, 32, 3))
    img[:, :32], img[:, 32:] = (bright, dark) if swapped else (dark, bright)
    return img


def _build(det: NanoDetector, images: list[np.ndarray], share: float | None, stretch: bool = False,
           neighbourhood: int = 1) -> ProductMemory:
    def scales(im: np.ndarray):
        return det.fused_tower.patch_features(to_batch([im]))

    return build_memory(images, [""] * len(images), det.patch_features, patches=200, seed=0,
                        scales=scales if share is not None else None, padim={"": share} if share is not None else None,
                        padim_stretch=stretch, padim_neighbourhood=neighbourhood)


def _padim_meta(folder) -> dict:
    """The first variant's PaDiM entry in a saved memory's metadata."""
    return json.loads(safe_open(str(folder / MEMORY_FILE), "pt").metadata()["variants"])[0]["padim"]


def _set_padim_meta(folder, key: str, value: object) -> None:
    """Rewrite the saved memory with the first variant's PaDiM ``key`` set to ``value`` (None: removed, as in a
    memory written before the key existed)."""
    meta = json.loads(safe_open(str(folder / MEMORY_FILE), "pt").metadata()["variants"])
    if value is None:
        meta[0]["padim"].pop(key, None)
    else:
        meta[0]["padim"][key] = value
    save_file(load_file(str(folder / MEMORY_FILE)), str(folder / MEMORY_FILE),
              metadata={"format": "pt", "variants": json.dumps(meta)})


def test_padim_part_is_built_in_the_same_pass_and_flags_a_layout_the_good_images_never_show(tiny):
    _, _, det = tiny
    rng = np.random.default_rng(0)
    goods = [halves(rng) for _ in range(12)]
    plain, mixed = _build(det, goods, None), _build(det, goods, 0.5)
    v = mixed.variants[""]
    assert plain.variants[""].padim is None and v.padim is not None and v.padim.share == 0.5
    assert v.padim.stats.images == 11 and v.images == 11  # one image calibrates, the rest fit both
    torch.testing.assert_close(v.bank, plain.variants[""].bank)  # one tower pass gives the same features
    assert mixed.needs_scales and not plain.needs_scales

    ref = det.encode_reference(goods[0]).tokens[0]
    scores = {}
    for name, q in (("normal", halves(rng)), ("swapped", halves(rng, swapped=True))):
        s = det.fused_tower.patch_features(to_batch([q]))
        tokens = det.patch_features(q)[0].flatten(1).T
        m = mixed.maps(tokens, ref, (8, 8), 64, scales=s)
        near, pos, variant = m.near, m.padim, m.variant
        assert variant == "" and pos is not None
        np.testing.assert_allclose(mixed.anomaly_map(tokens, ref, (8, 8), 64, scales=s), 0.5 * near + 0.5 * pos,
                                   atol=1e-6)
        scores[name] = (float(near.mean()), float(pos.mean()))
        with pytest.raises(ValueError, match="raw stage outputs"):
            mixed.anomaly_map(tokens, ref, (8, 8), 64)
    # A good image lies within every position's Gaussian; the swapped halves lie outside them.
    assert scores["swapped"][1] > 0.9 and scores["normal"][1] < 0.2


def test_detector_mixes_the_padim_map_in_every_path_and_the_memory_round_trips(tiny, tmp_path):
    tower, model, det0 = tiny
    rng = np.random.default_rng(1)
    goods = [halves(rng) for _ in range(8)]
    memory = _build(det0, goods, 1.0)
    memory.save(tmp_path)
    loaded = ProductMemory.load(tmp_path)
    assert loaded is not None and loaded.describe() == memory.describe()
    assert loaded.describe()[""]["padim_share"] == 1.0
    for a, b in ((loaded.variants[""].padim.stats, memory.variants[""].padim.stats),):
        assert torch.equal(a.idx, b.idx) and torch.equal(a.mean, b.mean) and torch.equal(a.inv_covariance, b.inv_covariance)

    det = NanoDetector(model, tower, memory=loaded, memory_weight=0.75)
    queries = [halves(rng), halves(rng, swapped=True)]
    ref = det.encode_reference(goods[0])
    for q in queries:
        prob, mem, _ = det.maps(q, [ref])
        s = det.fused_tower.patch_features(to_batch([q]))
        pos = memory.maps(det.patch_features(q)[0].flatten(1).T, ref.tokens[0], (8, 8), 64, scales=s).padim
        np.testing.assert_allclose(mem, pos, atol=1e-5)  # share 1: PaDiM's map alone
        d = det.detection(q, [ref])
        np.testing.assert_allclose(d.amap, 0.25 * prob + 0.75 * mem, atol=1e-5)
    batch = det.detections(queries, [[ref], [ref]])
    for q, d in zip(queries, batch, strict=True):
        np.testing.assert_allclose(d.amap, det.detection(q, [ref]).amap, atol=1e-4)
    assert batch[1].score > batch[0].score
    # At memory weight 1 the comparison's map does not enter the fused map (its model is skipped): the
    # same maps and distances as the comparison model's own, the tokens only when asked for.
    whole = NanoDetector(model, tower, memory=loaded, memory_weight=1.0)
    for q in queries:
        prob, mem, _ = det.maps(q, [ref])
        d1, d0 = whole.detection(q, [ref]), det.detection(q, [ref])
        np.testing.assert_allclose(d1.amap, mem, atol=1e-5)
        np.testing.assert_allclose(d1.distance, d0.distance, atol=1e-6)
        assert whole.detection(q, [ref], with_tokens=True).tokens is not None
    for q, d in zip(queries, whole.detections(queries, [[ref], [ref]]), strict=True):
        np.testing.assert_allclose(d.amap, whole.detection(q, [ref]).amap, atol=1e-4)


def test_padim_reads_the_query_in_its_own_frame_and_its_map_follows_the_registration(tiny):
    """A registered query: PaDiM's statistics hold in the frame the good images were taken in, so its map
    is computed there and warped like the query into the reference's frame."""
    tower, model, det0 = tiny
    rng = np.random.default_rng(2)
    goods = [halves(rng) for _ in range(8)]
    memory = _build(det0, goods, 1.0)
    det = NanoDetector(model, tower, memory=memory, memory_weight=1.0)
    ref = det.encode_reference(goods[0])
    q = halves(rng)
    q[40:48, 8:16] = 1.0  # a bright square on the dark half
    shift = np.array([[1.0, 0.0, 6.0], [0.0, 1.0, -4.0]], np.float32)  # what registration found
    compared = warp(q, shift)
    d = det.detection(compared, [ref], own_frame=(q, shift))
    part = memory.variants[""].padim
    own = part.stats.distance(det.fused_tower.patch_features(to_batch([q])))  # (1, 1, 8, 8) in the query's frame
    expected = warp(cv2.GaussianBlur(upsample_centered(own, 8)[0, 0].numpy(), (0, 0), SMOOTH_SIGMA), shift)
    expected = np.clip((expected - part.low) / (part.high - part.low), 0, 1)
    np.testing.assert_allclose(d.amap, expected, atol=1e-5)
    assert d.amap[44 - 4, 12 + 6] > 0.5  # the square, where the reference frame has it
    # Without its own frame the detector reads the compared query itself (the frames agree without registration).
    same = det.detection(q, [ref])
    np.testing.assert_allclose(same.amap, warp(expected, cv2.invertAffineTransform(shift)), atol=0.2)
    batch = det.detections([compared, q], [[ref], [ref]], own_frames=[(q, shift), None])
    np.testing.assert_allclose(batch[0].amap, d.amap, atol=1e-4)
    np.testing.assert_allclose(batch[1].amap, same.amap, atol=1e-4)


def _peak(memory: ProductMemory, s) -> float:
    """PaDiM's own image score written out: the maximum of its smoothed map (the query's own frame) on its
    calibration scale, not clipped."""
    part = memory.variants[""].padim
    own = cv2.GaussianBlur(upsample_centered(part.stats.distance(s), 8)[0, 0].numpy(), (0, 0), SMOOTH_SIGMA)
    return (float(own.max()) - part.low) / (part.high - part.low)


def test_image_score_takes_padims_peak_by_its_share_and_older_memories_keep_the_pooled_map(tiny, tmp_path):
    tower, model, det0 = tiny
    rng = np.random.default_rng(3)
    goods = [halves(rng) for _ in range(10)]
    memory = _build(det0, goods, 0.5)
    assert memory.variants[""].padim.score == "peak"
    ref = det0.encode_reference(goods[0])
    queries = {"normal": halves(rng), "swapped": halves(rng, swapped=True)}
    peaks = {}
    for w in (1.0, 0.75):
        det = NanoDetector(model, tower, memory=memory, memory_weight=w)
        for name, q in queries.items():
            s = det.fused_tower.patch_features(to_batch([q]))
            m = memory.maps(det.patch_features(q)[0].flatten(1).T, ref.tokens[0], (8, 8), 64, scales=s)
            peaks[name] = _peak(memory, s)
            assert m.peak == pytest.approx(peaks[name], abs=1e-5)
            prob, mem, _ = det.maps(q, [ref])
            d = det.detection(q, [ref])
            np.testing.assert_allclose(d.amap, (1 - w) * prob + w * mem, atol=1e-5)  # the map shown: mixed
            rest = ((1 - w) * prob + w * 0.5 * m.near).astype(np.float32)
            assert d.score == pytest.approx(pooled_score(rest, TINY.topk_frac) + w * 0.5 * peaks[name], abs=1e-5)
    assert peaks["swapped"] > 1.5 and peaks["normal"] < 1.0  # beyond the clip: strength is kept

    # A memory written before the peak score (no "score" in its file) pools the mixed map, as it did.
    memory.save(tmp_path)
    assert _padim_meta(tmp_path)["score"] == "peak" and ProductMemory.load(tmp_path).variants[""].padim.score == "peak"
    _set_padim_meta(tmp_path, "score", None)
    old = ProductMemory.load(tmp_path)
    assert old.variants[""].padim.score == "map"
    det = NanoDetector(model, tower, memory=old, memory_weight=1.0)
    d = det.detection(queries["swapped"], [ref])
    assert d.score == pytest.approx(pooled_score(d.amap, TINY.topk_frac), abs=1e-6) and d.score <= 1.0
    _set_padim_meta(tmp_path, "score", "max")
    with pytest.raises(CheckpointError, match="PaDiM score 'max'"):
        ProductMemory.load(tmp_path)


def test_stretch_grey_maps_the_grey_percentiles_to_the_ends_and_keeps_the_type():
    rng = np.random.default_rng(4)
    grey_in = np.repeat(0.3 + 0.2 * rng.random((32, 32, 1)), 3, axis=-1).astype(np.float32)  # grey, in [0.3, 0.5]
    grey = stretch_grey(grey_in).mean(-1)
    assert np.percentile(grey, 1) == pytest.approx(0.0, abs=1e-3) and np.percentile(grey, 99) == pytest.approx(1.0, abs=1e-3)
    img = (0.3 + 0.2 * rng.random((32, 32, 3))).astype(np.float32)
    out = stretch_grey(img)
    assert out.dtype == np.float32 and out.shape == img.shape
    lo, hi = np.percentile(img.mean(-1), [1, 99])
    np.testing.assert_allclose(out, np.clip((img - lo) / (hi - lo), 0, 1), atol=1e-6)  # every channel alike
    np.testing.assert_allclose(stretch_grey(img * 0.5 + 0.1), out, atol=1e-5)  # brightness and contrast gone
    u8 = np.rint(img * 255).astype(np.uint8)
    assert stretch_grey(u8).dtype == np.uint8
    np.testing.assert_allclose(stretch_grey(u8) / 255.0, stretch_grey(u8.astype(np.float32) / 255.0), atol=0.5 / 255 + 1e-6)
    flat = np.full((8, 8, 3), 0.4, np.float32)
    assert stretch_grey(flat) is flat  # nothing to stretch


def test_padim_fitted_on_stretched_images_takes_a_darker_good_part_as_good(tiny, tmp_path):
    """Good parts that differ in overall brightness: PaDiM fitted on the images as taken flags a good part
    darker than any it saw; fitted on stretched images (and stretching the query alike, in the detector's
    every path) it does not, and still flags a layout the good images never show."""
    tower, model, det0 = tiny
    rng = np.random.default_rng(5)
    goods = [halves(rng) for _ in range(12)]
    plain, stretched = _build(det0, goods, 1.0), _build(det0, goods, 1.0, stretch=True)
    assert stretched.padim_stretch and not plain.padim_stretch and stretched.describe()[""]["padim_stretch"]
    # The statistics are those of the stretched images (the first image calibrates, the others fit).
    by_hand = _build(det0, [stretch_grey(g) for g in goods], 1.0).variants[""].padim.stats
    torch.testing.assert_close(stretched.variants[""].padim.stats.mean, by_hand.mean)
    torch.testing.assert_close(stretched.variants[""].padim.stats.inv_covariance, by_hand.inv_covariance)
    torch.testing.assert_close(stretched.variants[""].bank, plain.variants[""].bank)  # nearest patches: as taken

    ref = det0.encode_reference(goods[0])
    darker = halves(rng) * 0.6  # a good part under less light
    swapped = halves(rng, swapped=True)
    score = {}
    for name, memory in (("plain", plain), ("stretched", stretched)):
        det = NanoDetector(model, tower, memory=memory, memory_weight=1.0)
        score[name] = {k: det.detection(q, [ref]).score for k, q in (("good", halves(rng)), ("darker", darker),
                                                                      ("swapped", swapped))}
        batch = det.detections([darker, swapped], [[ref], [ref]])
        assert [d.score for d in batch] == pytest.approx([score[name]["darker"], score[name]["swapped"]], abs=1e-4)
    assert score["plain"]["darker"] > 1.5 * score["plain"]["good"]
    assert score["stretched"]["darker"] < 1.2 * score["stretched"]["good"]
    assert score["stretched"]["swapped"] > 2 * score["stretched"]["good"]

    # Saved and loaded with its rule; a memory written before the stretch reads images as taken.
    stretched.save(tmp_path)
    assert ProductMemory.load(tmp_path).padim_stretch
    assert _padim_meta(tmp_path)["stretch"] is True
    for value, ok in ((None, True), ("yes", False)):
        _set_padim_meta(tmp_path, "stretch", value)
        if ok:
            assert not ProductMemory.load(tmp_path).padim_stretch
        else:
            with pytest.raises(CheckpointError, match="PaDiM stretch 'yes' is not true or false"):
                ProductMemory.load(tmp_path)


def test_padim_on_neighbourhood_means_fits_and_reads_the_query_alike_and_round_trips(tiny, tmp_path):
    """``adapt``'s PaDiM reads each position's features averaged over its 3 x 3 neighbours: the statistics are those
    of the good images' means, the query is read the same way, and the window is saved with the memory (a memory
    written before reads each position alone; a window that is not an odd number is refused in one line)."""
    _, _, det = tiny
    rng = np.random.default_rng(3)
    goods = [halves(rng) for _ in range(12)]
    plain, means = _build(det, goods, 1.0), _build(det, goods, 1.0, neighbourhood=3)
    part = means.variants[""].padim
    assert part.neighbourhood == 3 and plain.variants[""].padim.neighbourhood == 1
    assert means.describe()[""]["padim_neighbourhood"] == 3
    # The statistics, fitted by hand on the means of the good images that fit (all but the calibrating one).
    order = [int(i) for i in np.random.default_rng(0).permutation(12)]
    acc = PadimAccumulator(part.stats.idx)
    for i in order[1:]:
        acc.add(neighbourhood_means(det.fused_tower.patch_features(to_batch([goods[i]])), 3))
    by_hand = acc.finish()
    torch.testing.assert_close(part.stats.mean, by_hand.mean)
    assert not torch.allclose(part.stats.mean, plain.variants[""].padim.stats.mean)
    # The query's PaDiM map is the distance of its own means to those statistics.
    q = halves(rng, swapped=True)
    s = det.fused_tower.patch_features(to_batch([q]))
    tokens, ref = det.patch_features(q)[0].flatten(1).T, det.encode_reference(goods[0]).tokens[0]
    got = means.maps(tokens, ref, (8, 8), 64, scales=s)
    d = part.stats.distance(neighbourhood_means(s, 3))  # (1, 1, 8, 8)
    expect = cv2.GaussianBlur(upsample_centered(d, 64 // 8)[0, 0].numpy(), (0, 0), SMOOTH_SIGMA)
    assert got.peak == pytest.approx(part.peak(expect), rel=1e-5)
    assert got.peak != pytest.approx(part.peak(cv2.GaussianBlur(upsample_centered(part.stats.distance(s), 8)[0, 0]
                                                                .numpy(), (0, 0), SMOOTH_SIGMA)), rel=1e-3)

    means.save(tmp_path)
    assert ProductMemory.load(tmp_path).variants[""].padim.neighbourhood == 3
    for value, ok in ((None, True), (2, False), ("3", False), (True, False)):
        _set_padim_meta(tmp_path, "neighbourhood", value)
        if ok:
            assert ProductMemory.load(tmp_path).variants[""].padim.neighbourhood == 1
        else:
            with pytest.raises(CheckpointError, match=re.escape(f"odd width of one position or more, got {value!r}")):
                ProductMemory.load(tmp_path)


@pytest.mark.parametrize("width", [0, 2, -3])
def test_a_memory_is_not_built_with_a_window_that_is_not_odd(tiny, width):
    """The window is checked before any image is read: no tower pass is spent on a memory that cannot be saved."""
    _, _, det = tiny
    passes = []

    def scales(im: np.ndarray):
        passes.append(1)
        return det.fused_tower.patch_features(to_batch([im]))

    rng = np.random.default_rng(4)
    with pytest.raises(ValueError, match=re.escape(f"odd width of one position or more, got {width!r}")):
        build_memory([halves(rng) for _ in range(4)], [""] * 4, det.patch_features, patches=50, seed=0,
                     scales=scales, padim={"": 1.0}, padim_neighbourhood=width)
    assert passes == []
