"""The fused image score: the reference's dihedral views, the view distance, the self-distance gate
("fused-self") and the fused score on hand-computed cases, and the nano detector's score with and
without them."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from adcopilot.errors import CheckpointError
from adcopilot.model.nano import NanoComparisonModel, NanoConfig, NanoDetector
from adcopilot.model.score import (
    SELF_CANDIDATES,
    SELF_RADIUS,
    SPREAD_QUANTILE,
    blended_score,
    dihedral_views,
    fused_score,
    image_score,
    pooled_score,
    relative_score,
    self_distance,
    self_gated_distance,
    spread_level,
    view_distance,
)
from adcopilot.model.vision import load_vision_tower

TINY = NanoConfig(image_size=64, width=32, num_heads=4, mlp_hidden=48, num_queries=4, out_width=24, head_hidden=8)


def test_dihedral_views_are_the_eight_flips_and_turns():
    img = np.arange(9, dtype=np.float32).reshape(3, 3, 1)
    views = dihedral_views(img)
    assert len(views) == 8 and np.array_equal(views[0], img)
    assert len({v.tobytes() for v in views}) == 8  # an asymmetric image has eight different views
    assert any(np.array_equal(v, img[::-1, :]) for v in views)
    assert any(np.array_equal(v, np.rot90(img)) for v in views)
    assert any(np.array_equal(v, img[:, :, 0].T[..., None]) for v in views)  # the transpose


def test_view_distance_on_a_hand_computed_case():
    # Four query patches on a 2 x 2 grid, unit vectors in 2-D; one view patch (1, 0).
    tokens = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.8, 0.6]])
    views = torch.tensor([[1.0, 0.0]])
    d1 = torch.tensor([[0.5, 0.5], [0.8, 0.2]])  # the three largest: patches 2, 0, 1
    d8 = view_distance(d1, tokens, views, candidates=3)
    # patch 0: 1 - 1 = 0; patch 1: min(1 - 0, 0.5) = 0.5; patch 2: min(1 - 0.6, 0.8) = 0.4; patch 3 not searched
    assert torch.allclose(d8, torch.tensor([[0.0, 0.5], [0.4, 0.2]]))


def test_fused_score_on_a_hand_computed_case():
    d8 = torch.full((4, 4), 0.64)  # a constant distance: its smoothed map is 0.64 everywhere
    prob = np.full((16, 16), 0.25, np.float32)
    assert fused_score(prob, d8, 0.5) == pytest.approx(0.4)  # sqrt(0.25 * 0.64)
    prob[5, 7] = 1.0  # one sure pixel: 1 ** 0.5 * 0.64 ** 0.5
    assert fused_score(prob, d8, 0.5) == pytest.approx(0.8)
    assert fused_score(prob, d8, 0.0) == pytest.approx(0.64)  # weight 0: the distance alone
    d8[1, 2] = 0.9  # a distant patch: its smoothed peak, fused with the map there (prob 0.25)
    peak = fused_score(np.full((16, 16), 0.25, np.float32), d8, 0.5)
    assert 0.4 < peak < np.sqrt(0.25 * 0.9)


@pytest.fixture(scope="module")
def tower():
    torch.manual_seed(0)
    return load_vision_tower(pretrained=False)


def test_detector_fuses_the_score_only_when_configured(tower):
    torch.manual_seed(3)
    plain = NanoComparisonModel(TINY).eval()
    fused = NanoComparisonModel(replace(TINY, image_score="fused", fused_weight=0.05)).eval()
    fused.load_state_dict(plain.state_dict())
    det_plain, det_fused = NanoDetector(plain, tower), NanoDetector(fused, tower)
    rng = np.random.default_rng(4)
    q, r = rng.random((64, 64, 3), dtype=np.float32), rng.random((64, 64, 3), dtype=np.float32)
    assert det_plain.encode_reference(r).views is None
    enc = det_fused.with_views(det_fused.encode_reference(r))
    assert enc.views is not None and enc.views.shape == (1, 7 * 64, 152)
    # The views' patches are the tower's features of the flipped and turned reference.
    flipped = det_fused.patch_features(np.ascontiguousarray(r[:, ::-1]))[0].flatten(1).T  # (64, 152)
    assert torch.allclose(enc.views[0, :64], flipped, atol=1e-5)
    a, b = det_plain.detection(q, [det_plain.encode_reference(r)]), det_fused.detection(q, [enc])
    assert np.array_equal(a.amap, b.amap)  # the map is the comparison model's either way
    assert a.score == pytest.approx(pooled_score(a.amap, TINY.topk_frac))
    assert b.score != pytest.approx(a.score)
    # A query that is one of the reference's views: its patches are the views' own (distance 0),
    # so every searched patch (all 64 at this size) is explained and the score is the floor's.
    view = np.ascontiguousarray(r[::-1, ::-1])
    assert det_fused.detection(view, [enc]).score < 1e-3
    assert det_fused.detection(q, [enc]).score > 10 * det_fused.detection(view, [enc]).score


@pytest.mark.parametrize(("key", "value"), [("image_score", "best"), ("fused_weight", 1.5), ("fused_weight", "0.1")])
def test_a_checkpoint_with_an_unknown_image_score_is_refused(tmp_path, key, value):
    folder = NanoComparisonModel(TINY).save(tmp_path / "ck")
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, key: value}))
    with pytest.raises(CheckpointError, match="image_score must be one of map, fused"):
        NanoComparisonModel.load(folder)


def test_batched_detections_keep_the_fused_score(tower):
    """The service's batched pass scores each query against its own references' views."""
    torch.manual_seed(5)
    fused = NanoComparisonModel(replace(TINY, image_score="fused", fused_weight=0.05)).eval()
    det = NanoDetector(fused, tower)
    rng = np.random.default_rng(6)
    qs = [rng.random((64, 64, 3), dtype=np.float32) for _ in range(3)]
    refs = [[det.encode_reference(rng.random((64, 64, 3), dtype=np.float32))] for _ in range(2)]
    pairs = [(qs[0], refs[0]), (qs[1], refs[1]), (qs[2], refs[0])]
    batched = det.detections([q for q, _ in pairs], [r for _, r in pairs])
    for (q, r), got in zip(pairs, batched, strict=True):
        one = det.detection(q, r)
        assert got.score == pytest.approx(one.score, abs=1e-5)
        assert got.score != pytest.approx(pooled_score(one.amap, TINY.topk_frac))


def _grid_tokens(special: dict[tuple[int, int], list[float]], side: int = 8) -> torch.Tensor:
    """(side * side, 2) unit vectors, row-major: (0, 1) everywhere but at the ``special`` positions."""
    t = torch.tensor([[0.0, 1.0]]).repeat(side * side, 1)
    for (y, x), v in special.items():
        t[y * side + x] = torch.tensor(v)
    return t


def test_self_distance_ignores_the_patchs_own_neighbourhood():
    assert SELF_RADIUS == 3
    # (0, 0) and (0, 2) alike but neighbours: (0, 0)'s nearest beyond its 7 x 7 window is a (0, 1) patch.
    t = _grid_tokens({(0, 0): [1.0, 0.0], (0, 2): [1.0, 0.0]})
    d = self_distance(t, (8, 8))
    assert d[0] == pytest.approx(1.0) and d[2] == pytest.approx(1.0)
    assert d[9] == pytest.approx(0.0)  # a plain patch has plain twins far away
    # A twin four steps away is outside the window: (0, 0) is explained by it.
    t = _grid_tokens({(0, 0): [1.0, 0.0], (0, 4): [1.0, 0.0]})
    d = self_distance(t, (8, 8))
    assert d[0] == pytest.approx(0.0) and d[4] == pytest.approx(0.0)
    rows = torch.tensor([4, 0, 63])
    assert torch.allclose(self_distance(t, (8, 8), rows), d[rows])  # rows alone: the same values


def test_self_gated_distance_lowers_only_where_the_reference_repeats_itself():
    q = _grid_tokens({(0, 0): [1.0, 0.0], (2, 0): [0.8, 0.6], (2, 5): [0.8, 0.6]})
    d8 = torch.full((8, 8), 0.5)
    d8[7, 7] = 0.05  # one plain patch the references explain well
    d8[2, 5] = 0.9  # (2, 0)'s twin, which the references do not explain
    ref_self = torch.full((8, 8), 0.9)  # the reference does not repeat itself ...
    ref_self[:, :4] = 0.1  # ... except in its left half
    out = self_gated_distance(d8, q, ref_self, gate=0.3)
    assert out[1, 1] == pytest.approx(0.05)  # trusted, with a plain twin at (7, 7) explained to 0.05
    assert out[0, 0] == pytest.approx(0.5)  # trusted but unique: its nearest twins are 0.4 away at cost 0.5
    # (2, 0)'s identical twin (2, 5) counts at its own 0.9; a plain patch 0.4 away at cost 0.05 explains it to 0.4
    assert out[2, 0] == pytest.approx(0.4)
    assert out[1, 6] == pytest.approx(0.5) and out[2, 5] == pytest.approx(0.9)  # right half: d8 as it was
    assert torch.equal(self_gated_distance(d8, q, ref_self, gate=0.05), d8)  # nothing trusted: unchanged
    assert d8[7, 7] == pytest.approx(0.05) and d8[0, 0] == 0.5  # the input is not modified


def test_a_large_defect_repeating_itself_does_not_explain_its_own_worst_part():
    """A band of alike patches across the image (a dark band): with every patch a possible twin, its worst
    part (0.9 from the references) is explained by its milder parts far along the band (0.6); only the
    query's ordinary patches (up to its 75th percentile of distances: the plain ones) may be twins, and none
    resembles the band."""
    q = _grid_tokens({(3, c): [1.0, 0.0] for c in range(8)})  # the other patches plain, [0, 1]
    d8 = torch.full((8, 8), 0.2)
    d8[3, :] = 0.6
    d8[3, 0] = 0.9
    ref_self = torch.full((8, 8), 0.1)  # the reference repeats itself everywhere
    assert self_gated_distance(d8, q, ref_self, 0.3)[3, 0] == pytest.approx(0.6)  # every patch a twin
    kept = self_gated_distance(d8, q, ref_self, 0.3, twin_quantile=0.75)
    assert kept[3, 0] == pytest.approx(0.9) and kept[3, 7] == pytest.approx(0.6)  # the band as the references see it
    assert kept[0, 0] == pytest.approx(0.2)  # a plain patch still has plain twins, at their own cost


def test_a_twin_counts_at_least_its_own_cost():
    t = _grid_tokens({(0, 0): [1.0, 0.0], (0, 4): [1.0, 0.0]})
    cost = torch.zeros(64)
    cost[4] = 0.7
    d = self_distance(t, (8, 8), twin_cost=cost)
    assert d[0] == pytest.approx(0.7)  # its only twin costs 0.7; the plain patches are 1 away
    assert d[4] == pytest.approx(0.0)  # (0, 4)'s twin (0, 0) costs nothing


def test_twins_are_searched_only_for_the_patches_that_can_make_the_peak():
    """On the 32 x 32 grid of a 256 px image, only the SELF_CANDIDATES patches of largest d8 are lowered by
    their twins (exactly as a search over every patch lowers them); the others keep d8, an upper bound."""
    rng = torch.Generator().manual_seed(0)
    half = torch.nn.functional.normalize(torch.randn(512, 8, generator=rng), dim=1)
    q = torch.cat([half, half])  # every patch has an identical twin 16 rows away
    d8 = torch.rand(32, 32, generator=rng) * 0.5 + 0.3
    ref_self = torch.zeros(32, 32)  # trusted everywhere
    out = self_gated_distance(d8, q, ref_self, gate=0.3).flatten()
    full = torch.minimum(d8.flatten(), self_distance(q, (32, 32), twin_cost=d8.flatten()))
    top = d8.flatten().topk(SELF_CANDIDATES).indices
    rest = torch.ones(1024, dtype=torch.bool)
    rest[top] = False
    assert SELF_CANDIDATES < 1024
    assert torch.allclose(out[top], full[top])  # searched: as the search over every patch gives
    assert (out[top] < d8.flatten()[top]).any()
    assert torch.equal(out[rest], d8.flatten()[rest])  # not searched: d8 as it was


def _tiled(rng: np.random.Generator, tile: int = 16, size: int = 64) -> np.ndarray:
    """A product that repeats itself: one random tile repeated over the image."""
    t = rng.random((tile, tile, 3), dtype=np.float32)
    return np.ascontiguousarray(np.tile(t, (size // tile, size // tile, 1)))


def test_the_fused_self_score_reads_the_querys_own_patches_where_the_reference_repeats(tower):
    torch.manual_seed(7)
    fused = NanoComparisonModel(replace(TINY, image_score="fused")).eval()
    gated = NanoComparisonModel(replace(TINY, image_score="fused-self", self_gate=2.0)).eval()
    closed = NanoComparisonModel(replace(TINY, image_score="fused-self", self_gate=1e-9)).eval()
    for m in (gated, closed):
        m.load_state_dict(fused.state_dict())
    dets = [NanoDetector(m, tower) for m in (fused, gated, closed)]
    rng = np.random.default_rng(8)
    ref, query = _tiled(rng), _tiled(rng)  # both repeat themselves; their tiles differ
    encoded = [d.encode_reference(ref) for d in dets]
    own = dets[1].with_own(encoded[1]).own
    assert encoded[0].own is None and own is not None and own.shape == (64,)
    assert torch.allclose(own, self_distance(encoded[1].tokens[0], (8, 8)))
    scores = [d.detection(query, [e]).score for d, e in zip(dets, encoded, strict=True)]
    assert scores[2] == pytest.approx(scores[0])  # a gate nothing passes: the fused score
    # Every position trusted: the query's tiles explain one another, so its score falls (the detector's
    # parts composed by hand give the same).
    assert scores[1] < scores[0]
    d = dets[0].detection(query, [dets[0].with_views(encoded[0])])
    tokens = d.features.flatten(1).T
    d8 = view_distance(torch.from_numpy(d.distance[::8, ::8]).contiguous(), tokens, dets[0].with_views(encoded[0]).views[0])
    by_hand = fused_score(d.amap, self_gated_distance(d8, tokens, own.view(8, 8), 2.0, TINY.twin_quantile),
                          TINY.fused_weight)
    assert scores[1] == pytest.approx(by_hand, abs=1e-6)
    batched = dets[1].detections([query, _tiled(rng)], [[encoded[1]], [encoded[1]]])
    assert batched[0].score == pytest.approx(scores[1], abs=1e-5)


def test_the_blend_reads_each_score_over_its_own_scale():
    assert blended_score(0.5, 0.42, 0.4, 0.5, 0.42) == pytest.approx(0.5)  # both at their thresholds: at the verdict's
    assert blended_score(0.8, 0.1, 1.0, 0.5, 0.42) == pytest.approx(0.8)  # share 1: the pooled map
    assert blended_score(0.8, 0.21, 0.0, 0.5, 0.42) == pytest.approx(0.25)  # share 0: the self-gated score on the map's scale
    # 0.5 * (0.9 / 0.5) ** 0.4 * (0.3 / 0.42) ** 0.6, by hand
    assert blended_score(0.9, 0.3, 0.4, 0.5, 0.42) == pytest.approx(0.5 * 1.8 ** 0.4 * (0.3 / 0.42) ** 0.6)
    assert np.isfinite(blended_score(0.0, 0.0, 0.4, 0.5, 0.42))  # a blank map keeps the power finite
    # Monotone in each score: a higher map or self-gated score never lowers the blend.
    assert blended_score(0.6, 0.3, 0.4, 0.5, 0.42) > blended_score(0.5, 0.3, 0.4, 0.5, 0.42)
    assert blended_score(0.5, 0.4, 0.4, 0.5, 0.42) > blended_score(0.5, 0.3, 0.4, 0.5, 0.42)


def test_the_blend_is_the_pooled_map_and_the_self_gated_score_of_the_same_comparison(tower):
    """The detector's "blend" is exactly the pooled map (the "map" score) and the "fused-self" score of the same
    comparison, blended; the batched path gives the same, and with two references the multi-reference score stays."""
    torch.manual_seed(5)
    cfg = replace(TINY, self_gate=2.0, blend_weight=0.3, blend_map_scale=0.45, blend_self_scale=0.35)
    models = [NanoComparisonModel(replace(cfg, image_score=s)).eval() for s in ("map", "fused-self", "blend")]
    for m in models[1:]:
        m.load_state_dict(models[0].state_dict())
    dets = [NanoDetector(m, tower) for m in models]
    rng = np.random.default_rng(3)
    ref, query = _tiled(rng), _tiled(rng)
    got = [d.detection(query, [d.encode_reference(ref)]).score for d in dets]
    assert got[0] == pytest.approx(pooled_score(dets[0].detection(query, [dets[0].encode_reference(ref)]).amap,
                                                cfg.topk_frac))
    assert got[2] == pytest.approx(blended_score(got[0], got[1], 0.3, 0.45, 0.35), abs=1e-6)
    assert got[2] != pytest.approx(got[0]) and got[2] != pytest.approx(got[1])
    enc = dets[2].encode_reference(ref)
    assert dets[2].detections([query], [[enc]])[0].score == pytest.approx(got[2], abs=1e-5)
    assert dets[2].image_score_for(1) == "blend" and dets[2].image_score_for(2) == cfg.multi_image_score


@pytest.mark.parametrize(("key", "value", "why"), [
    ("blend_weight", 1.5, "blend_weight must be a number in"),
    ("blend_weight", "0.4", "blend_weight must be a number in"),
    ("blend_weight", float("nan"), "blend_weight must be a number in"),
    ("blend_map_scale", 0, "blend_map_scale must be a positive number"),
    ("blend_self_scale", -0.42, "blend_self_scale must be a positive number"),
    ("blend_self_scale", None, "blend_self_scale must be a positive number"),
])
def test_a_checkpoint_with_a_bad_blend_is_refused(tmp_path, key, value, why):
    folder = NanoComparisonModel(TINY).save(tmp_path / "ck")
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "image_score": "blend", key: value}))
    with pytest.raises(CheckpointError, match=why) as err:
        NanoComparisonModel.load(folder)
    assert "\n" not in str(err.value) and "config.json" in str(err.value)


@pytest.mark.parametrize("quantile", [0, 1.5, float("nan"), "0.75", None])
def test_a_checkpoint_with_a_bad_twin_quantile_is_refused(tmp_path, quantile):
    folder = NanoComparisonModel(TINY).save(tmp_path / "ck")
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "image_score": "fused-self", "twin_quantile": quantile}))
    with pytest.raises(CheckpointError, match="twin_quantile must be a number in"):
        NanoComparisonModel.load(folder)


@pytest.mark.parametrize("gate", [0, -0.1, 2.5, "0.3", float("nan"), None])
def test_a_checkpoint_with_a_bad_self_gate_is_refused(tmp_path, gate):
    folder = NanoComparisonModel(TINY).save(tmp_path / "ck")
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "image_score": "fused-self", "self_gate": gate}))
    with pytest.raises(CheckpointError, match="self_gate must be a cosine distance in") as err:
        NanoComparisonModel.load(folder)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("size", [100, 8, 4096, "256", 256.0])
def test_a_checkpoint_with_an_image_size_the_tower_cannot_tile_is_refused(tmp_path, size):
    folder = NanoComparisonModel(TINY).save(tmp_path / "ck")
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "image_size": size}))
    with pytest.raises(CheckpointError, match="image_size must be") as err:
        NanoComparisonModel.load(folder)
    assert "\n" not in str(err.value)


def test_the_relative_score_on_hand_computed_cases():
    assert SPREAD_QUANTILE == 0.75
    d1 = torch.tensor([[0.1, 0.2], [0.3, 0.5]])
    assert spread_level(d1) == pytest.approx(0.35)  # the 0.75 quantile of 0.1, 0.2, 0.3, 0.5 (linear)
    assert relative_score(0.5, 0.5, 0.25) == pytest.approx(0.5)  # logit 0 - 0.25 * logit 0
    want = 1 / (1 + np.exp(-(np.log(0.6 / 0.4) - 0.25 * np.log(0.2 / 0.8))))
    assert relative_score(0.6, 0.2, 0.25) == pytest.approx(want)
    assert relative_score(0.6, 0.2, 0.0) == pytest.approx(0.6)
    assert 0 < relative_score(0.0, 1.0, 1.0) < relative_score(1.0, 0.0, 1.0) < 1  # clipped, finite


def test_the_spread_reads_a_peak_against_the_querys_ordinary_patches():
    """The same defect's peak on two products: where no reference explains even the ordinary patches closely
    (a grain), the peak means less than where the references explain them well (a moulded part)."""
    prob = np.full((64, 64), 0.2, np.float32)
    views = torch.nn.functional.normalize(torch.ones(1, 4), dim=1)  # no query patch is near it: d8 = d1

    def score(background: float, peak: float, weight: float) -> float:
        d1 = torch.full((8, 8), background)
        d1[3:5, 3:5] = peak
        tokens = torch.nn.functional.normalize(torch.eye(4)[torch.arange(64) % 4] - 0.5, dim=1)
        return image_score("fused-spread" if weight else "fused", prob, d1, tokens, views, None, topk_frac=0.01,
                           fused_weight=0.05, self_gate=0.3, twin_quantile=0.75, blend=(0.4, 0.5, 0.42),
                           spread_weight=weight)

    assert score(0.3, 0.6, 0.0) > score(0.05, 0.6, 0.0)  # as it is, the grain's ordinary patches lift its score
    assert score(0.05, 0.6, 0.25) > score(0.3, 0.6, 0.25)  # read against them, the clean part's peak means more
    assert score(0.3, 0.7, 0.25) > score(0.3, 0.6, 0.25)  # on one product the peak still orders the parts


def test_the_spread_score_is_the_fused_score_read_relative_to_the_querys_level(tower):
    """The shipped arrangement: "fused" with one reference (here), "fused-spread" with two."""
    torch.manual_seed(7)
    base = replace(TINY, image_score="fused", multi_image_score="fused", multi_threshold=0.4)
    plain = NanoComparisonModel(base).eval()
    spread = NanoComparisonModel(replace(base, multi_image_score="fused-spread", spread_weight=0.25)).eval()
    spread.load_state_dict(plain.state_dict())
    det_plain, det_spread = NanoDetector(plain, tower), NanoDetector(spread, tower)
    rng = np.random.default_rng(8)
    q, r1, r2 = (rng.random((64, 64, 3), dtype=np.float32) for _ in range(3))
    one = [det_plain.encode_reference(r1)]
    assert det_spread.detection(q, one).score == pytest.approx(det_plain.detection(q, one).score)
    two = [det_plain.encode_reference(r) for r in (r1, r2)]
    raw = det_plain.detection(q, two)
    step = 64 // raw.features.shape[-1]
    level = spread_level(torch.from_numpy(np.ascontiguousarray(raw.distance[::step, ::step])))
    got = det_spread.detection(q, two).score
    assert got == pytest.approx(relative_score(raw.score, level, 0.25), abs=1e-6)
    assert got != pytest.approx(raw.score)


@pytest.mark.parametrize("weight", [-0.1, 1.5, float("nan"), "0.25", None])
def test_a_checkpoint_with_a_bad_spread_weight_is_refused(tmp_path, weight):
    folder = NanoComparisonModel(TINY).save(tmp_path / "ck")
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "multi_image_score": "fused-spread", "spread_weight": weight}))
    with pytest.raises(CheckpointError, match="spread_weight must be a number in") as err:
        NanoComparisonModel.load(folder)
    assert "\n" not in str(err.value)
