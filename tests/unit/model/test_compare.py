"""The Comparison Encoder: released layout, shapes, pairing rule, gradients, order sensitivity."""

from __future__ import annotations

import pytest
import torch

from adcopilot.model.compare import ComparisonConfig, ComparisonEncoder, grid_positions, rotary_2d

TINY = ComparisonConfig(width=32, num_heads=4, mlp_hidden=48, num_queries=5, out_width=24)


def test_released_layout_parameter_count_and_names():
    enc = ComparisonEncoder(ComparisonConfig())
    sd = enc.state_dict()
    assert len(sd) == 36
    assert sum(v.numel() for v in sd.values()) == 63_801_344
    assert sd["encoder_cross_attn1.kv.weight"].shape == (2560, 1280)
    assert sd["query_embeddings"].shape == (100, 1280)
    assert sd["compare_projector.weight"].shape == (3584, 1280)
    assert "encoder_mlp2.gate_proj.weight" in sd and "encoder_norm4.weight" in sd


def test_shapes_with_different_token_counts():
    torch.manual_seed(0)
    enc = ComparisonEncoder(TINY)
    cur, prev = torch.randn(2, 16, 32), torch.randn(2, 48, 32)  # 3 references' worth of tokens
    tokens, cur_out = enc(cur, prev)
    assert tokens.shape == (2, 5, 24) and cur_out.shape == (2, 16, 32)


def test_pairing_rule():
    torch.manual_seed(0)
    enc = ComparisonEncoder(TINY).eval()
    feats = torch.randn(3, 10, 32)  # ref1, ref2, query
    seq = enc.forward_sequence(feats)
    assert torch.allclose(seq[0], enc(feats[:1], feats[:1])[0][0], atol=1e-5)  # first with itself
    assert torch.allclose(seq[1], enc(feats[1:2], feats[0:1])[0][0], atol=1e-5)  # ref2 with ref1
    assert torch.allclose(seq[2], enc(feats[2:3], feats[1:2])[0][0], atol=1e-5)  # query with ref2


def test_order_matters():
    torch.manual_seed(0)
    enc = ComparisonEncoder(TINY).eval()
    a, b = torch.randn(1, 10, 32), torch.randn(1, 10, 32)
    t_ab, _ = enc(a, b)
    t_ba, _ = enc(b, a)
    assert not torch.allclose(t_ab, t_ba, atol=1e-4)


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    enc = ComparisonEncoder(ComparisonConfig(**{**TINY.to_dict(), "depth": 2, "rope_2d": True}))
    pos = grid_positions(3, 4)
    tokens, cur = enc(torch.randn(2, 12, 32), torch.randn(2, 12, 32), pos, pos)
    (tokens.square().mean() + cur.square().mean()).backward()
    missing = [n for n, p in enc.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing


def test_mlp2_sign_is_applied():
    torch.manual_seed(0)
    cfg_minus = ComparisonConfig(**TINY.to_dict())
    cfg_plus = ComparisonConfig(**{**TINY.to_dict(), "mlp2_sign": 1.0})
    a = ComparisonEncoder(cfg_minus).eval()
    b = ComparisonEncoder(cfg_plus).eval()
    b.load_state_dict(a.state_dict())
    x, y = torch.randn(1, 6, 32), torch.randn(1, 6, 32)
    assert not torch.allclose(a(x, y)[1], b(x, y)[1])


def test_rotary_is_relative():
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)
    p1, p2 = torch.tensor([[2, 3]]), torch.tensor([[5, 1]])
    shift = torch.tensor([[4, 7]])
    d1 = (rotary_2d(q, p1, 100.0) * rotary_2d(k, p2, 100.0)).sum()
    d2 = (rotary_2d(q, p1 + shift, 100.0) * rotary_2d(k, p2 + shift, 100.0)).sum()
    assert torch.allclose(d1, d2, atol=1e-4)


def test_cached_first_queries_give_the_same_encoding():
    torch.manual_seed(0)
    enc = ComparisonEncoder(ComparisonConfig(**{**TINY.to_dict(), "depth": 2, "rope_2d": True})).eval()
    cur, prev = torch.randn(1, 16, 32), torch.randn(1, 32, 32)
    pos = grid_positions(4, 4)
    prev_pos = pos.repeat(2, 1)
    with torch.no_grad():
        want = enc.encode(cur, prev, pos, prev_pos)
        cached = enc.first_queries(prev, prev_pos)
        got = enc.encode(cur, prev, pos, prev_pos, prev_queries=cached)
    assert cached.shape == (1, 4, 32, 8)
    for w, g in zip(want, got, strict=True):
        assert torch.allclose(w, g, atol=1e-6)


def test_width_must_split_into_heads():
    with pytest.raises(ValueError, match="width 30 is not divisible by num_heads 4"):
        ComparisonEncoder(ComparisonConfig(**{**TINY.to_dict(), "width": 30}))


def test_comparison_queries_start_small():
    # A fresh encoder's queries are drawn with std 0.02, so untrained tokens start near the projector's bias.
    torch.manual_seed(0)
    q = ComparisonEncoder(ComparisonConfig(**{**TINY.to_dict(), "num_queries": 64})).query_embeddings
    assert 0.018 < q.std().item() < 0.022 and abs(q.mean().item()) < 0.003
