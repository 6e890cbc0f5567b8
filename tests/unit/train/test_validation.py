"""Adaptation's validation split and the per-variant choice of the memory weight."""

from __future__ import annotations

import numpy as np
import pytest

from adcopilot.train.validation import (
    SHARES,
    WEIGHTS,
    VariantChoice,
    auroc_standard_error,
    choose_share,
    choose_weight,
    choose_within,
    holdout,
    normal_threshold,
    validate,
    validation_split,
    write_split,
)


def test_holdout_is_seeded_per_group_and_respects_the_minimums():
    groups = ["a"] * 20 + ["b"] * 9 + ["c"] * 10
    held = holdout(groups, 0.2, seed=0)
    assert held == holdout(groups, 0.2, seed=0)  # a pure function of its inputs
    assert held != holdout(groups, 0.2, seed=1) and held != holdout(groups, 0.2, seed=0, salt=1)
    per = {g: sum(h for h, x in zip(held, groups, strict=True) if x == g) for g in "abc"}
    assert per == {"a": 4, "b": 0, "c": 2}  # "b" has fewer than 10 images: all kept for training
    assert not any(holdout(groups, 0.0, seed=0))
    assert sum(holdout(["a"] * 20, 0.2, seed=0, min_held=5)) == 0  # 4 held out would be too few
    assert sum(holdout(["a"] * 25, 0.2, seed=0, min_held=5)) == 5


def test_defects_are_held_out_only_where_good_images_are():
    goods = ["mono"] * 20 + ["poly"] * 5  # poly: too few good images to hold any out
    defects = ["mono"] * 25 + ["poly"] * 25
    held_good, held_bad = validation_split(goods, defects, 0.2, seed=0)
    assert sum(held_good[:20]) == 4 and not any(held_good[20:])
    assert sum(held_bad[:25]) == 5 and not any(held_bad[25:])  # poly's defects all stay for training
    assert validation_split(goods, defects, 0.0, seed=0) == ([False] * 25, [False] * 50)


def test_choose_weight_prefers_the_best_then_the_neutral_average():
    assert choose_weight({0.0: 0.7, 0.25: 0.8, 0.5: 0.85, 0.75: 0.9, 1.0: 0.88}) == 0.75
    assert choose_weight({0.0: 0.9, 0.25: 0.9, 0.5: 0.9, 0.75: 0.9, 1.0: 0.9}) == 0.5
    assert choose_weight({0.0: 0.95, 0.25: 0.95, 0.5: 0.8, 0.75: 0.8, 1.0: 0.8}) == 0.25


def _image(rng, bright: bool) -> np.ndarray:
    """A plain grey image with a little noise (dark or bright: the two variants)."""
    return (rng.integers(0, 3, (32, 32, 3)) + (190 if bright else 60)).astype(np.uint8)


def _goods(n: int) -> list[np.ndarray]:
    """``n`` dark plain images of one variant (seeded)."""
    rng = np.random.default_rng(0)
    return [_image(rng, False) for _ in range(n)]


def _departure(query: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(32, 32) map of where the query departs from its plain reference (synthetic defects do), the images'
    own noise left out."""
    departure = np.abs(query.astype(np.float32) - reference.astype(np.float32)).max(axis=2) / 255.0
    departure[departure < 0.02] = 0.0
    return departure


def test_select_weights_trusts_the_map_that_separates_the_variant():
    """Two variants: on one only the memory's map shows the defect, on the other only the comparison's."""
    rng = np.random.default_rng(0)
    train = {"mem": [_image(rng, False) for _ in range(4)], "cmp": [_image(rng, True) for _ in range(4)]}
    val = {"mem": [_image(rng, False) for _ in range(8)], "cmp": [_image(rng, True) for _ in range(8)]}
    noise = np.random.default_rng(1)

    def maps(query, reference):
        # The defect map: where the query departs from its plain reference (synthetic defects do).
        departure = _departure(query, reference)
        random_map = (noise.random((32, 32)) * 0.5).astype(np.float32)
        return (random_map, departure) if reference.mean() < 128 else (departure, random_map)

    choices = validate(maps, lambda m: float(m.max()), train, val, {}, seed=0)
    assert set(choices) == {"mem", "cmp"}
    for c in choices.values():
        assert c.anomaly_source == "synthetic" and c.normals == 8 and c.anomalies == 8
        assert set(c.auroc) == set(WEIGHTS)
    assert choices["mem"].weight >= 0.5 and choices["cmp"].weight <= 0.5
    assert choices["mem"].auroc[1.0] > choices["mem"].auroc[0.0]
    assert choices["cmp"].auroc[0.0] > choices["cmp"].auroc[1.0]
    # A fixed weight is kept whatever the validation says; the AUROCs are the same measurements.
    noise = np.random.default_rng(1)
    fixed = validate(maps, lambda m: float(m.max()), train, val, {}, seed=0, fixed=0.5)
    assert {c.weight for c in fixed.values()} == {0.5}
    assert {n: c.auroc for n, c in fixed.items()} == {n: c.auroc for n, c in choices.items()}


def test_validate_without_a_memory_measures_the_comparison_model_alone():
    goods = _goods(6)

    def maps(query, reference):
        return np.abs(query.astype(np.float32) - reference.astype(np.float32)).max(axis=2) / 255.0, None

    choices = validate(maps, lambda m: float(m.max()), {"a": goods[:3]}, {"a": goods[3:]}, {}, seed=0)
    assert list(choices["a"].auroc) == [0.0] and choices["a"].weight == 0.0
    assert choices["a"].auroc[0.0] > 0.5


def test_write_split_lists_held_out_files_relative_to_their_folders(tmp_path):
    import json
    from pathlib import Path

    good = [Path("/data/good/mono/a.png"), Path("/data/good/mono/b.png"), Path("/data/good/poly/c.png")]
    write_split(tmp_path / "v.json", (Path("/data/good"), good, [True, False, True]), (None, [], []), 0.2, 3)
    doc = json.loads((tmp_path / "v.json").read_text())
    assert doc == {"fraction": 0.2, "seed": 3, "normals": ["mono/a.png", "poly/c.png"], "defects": []}


def test_select_weights_uses_labelled_defects_when_there_are_enough():
    goods = _goods(5)
    labelled = [np.full((32, 32, 3), 255, np.uint8) for _ in range(5)]

    def maps(query, reference):
        m = np.full((32, 32), query.mean() / 255.0, np.float32)
        return m, m

    choices = validate(maps, lambda m: float(m.max()), {"a": goods}, {"a": goods}, {"a": labelled}, seed=0)
    assert choices["a"].anomaly_source == "labelled" and choices["a"].anomalies == 5
    assert choices["a"].auroc[0.5] == 1.0 and choices["a"].weight == 1.0  # all alike: the faster model


def test_choose_share_prefers_the_best_then_the_smaller_share_then_the_neutral_weight():
    by_share = {0.0: {0.5: 0.8, 1.0: 0.85}, 0.5: {0.5: 0.9, 1.0: 0.9}, 1.0: {0.5: 0.9, 1.0: 0.7}}
    assert choose_share(by_share) == (0.5, 0.5)
    assert choose_share(by_share, fixed=1.0) == (0.5, 1.0)
    assert choose_share({0.0: {0.75: 0.9}, 1.0: {0.75: 0.9}}) == (0.0, 0.75)


def test_validate_keeps_the_padim_share_whose_memory_map_separates_the_variant():
    """The memory's map at each PaDiM share: only PaDiM's part shows the defect."""
    goods = _goods(12)
    noise = np.random.default_rng(1)

    def maps(query, reference):
        departure = _departure(query, reference)
        near = (noise.random((32, 32)) * 0.5).astype(np.float32)  # blind to the defect
        cmp = (noise.random((32, 32)) * 0.5).astype(np.float32)
        return cmp, {s: (1 - s) * near + s * departure for s in SHARES}

    choices = validate(maps, lambda m: float(m.max()), {"a": goods[:4]}, {"a": goods[4:]}, {}, seed=0)
    c = choices["a"]
    assert c.share > 0.0 and c.weight >= 0.5 and set(c.by_share) == set(SHARES)
    assert c.auroc == c.by_share[c.share] and c.auroc[c.weight] == 1.0
    assert max(c.by_share[0.0].values()) < 0.9  # the nearest-patch map alone does not separate it
    fixed = validate(maps, lambda m: float(m.max()), {"a": goods[:4]}, {"a": goods[4:]}, {}, seed=0, fixed=0.3)
    assert fixed["a"].weight == 0.3 and 0.3 in fixed["a"].auroc and fixed["a"].share > 0.0


def test_validate_adds_the_memory_sides_value_after_pooling():
    """A side given as (map, value): the score is pool(fused map) + weight * value, so a defect only the
    value shows (PaDiM's peak) is found at the weights that let it in, and in proportion to the weight."""
    goods = _goods(12)
    seen: list[float] = []

    def maps(query, reference):
        departure = float(np.abs(query.astype(np.float32) - reference.astype(np.float32)).max()) / 255.0
        flat = np.full((32, 32), 0.2, np.float32)  # the maps show nothing
        return flat, {s: (flat, s * departure) for s in SHARES}

    def score(m: np.ndarray) -> float:
        seen.append(float(m.max()))
        return float(m.max())

    c = validate(maps, score, {"a": goods[:4]}, {"a": goods[4:]}, {}, seed=0)["a"]
    assert seen == pytest.approx([0.2] * len(seen))  # the value never reaches the pooled map
    assert c.by_share[0.0][1.0] == 0.5  # share 0: no value, nothing separates
    assert c.by_share[1.0][0.0] == 0.5  # weight 0: the memory's side is left out
    assert c.by_share[1.0][1.0] > 0.9 and c.share > 0.0 and c.weight > 0.0


def test_all_defects_validate_where_nothing_is_trained_on_them():
    goods = ["mono"] * 20 + ["poly"] * 5
    defects = ["mono"] * 25 + ["poly"] * 25
    held_good, held_bad = validation_split(goods, defects, 0.2, seed=0, all_defects=True)
    assert held_good == validation_split(goods, defects, 0.2, seed=0)[0]  # the good images' split is the same
    assert all(held_bad[:25]) and not any(held_bad[25:])  # poly holds no good image out: it measures nothing


def test_auroc_standard_error_follows_hanley_and_mcneil():
    # A = 0.9 on 50 + 50: Q1 = 0.9 / 1.1, Q2 = 1.62 / 1.9, the variance written out.
    a, q1, q2 = 0.9, 0.9 / 1.1, 1.62 / 1.9
    expected = np.sqrt((a * (1 - a) + 49 * (q1 - a * a) + 49 * (q2 - a * a)) / 2500)
    assert auroc_standard_error(0.9, 50, 50) == pytest.approx(expected) and 0.02 < expected < 0.05
    assert auroc_standard_error(0.9, 200, 200) < auroc_standard_error(0.9, 50, 50)  # more images, less noise
    assert auroc_standard_error(1.0, 10, 10) < 1e-3


def test_choose_within_keeps_the_simplest_pair_within_the_noise():
    by_share = {0.0: {0.75: 0.90, 1.0: 0.88}, 0.25: {0.75: 0.95, 1.0: 0.941},
                0.5: {0.75: 0.948, 1.0: 0.943}, 1.0: {0.75: 0.94, 1.0: 0.93}}
    assert choose_within(by_share, 0.0) == (0.25, 0.75)  # no tolerance: the best
    assert choose_within(by_share, 0.01) == (0.5, 1.0)  # weight 1, then the share nearest 0.5
    assert choose_within(by_share, 0.004) == (0.5, 0.75)  # weight 1 is further; share 0.5 lies within it
    assert choose_within(by_share, 0.08) == (0.0, 1.0)  # share 0 within it: no PaDiM part at all
    assert choose_within(by_share, 0.01, fixed=0.75) == (0.5, 0.75)
    assert choose_within({0.0: {0.5: 0.9, 1.0: 0.9}}, 0.0) == (0.0, 1.0)


def test_validate_keeps_a_smaller_weight_only_when_it_is_better_by_more_than_the_noise():
    goods = _goods(40)
    noise = np.random.default_rng(1)

    def maps(query, reference):
        # The comparison's map shows the defect plainly, the memory's a little, drowned in noise.
        departure = _departure(query, reference)
        return departure, (0.05 * departure + noise.random((32, 32)) * 0.5).astype(np.float32)

    c = validate(maps, lambda m: float(m.max()), {"a": goods[:10]}, {"a": goods[10:]}, {}, seed=0)["a"]
    assert c.auroc[0.0] - c.auroc[1.0] > auroc_standard_error(c.auroc[0.0], 30, 30) and c.weight < 1.0


def test_the_adapted_threshold_is_the_held_out_good_images_quantile():
    a = VariantChoice(1.0, {1.0: 0.9}, 3, 3, "synthetic", normal_scores=[0.2, 0.4, 0.6])
    b = VariantChoice(1.0, {1.0: 0.9}, 2, 2, "synthetic", normal_scores=[0.8, 1.0])
    t, n = normal_threshold({"a": a, "b": b})
    assert n == 5 and t == pytest.approx(np.quantile([0.2, 0.4, 0.6, 0.8, 1.0], 0.95))
    assert normal_threshold({"a": VariantChoice(1.0, {1.0: 0.9}, 0, 0, "synthetic")}) is None

