"""PaDiM fitted on a lot itself (``batch --mutual --aligned``): fitted twice, the second time without the share the
first fit scored highest, so the lot's defects neither shape the Gaussians nor hide among them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adcopilot.model.lot_padim import TRIM, lot_padim_scores
from adcopilot.model.padim import PadimAccumulator, channel_subset, neighbourhood_means


def _aligned_lot(n: int, defects: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    """n images' raw stage outputs on an 8 x 8 grid (6 stride-8 channels, 4 stride-16 channels): every position has
    its own normal appearance (a mean per position) with small noise; each of the ``defects`` carries a strong
    deviation over 2 x 2 positions of its own (as a lot's defects lie in different places)."""
    g = torch.Generator().manual_seed(seed)
    mean8, mean16 = torch.randn(1, 6, 8, 8, generator=g) * 3, torch.randn(1, 4, 4, 4, generator=g) * 3
    s8 = mean8 + 0.3 * torch.randn(n, 6, 8, 8, generator=g)
    s16 = mean16 + 0.3 * torch.randn(n, 4, 4, 4, generator=g)
    for j, i in enumerate(defects):
        y, x = 2 * (j % 4), 2 * ((j // 4) % 4)
        s8[i, :, y : y + 2, x : x + 2] += 4.0
        s16[i, :, y // 2, x // 2] -= 4.0
    return {"s8": s8.half(), "s16": s16}


def test_the_lots_defects_score_highest_though_they_are_in_the_lot() -> None:
    defects = [3, 11, 17, 25, 31, 38]  # 15 % of the lot
    scores = lot_padim_scores(_aligned_lot(40, defects), size=64)
    assert scores.shape == (40,) and np.isfinite(scores).all()
    assert set(np.argsort(-scores)[: len(defects)].tolist()) == set(defects)


def test_the_second_fit_leaves_out_the_share_the_first_scored_highest() -> None:
    lot = _aligned_lot(20, [2, 9])
    idx = channel_subset(10)

    def fit_score(rows: list[int]) -> np.ndarray:
        acc = PadimAccumulator(idx)
        acc.add({k: v[rows].float() for k, v in lot.items()})
        return acc.finish().anomalib_map({k: v.float() for k, v in lot.items()}, 64)[0].numpy()

    first = fit_score(list(range(20)))
    kept = sorted(np.argsort(first, kind="stable")[: int(20 * (1 - TRIM))].tolist())
    assert 2 not in kept and 9 not in kept
    np.testing.assert_allclose(lot_padim_scores(lot, size=64, neighbourhood=1), fit_score(kept), rtol=1e-5)
    # Fitted once on everything, the defects raise their positions' variance and score lower than after the trim.
    second = lot_padim_scores(lot, size=64, neighbourhood=1)
    assert second[2] > first[2] and second[9] > first[9]


def test_a_lot_of_fewer_than_three_images_is_refused() -> None:
    with pytest.raises(ValueError, match="three images or more, got 2"):
        lot_padim_scores(_aligned_lot(2, []), size=64)


def test_the_default_fits_each_positions_mean_over_its_three_by_three_neighbours() -> None:
    lot = _aligned_lot(20, [2, 9])
    means = {k: torch.nn.functional.avg_pool2d(v.float(), 3, 1, 1, count_include_pad=False) for k, v in lot.items()}
    np.testing.assert_allclose(lot_padim_scores(lot, size=64), lot_padim_scores(means, size=64, neighbourhood=1),
                               rtol=1e-5)
    # At the border the mean is over the positions inside the grid: a constant stays that constant.
    flat = neighbourhood_means({"s8": torch.full((1, 2, 5, 5), 7.0, dtype=torch.float16)}, 3)["s8"]
    assert flat.dtype == torch.float32 and torch.equal(flat, torch.full((1, 2, 5, 5), 7.0))


def test_neighbourhood_means_keep_a_lot_shifted_by_a_position_normal() -> None:
    """Half the lot sits one position to the right of the other half (a cell a few pixels off in its fixture):
    fitted per position alone, the Gaussians see two appearances at every position, which widens them; fitted on
    3 x 3 means, the two halves share most of each window, and the defects stand further above every normal image."""
    g = torch.Generator().manual_seed(2)
    n, defects = 40, [5, 14, 22, 33]
    mean8 = torch.randn(1, 6, 10, 10, generator=g) * 3
    mean16 = torch.randn(1, 4, 5, 5, generator=g) * 3
    s8 = (mean8 + 0.3 * torch.randn(n, 6, 10, 10, generator=g)).clone()
    s16 = mean16 + 0.3 * torch.randn(n, 4, 5, 5, generator=g)
    s8[n // 2 :] = torch.roll(s8[n // 2 :], 1, dims=3)
    for j, i in enumerate(defects):
        y, x = 2 + 2 * j // 4, 2 + 2 * j
        s8[i, :, y : y + 2, x : x + 2] += 3.0
    lot = {"s8": s8, "s16": s16}

    def margin(neighbourhood: int) -> float:
        """The least-scored defect's score over the highest-scored normal image's."""
        scores = lot_padim_scores(lot, size=80, neighbourhood=neighbourhood)
        return float(scores[defects].min() / np.delete(scores, defects).max())

    assert margin(3) > 1.3 * margin(1) > 1.3


def test_an_even_or_empty_neighbourhood_is_refused() -> None:
    for width in (0, 2):
        with pytest.raises(ValueError, match=f"odd width of one position or more, got {width}"):
            lot_padim_scores(_aligned_lot(5, []), size=64, neighbourhood=width)
