"""PaDiM fitted on a lot itself (``batch --mutual --aligned``): fitted twice, the second time without the share the
first fit scored highest, so the lot's defects neither shape the Gaussians nor hide among them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adcopilot.model.lot_padim import TRIM, lot_padim_scores
from adcopilot.model.padim import PadimAccumulator, channel_subset


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
    np.testing.assert_allclose(lot_padim_scores(lot, size=64), fit_score(kept), rtol=1e-5)
    # Fitted once on everything, the defects raise their positions' variance and score lower than after the trim.
    second = lot_padim_scores(lot, size=64)
    assert second[2] > first[2] and second[9] > first[9]


def test_a_lot_of_fewer_than_three_images_is_refused() -> None:
    with pytest.raises(ValueError, match="three images or more, got 2"):
        lot_padim_scores(_aligned_lot(2, []), size=64)
