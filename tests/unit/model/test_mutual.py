"""Lot-level mutual scoring: in a lot of shots of one product the one with a defect scores highest, a
patch shared by every image scores zero, a lot of one image is refused; and each part of the recipe
(views, aggregation, the interval mean, the neighbour re-scoring) on tiny tensors, equations written out."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from adcopilot.model.detector import to_batch
from adcopilot.model.mutual import (
    LotViews,
    MutualRecipe,
    aggregate,
    copies,
    image_scores,
    interval_mean,
    lot_features,
    lot_image_scores,
    lot_threshold,
    mutual_patch_scores,
    pool_of,
    relative_patch_values,
    rescore_by_neighbours,
    view_distances,
)
from adcopilot.model.vision import joint_patch_features, load_vision_tower


@pytest.fixture(scope="module")
def tower():
    torch.manual_seed(0)
    return load_vision_tower(pretrained=False).eval()


def _shifted_lot(texture: np.ndarray, n: int = 8) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    base = cv2.resize(texture, (64, 64)).astype(np.float32) / 255.0
    return [np.roll(base, (int(rng.integers(-2, 3)), int(rng.integers(-2, 3))), axis=(0, 1)) for _ in range(n)]


def test_the_defective_image_of_a_lot_scores_highest(tower, texture):
    lot = _shifted_lot(texture)
    lot[5] = lot[5].copy()
    cv2.circle(lot[5], (40, 24), 9, (0.0, 0.0, 0.0), -1)
    recipe = MutualRecipe(layers=("s8", "s16"), windows=(1, 3))
    views = lot_features(tower, to_batch(lot), recipe)
    # One view per (layer, window), layer-major; stride 16 at 64 px: 4 x 4 patches.
    assert [tuple(v.shape) for v in views.views] == [(8, 16, 40), (8, 16, 40), (8, 16, 112), (8, 16, 112)]
    assert all(torch.allclose(v.float().norm(dim=2), torch.ones(8, 16), atol=1e-2) for v in views.views)
    assert views.global_features.shape == (8, 152)
    scores = lot_image_scores(mutual_patch_scores(views, group=3), views.global_features, recipe)
    assert int(scores.argmax()) == 5
    # Each view alone ranks it first too.
    for v in views.views:
        assert int(image_scores(mutual_patch_scores([v])).argmax()) == 5


def test_the_default_view_is_the_joint_features_pooled_to_stride_16(tower, texture):
    imgs = _shifted_lot(texture, 2)
    views = lot_features(tower, to_batch(imgs))
    assert MutualRecipe().layers == ("joint",) and len(views.views) == 1
    joint = joint_patch_features(tower.patch_features(to_batch(imgs)))  # (2, 152, 8, 8)
    expected = F.normalize(F.avg_pool2d(joint, 2), dim=1).flatten(2).transpose(1, 2)  # (2, 16, 152)
    assert views.views[0].dtype == torch.bfloat16
    assert torch.allclose(views.views[0].float(), expected, atol=4e-3)
    assert torch.allclose(views.global_features, F.normalize(expected.mean(1), dim=1), atol=1e-5)


def test_identical_images_score_zero_and_one_image_is_refused(tower, texture):
    img = cv2.resize(texture, (64, 64)).astype(np.float32) / 255.0
    views = lot_features(tower, to_batch([img, img, img]))
    assert float(mutual_patch_scores(views).abs().max()) < 1e-5
    with pytest.raises(ValueError):
        mutual_patch_scores(LotViews([v[:1] for v in views.views], views.global_features[:1]))


def test_view_distances_are_one_minus_the_best_cosine_and_infinite_to_itself():
    # Three images of two patches in 2-D: e0 = (1, 0), e1 = (0, 1), d = (1, 1)/sqrt 2.
    e0, e1, dg = [1.0, 0.0], [0.0, 1.0], [math.sqrt(0.5), math.sqrt(0.5)]
    view = torch.tensor([[e0, e1], [e0, e0], [dg, dg]])  # (N=3, P=2, C=2)
    d = view_distances(view, [0, 2], chunk=2)  # (R=2, N=3, P=2)
    c = 1 - math.sqrt(0.5)
    expected = torch.tensor([
        [[math.inf, math.inf], [0.0, 1.0], [c, c]],  # image 0's patches e0, e1 against images 0, 1, 2
        [[c, c], [c, c], [math.inf, math.inf]],  # image 2's patches d, d
    ])
    assert torch.allclose(d, expected)


def test_interval_mean_averages_the_chosen_ranks_of_the_sorted_distances():
    # One image, one patch, distances to 10 others (and its own inf at the end).
    dist = torch.tensor([0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6, 1.0, math.inf]).view(1, 11, 1)
    ranked = sorted(dist.flatten().tolist())[:10]  # 0.1 .. 1.0
    # [0, 0.3): ranks 0..2; [0.1, 0.3): ranks 1..2; [0.25, 0.3): ranks floor(2.5)=2 .. ceil(3)-1=2.
    assert interval_mean(dist, (0.0, 0.3), others=10).item() == pytest.approx(np.mean(ranked[0:3]))
    assert interval_mean(dist, (0.1, 0.3), others=10).item() == pytest.approx(np.mean(ranked[1:3]))
    assert interval_mean(dist, (0.25, 0.3), others=10).item() == pytest.approx(ranked[2])
    # A share smaller than one image still takes one; the whole range never reaches the inf.
    assert interval_mean(dist, (0.0, 0.01), others=10).item() == pytest.approx(0.1)
    assert interval_mean(dist, (0.0, 1.0), others=10).item() == pytest.approx(np.mean(ranked))


def test_patch_values_are_the_mean_over_views_of_the_interval_means():
    torch.manual_seed(1)
    views = [F.normalize(torch.randn(5, 4, c), dim=2) for c in (3, 6)]
    got = mutual_patch_scores(views, (0.0, 0.5), group=2)  # (5, 4)
    for i in range(5):
        per_view = []
        for v in views:
            d = 1 - torch.einsum("pc,jqc->jpq", v[i], v).amax(2)  # (5, P)
            others = torch.cat([d[:i], d[i + 1 :]]).sort(dim=0).values  # (4, P)
            per_view.append(others[:2].mean(0))  # ceil(0.5 * 4) = 2 closest
        assert torch.allclose(got[i], torch.stack(per_view).mean(0), atol=1e-5)
    # Some rows only: the same values as scoring all.
    assert torch.allclose(mutual_patch_scores(views, (0.0, 0.5), rows=[3, 1]), got[[3, 1]])


def test_against_a_pool_each_image_is_compared_with_the_pool_less_itself():
    torch.manual_seed(2)
    views = [F.normalize(torch.randn(6, 4, c), dim=2) for c in (3, 5)]
    pool = [0, 2, 3, 5]
    got = mutual_patch_scores(views, (0.0, 0.5), pool=pool, group=4)  # (6, 4)
    for i in range(6):
        per_view = []
        for v in views:
            others = [j for j in pool if j != i]  # 3 for an image of the pool, 4 for one outside it
            d = (1 - torch.einsum("pc,jqc->jpq", v[i], v[others]).amax(2)).sort(dim=0).values  # (M, P)
            per_view.append(d[: math.ceil(0.5 * len(others))].mean(0))
        assert torch.allclose(got[i], torch.stack(per_view).mean(0), atol=1e-5)
    # The whole lot as the pool is the first pass.
    assert torch.allclose(mutual_patch_scores(views, (0.0, 0.5), pool=range(6)), mutual_patch_scores(views, (0.0, 0.5)))
    with pytest.raises(ValueError, match="two images or more"):
        mutual_patch_scores(views, pool=[3])


def test_a_copy_of_an_image_is_left_out_of_its_comparisons_as_the_image_itself_is():
    torch.manual_seed(3)
    views = [F.normalize(torch.randn(6, 4, c), dim=2) for c in (16, 24)]
    with_copy = [torch.cat([v, v[2:3]]) for v in views]  # image 6 is image 2 again
    alone = mutual_patch_scores(views, (0.0, 0.5))
    got = mutual_patch_scores(with_copy, (0.0, 0.5), twin_ratio=0.1, group=3)
    # Image 2 and its copy each meet the other five images, as image 2 did in the lot without the copy.
    assert torch.allclose(got[2], alone[2], atol=1e-5) and torch.allclose(got[6], alone[2], atol=1e-5)
    # Without the rule each finds itself in the other: every patch at distance 0 among its closest.
    plain = mutual_patch_scores(with_copy, (0.0, 0.5))
    assert float(plain[2].mean()) < 0.75 * float(alone[2].mean())
    # The second pass too: a pool holding both, and a pool holding only the copy.
    for pool, without in (([0, 2, 3, 6], [0, 2, 3]), ([0, 1, 6], [0, 1])):  # image 2 meets 0 and 3; 0 and 1
        got = mutual_patch_scores(with_copy, (0.0, 0.5), pool=pool, twin_ratio=0.1)
        assert torch.allclose(got[2], mutual_patch_scores(views, (0.0, 0.5), pool=without)[2], atol=1e-5)
    # A lot of nothing but copies keeps them (there is nothing else to compare with).
    same = [v[:1].repeat(3, 1, 1) for v in views]
    assert float(mutual_patch_scores(same, twin_ratio=0.1).abs().max()) < 1e-5


def test_copies_are_pairs_far_closer_than_the_rows_median():
    inf = math.inf
    # Row 0 meets images 1-4 at mean distances 0.5, 0.6, 0.04, 0.7 (median 0.55): image 3 is a copy at 0.1.
    dist = torch.tensor([[inf, 0.5, 0.6, 0.04, 0.7]]).view(1, 5, 1).repeat(1, 1, 3)
    assert copies(dist, 0.1).tolist() == [[False, False, False, True, False]]
    assert copies(dist, 0.05).tolist() == [[False] * 5]


def test_the_pool_is_what_the_lot_threshold_calls_normal_at_least_two():
    scores = torch.tensor([0.50, 0.52, 0.49, 0.51, 0.90, 0.48, 0.53, 0.70])
    # median 0.515, MAD 0.02: threshold at k = 1.5 is 0.515 + 1.5 * 1.4826 * 0.02 = 0.5595.
    assert lot_threshold(scores.numpy(), 1.5) == pytest.approx(0.515 + 1.5 * 1.4826 * 0.02)
    assert pool_of(scores, 1.5) == [0, 1, 2, 3, 5, 6]
    assert pool_of(scores, 10.0) == [0, 1, 2, 3, 5, 6, 7]
    # Below the threshold fewer than two: the two lowest (ties in index order).
    assert pool_of(torch.tensor([0.3, 0.1, 0.1, 0.1]), 1.5) == [1, 2, 3]  # no spread: its floor, 0.01, keeps the equals
    assert pool_of(torch.tensor([0.5, 0.2, 0.2, 0.9]), 1e-9) == [1, 2]


def test_aggregation_is_the_renormalised_neighbourhood_mean_without_padding():
    grid = F.normalize(torch.randn(1, 4, 3, 3), dim=1)
    agg = aggregate(grid, 3)
    centre = F.normalize(grid[0].flatten(1).mean(1), dim=0)  # all 9 cells
    corner = F.normalize(grid[0, :, :2, :2].flatten(1).mean(1), dim=0)  # the 4 cells inside the image
    assert torch.allclose(agg[0, :, 1, 1], centre, atol=1e-6)
    assert torch.allclose(agg[0, :, 0, 0], corner, atol=1e-6)
    assert aggregate(grid, 1) is grid


def test_neighbour_rescoring_is_the_similarity_weighted_mean_over_the_k_nearest():
    # Images 0 and 1 alike (cos 0.8), image 2 apart (cos 0 to both).
    g = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.0, 0.0, 1.0]])
    s = torch.tensor([1.0, 3.0, 10.0])
    # k = 2: the image (weight 1) and its nearest (weight its cosine).
    k2 = torch.tensor([(1 + 0.8 * 3) / 1.8, (3 + 0.8 * 1) / 1.8, (10 + 0 * 1) / 1.0])
    assert torch.allclose(rescore_by_neighbours(s, g, (2,)), k2)
    # k = 3 for image 0: 1, 0.8, 0 as weights; the mean over k = 2 and 3.
    k3_0 = (1 + 0.8 * 3 + 0 * 10) / 1.8
    assert rescore_by_neighbours(s, g, (2, 3))[0].item() == pytest.approx((k2[0].item() + k3_0) / 2)
    assert torch.equal(rescore_by_neighbours(s, g, ()), s)
    # k = 1 is the image alone.
    assert torch.allclose(rescore_by_neighbours(s, g, (1,)), s)


def test_the_floor_subtracts_each_images_own_quantile_and_the_score_is_the_top_k_mean_above_it():
    # Image 0: level 0.2 everywhere but one patch at 0.5; image 1: level 0.4 everywhere, one at 0.5.
    v = torch.tensor([[0.2, 0.2, 0.2, 0.5], [0.4, 0.4, 0.4, 0.5]])
    rel = relative_patch_values(v, 0.25)  # the 0.25 quantile of each row is its level
    assert torch.allclose(rel, torch.tensor([[0.0, 0.0, 0.0, 0.3], [0.0, 0.0, 0.0, 0.1]]))
    # Raw, the uniformly farther image ranks first; with the floor, the one with the local defect.
    g = torch.eye(2)
    raw = lot_image_scores(v, g, MutualRecipe(top_k=2))
    floored = lot_image_scores(v, g, MutualRecipe(top_k=2, floor=0.25))
    assert raw.tolist() == pytest.approx([0.35, 0.45]) and floored.tolist() == pytest.approx([0.15, 0.05])
    assert relative_patch_values(v, None) is v
    # Never below zero: the quantile of the lowest patch is the patch itself.
    assert float(relative_patch_values(torch.rand(5, 9), 0.0).min()) == 0.0


@pytest.mark.parametrize(
    ("recipe", "problem"),
    [
        (MutualRecipe(layers=("s4",)), "unknown layer 's4'"),
        (MutualRecipe(windows=(2,)), "window 2 must be an odd number"),
        (MutualRecipe(windows=()), "at least one layer and one window"),
        (MutualRecipe(interval=(0.3, 0.1)), "interval (0.3, 0.1) must satisfy"),
        (MutualRecipe(interval=(0.0, float("nan"))), "must satisfy 0 <= low < high <= 1"),
        (MutualRecipe(top_k=0), "top_k must be at least 1"),
        (MutualRecipe(floor=1.5), "floor 1.5 must be a quantile in [0, 1]"),
        (MutualRecipe(floor=float("inf")), "must be a quantile"),
        (MutualRecipe(neighbours=(0,)), "neighbours 0 must be at least 1"),
        (MutualRecipe(pool_k=0.0), "pool_k 0.0 must be a positive number"),
        (MutualRecipe(pool_k=float("nan")), "must be a positive number"),
        (MutualRecipe(pool_interval=(0.2, 0.2)), "pool_interval (0.2, 0.2) must satisfy"),
        (MutualRecipe(twin_ratio=0.0), "twin_ratio 0.0 must lie in (0, 1)"),
        (MutualRecipe(twin_ratio=float("nan")), "twin_ratio nan must lie in (0, 1)"),
    ],
)
def test_bad_recipes_are_named(recipe, problem):
    assert any(problem in p for p in recipe.problems())
    assert MutualRecipe().problems() == []
