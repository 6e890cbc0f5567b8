"""PaDiM's statistics, distance, map and score against the equations written out on a tiny case."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from adcopilot.model.padim import PadimAccumulator, PadimStats, channel_subset, embedding, gaussian_blur


def _scales(seed: int, n: int) -> dict[str, torch.Tensor]:
    """n images' raw stage outputs on a 4 x 4 grid: 3 stride-8 channels, 2 stride-16 channels (2 x 2)."""
    g = torch.Generator().manual_seed(seed)
    return {"s8": torch.randn(n, 3, 4, 4, generator=g) * 2 + 1, "s16": torch.randn(n, 2, 2, 2, generator=g)}


def test_embedding_repeats_the_coarse_stage_and_keeps_the_chosen_channels() -> None:
    s = _scales(0, 1)
    idx = torch.tensor([4, 0, 3])
    e = embedding(s, idx)  # (1, 3, 4, 4)
    assert torch.equal(e[0, 1], s["s8"][0, 0])
    # Channel 3 is the first stride-16 channel; position (y, x) takes its cell (y // 2, x // 2).
    for y in range(4):
        for x in range(4):
            assert e[0, 2, y, x] == s["s16"][0, 0, y // 2, x // 2]
            assert e[0, 0, y, x] == s["s16"][0, 1, y // 2, x // 2]


def test_statistics_and_distance_follow_the_equations() -> None:
    train, test = _scales(1, 6), _scales(2, 2)
    idx = torch.tensor([0, 2, 3, 4])
    acc = PadimAccumulator(idx)
    acc.add({k: v[:2] for k, v in train.items()})  # in two parts: sums, not stored embeddings
    acc.add({k: v[2:] for k, v in train.items()})
    stats = acc.finish()
    x = embedding(train, idx).double().numpy().reshape(6, 4, 16)  # (n, d, P)
    q = embedding(test, idx).double().numpy().reshape(2, 4, 16)
    for p in range(16):
        mu = x[:, :, p].mean(axis=0)
        cov = np.cov(x[:, :, p], rowvar=False) + (0.01 + 1e-5) * np.eye(4)  # unbiased, regularised
        inv = np.linalg.inv(cov)
        np.testing.assert_allclose(stats.mean[:, p].numpy(), mu, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(stats.inv_covariance[p].numpy(), inv, rtol=1e-4, atol=1e-4)
        for b in range(2):
            delta = q[b, :, p] - mu
            expected = np.sqrt(max(0.0, delta @ inv @ delta))
            assert float(stats.distance(test)[b, 0].flatten()[p]) == pytest.approx(expected, rel=1e-4)
    # A training image lies nearer its positions' Gaussians than a new one on average.
    assert stats.distance(train).mean() < stats.distance(test).mean()


def test_map_is_the_bilinear_upsampled_blurred_distance_and_the_score_its_maximum() -> None:
    acc = PadimAccumulator(torch.arange(5))
    acc.add(_scales(3, 5))
    stats = acc.finish()
    test = _scales(4, 1)
    scores, amap = stats.anomalib_map(test, 32)  # (1,), (1, 1, 32, 32)
    d = stats.distance(test)[0, 0].numpy()
    # align_corners=False bilinear up-sampling is cv2's INTER_LINEAR; the blur, cv2's (reflected borders).
    up = cv2.resize(d, (32, 32), interpolation=cv2.INTER_LINEAR)
    expected = cv2.GaussianBlur(up, (33, 33), 4, borderType=cv2.BORDER_REFLECT_101)
    np.testing.assert_allclose(amap[0, 0].numpy(), expected, rtol=1e-5, atol=1e-5)
    assert float(scores[0]) == pytest.approx(float(expected.max()), rel=1e-5)


def test_blur_keeps_a_constant_and_spreads_a_spike_as_a_gaussian() -> None:
    c = torch.full((1, 1, 40, 40), 3.0)
    torch.testing.assert_close(gaussian_blur(c, 4), c)
    spike = torch.zeros(1, 1, 41, 41)
    spike[0, 0, 20, 20] = 1.0
    out = gaussian_blur(spike, 4)[0, 0]
    assert float(out.sum()) == pytest.approx(1.0, rel=1e-5)
    ratio = float(out[20, 24] / out[20, 20])  # 4 px = one sigma away: exp(-1/2)
    assert ratio == pytest.approx(np.exp(-0.5), rel=1e-5)


def test_channel_subset_is_a_seeded_prefix_of_a_permutation() -> None:
    a, b = channel_subset(152, 100, seed=0), channel_subset(152, 100, seed=0)
    assert torch.equal(a, b) and len(set(a.tolist())) == 100 and int(a.max()) < 152
    assert not torch.equal(a, channel_subset(152, 100, seed=1))


def test_one_image_or_inconsistent_shapes_are_refused() -> None:
    acc = PadimAccumulator(torch.arange(3))
    acc.add(_scales(5, 1))
    with pytest.raises(ValueError, match="two good images"):
        acc.finish()
    with pytest.raises(ValueError, match="grid"):
        acc.add({"s8": torch.zeros(1, 3, 2, 2), "s16": torch.zeros(1, 2, 1, 1)})
    with pytest.raises(ValueError, match="inconsistent"):
        PadimStats(torch.arange(3), torch.zeros(3, 4), torch.zeros(4, 2, 2), (2, 2), 2)
