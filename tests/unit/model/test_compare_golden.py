"""The Comparison Encoder against its equations, rebuilt here with plain tensor operations.

The reference below is written from the published equations and the released checkpoint's layout,
not from the module: RMSNorm, cross-attention with a fused key/value projection (rows 0..C-1 are K,
C..2C-1 are V) and per-head softmax(Q K^T * d^-0.5) V, SwiGLU MLPs, the minus sign of the second
encoder MLP, the decoder of learnable queries and the projector. Every parameter is drawn at random
(norm gains and biases included, so that using one norm in place of another shows), and the module
must reproduce the reference in float64 at the nano scale (2-D rotary positions) and at the full
scale (no rotary), with tiny widths. Gradients are checked numerically on a tiny size.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import functional_call

from adcopilot.full.configuration_adcopilot import ADCopilotConfig
from adcopilot.model.compare import ComparisonConfig, ComparisonEncoder, grid_positions
from adcopilot.model.nano import NanoComparisonModel, NanoConfig

Params = dict[str, torch.Tensor]


# ----------------------------------------------------------------------------- the reference
def rms_norm(x: torch.Tensor, gain: torch.Tensor, eps: float) -> torch.Tensor:
    return x / torch.sqrt((x * x).mean(dim=-1, keepdim=True) + eps) * gain


def swiglu(p: Params, prefix: str, x: torch.Tensor) -> torch.Tensor:
    gate = x @ p[f"{prefix}.gate_proj.weight"].T
    up = x @ p[f"{prefix}.up_proj.weight"].T
    return (gate * torch.sigmoid(gate) * up) @ p[f"{prefix}.down_proj.weight"].T


def rotate(x: torch.Tensor, pos: torch.Tensor, theta: float) -> torch.Tensor:
    """Qwen2-VL's vision rotary on one head (n, d): rows rotate the first quarter-frequencies, columns the rest."""
    d = x.shape[-1]
    inv_freq = 1.0 / theta ** (torch.arange(0, d // 2, 2, dtype=torch.float64) / (d // 2))  # (d/4,)
    freqs = torch.cat([pos[:, :1].double() * inv_freq, pos[:, 1:].double() * inv_freq], dim=-1)  # (n, d/2)
    emb = torch.cat([freqs, freqs], dim=-1)  # (n, d)
    rotated_half = torch.cat([-x[:, d // 2 :], x[:, : d // 2]], dim=-1)
    return x * emb.cos() + rotated_half * emb.sin()


def cross_attention(
    p: Params, prefix: str, heads: int, q_in: torch.Tensor, kv_in: torch.Tensor,
    q_pos: torch.Tensor | None, kv_pos: torch.Tensor | None, theta: float,
) -> torch.Tensor:
    """One sample: q_in (n, C) attends to kv_in (m, C) -> (n, C)."""
    c = q_in.shape[-1]
    d = c // heads
    q = q_in @ p[f"{prefix}.q_proj.weight"].T + p[f"{prefix}.q_proj.bias"]
    kv_w, kv_b = p[f"{prefix}.kv.weight"], p[f"{prefix}.kv.bias"]
    k = kv_in @ kv_w[:c].T + kv_b[:c]  # fused rows 0..C-1: keys
    v = kv_in @ kv_w[c:].T + kv_b[c:]  # rows C..2C-1: values
    outs = []
    for h in range(heads):
        qh, kh, vh = q[:, h * d : (h + 1) * d], k[:, h * d : (h + 1) * d], v[:, h * d : (h + 1) * d]
        if q_pos is not None:
            qh, kh = rotate(qh, q_pos, theta), rotate(kh, kv_pos, theta)
        weights = torch.softmax(qh @ kh.T / math.sqrt(d), dim=-1)  # (n, m)
        outs.append(weights @ vh)
    return torch.cat(outs, dim=-1) @ p[f"{prefix}.proj.weight"].T + p[f"{prefix}.proj.bias"]


def layer_names(i: int) -> dict[str, str]:
    if i == 0:
        return {"xa1": "encoder_cross_attn1", "xa2": "encoder_cross_attn2", "mlp1": "encoder_mlp1",
                "mlp2": "encoder_mlp2", **{f"n{j}": f"encoder_norm{j}" for j in range(1, 5)}}
    base = f"extra_layers.{i - 1}"
    return {"xa1": f"{base}.cross_attn1", "xa2": f"{base}.cross_attn2", "mlp1": f"{base}.mlp1",
            "mlp2": f"{base}.mlp2", **{f"n{j}": f"{base}.norm{j}" for j in range(1, 5)}}


def reference_forward(
    p: Params, cfg: ComparisonConfig, cur: torch.Tensor, prev: torch.Tensor,
    cur_pos: torch.Tensor | None = None, prev_pos: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The equations, one sample at a time: cur (B, N, C), prev (B, M, C) -> (tokens (B, L, out), cur)."""
    if not cfg.rope_2d:
        cur_pos = prev_pos = None
    heads, eps, t = cfg.num_heads, cfg.eps, cfg.rope_theta
    all_tokens, all_cur = [], []
    for c_i, p_i in zip(cur, prev, strict=True):
        for i in range(cfg.depth):
            n = layer_names(i)

            def norm(name: str, x: torch.Tensor, n: dict[str, str] = n) -> torch.Tensor:
                return rms_norm(x, p[f"{n[name]}.weight"], eps)

            # 1. the previous image attends to the current one
            p_i = p_i + cross_attention(p, n["xa1"], heads, norm("n1", p_i), norm("n1", c_i), prev_pos, cur_pos, t)
            # 2.
            p_i = p_i + swiglu(p, n["mlp1"], norm("n2", p_i))
            # 3. the current image attends to the updated previous one
            c_i = c_i + cross_attention(p, n["xa2"], heads, norm("n3", c_i), norm("n3", p_i), cur_pos, prev_pos, t)
            # 4. minus
            c_i = c_i - swiglu(p, n["mlp2"], norm("n4", c_i))
        # 5. decoder of learnable queries
        queries = p["query_embeddings"]
        g1 = p["decoder_norm1.weight"]
        q = queries + cross_attention(
            p, "decoder_cross_attn", heads, rms_norm(queries, g1, eps), rms_norm(c_i, g1, eps), None, None, t
        )
        # 6.
        q = q + swiglu(p, "decoder_mlp", rms_norm(q, p["decoder_norm2.weight"], eps))
        all_tokens.append(q @ p["compare_projector.weight"].T + p["compare_projector.bias"])
        all_cur.append(c_i)
    return torch.stack(all_tokens), torch.stack(all_cur)


# ----------------------------------------------------------------------------- helpers
def randomise(module: torch.nn.Module, seed: int) -> None:
    """Draw every parameter at random (gains near 1, not all 1; biases non-zero), in float64."""
    g = torch.Generator().manual_seed(seed)
    module.double()
    norm_gains = {id(m.weight) for m in module.modules() if isinstance(m, torch.nn.RMSNorm | torch.nn.LayerNorm)}
    with torch.no_grad():
        for name, prm in module.named_parameters():
            noise = torch.randn(prm.shape, generator=g, dtype=torch.float64)
            if id(prm) in norm_gains:
                prm.copy_(1.0 + 0.5 * noise)
            elif name.endswith(".bias"):
                prm.copy_(0.3 * noise)
            elif prm.ndim == 2 and name != "query_embeddings":
                prm.copy_(noise / math.sqrt(prm.shape[1]))
            else:
                prm.copy_(noise)


def full_scale_config(depth: int = 1) -> ComparisonConfig:
    """The full model's encoder settings, as its configuration derives them, at tiny widths."""
    cfg = ADCopilotConfig(
        vision_config=dict(hidden_size=32, intermediate_size=48, num_heads=4, out_hidden_size=40, depth=1),
        text_config=dict(hidden_size=40, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=64),
        compare_token_size=6,
        compare_depth=depth,
    )
    return cfg.comparison_config()


def nano_scale_config(depth: int = 1) -> ComparisonConfig:
    """The nano model's encoder settings at its shipped width."""
    return NanoConfig(depth=depth).compare_config()


def narrow_heads_config(depth: int = 1) -> ComparisonConfig:
    """Rotary heads of 4 channels: one frequency per axis, the smallest head that is rotated."""
    return ComparisonConfig(width=8, num_heads=2, mlp_hidden=12, num_queries=3, out_width=6, depth=depth, rope_2d=True)


def other_theta_config(depth: int = 1) -> ComparisonConfig:
    """Rotary heads of 8 channels (two frequencies per axis, so theta matters) with a theta of 10,000."""
    return ComparisonConfig(
        width=16, num_heads=2, mlp_hidden=12, num_queries=3, out_width=6, depth=depth, rope_2d=True, rope_theta=1e4
    )


SCALES = {
    "nano": nano_scale_config,
    "full": full_scale_config,
    "nano-narrow-heads": narrow_heads_config,
    "nano-theta-1e4": other_theta_config,
}


def close(a: torch.Tensor, b: torch.Tensor, rope: bool = False) -> None:
    """Equal to float64 rounding; with rotary positions, to the float32 precision of the module's angles."""
    assert a.shape == b.shape
    err = (a - b).abs().max().item()
    tol = 1e-6 if rope else 1e-11
    assert err < tol * max(1.0, b.abs().max().item()), f"max abs difference {err:.3g}"


# ----------------------------------------------------------------------------- golden tests
@pytest.mark.parametrize("scale", sorted(SCALES))
@pytest.mark.parametrize("depth", [1, 2])
def test_forward_matches_the_equations(scale: str, depth: int):
    cfg = SCALES[scale](depth)
    assert cfg.rope_2d == scale.startswith("nano") and cfg.mlp2_sign == -1.0
    enc = ComparisonEncoder(cfg).eval()
    randomise(enc, seed=depth)
    g = torch.Generator().manual_seed(10 + depth)
    cur = torch.randn(2, 12, cfg.width, generator=g, dtype=torch.float64)  # a 3x4 grid
    prev = torch.randn(2, 24, cfg.width, generator=g, dtype=torch.float64)  # two references' worth
    cur_pos, prev_pos = grid_positions(3, 4), grid_positions(3, 4).repeat(2, 1)
    with torch.no_grad():
        tokens, cur_out = enc(cur, prev, cur_pos, prev_pos)
        want_tokens, want_cur = reference_forward(dict(enc.state_dict()), cfg, cur, prev, cur_pos, prev_pos)
    assert tokens.shape == (2, cfg.num_queries, cfg.out_width)
    close(cur_out, want_cur, cfg.rope_2d)
    close(tokens, want_tokens, cfg.rope_2d)


def test_the_reference_itself_is_sensitive_to_what_it_pins():
    """Guards the guard: swapping K and V, or dropping the minus sign, changes the reference output."""
    cfg = full_scale_config()
    enc = ComparisonEncoder(cfg)
    randomise(enc, seed=0)
    p = dict(enc.state_dict())
    g = torch.Generator().manual_seed(0)
    cur, prev = (torch.randn(1, 8, cfg.width, generator=g, dtype=torch.float64) for _ in range(2))
    base = reference_forward(p, cfg, cur, prev)[0]
    c = cfg.width
    for key in ("encoder_cross_attn1", "encoder_cross_attn2", "decoder_cross_attn"):
        swapped = dict(p)
        swapped[f"{key}.kv.weight"] = torch.cat([p[f"{key}.kv.weight"][c:], p[f"{key}.kv.weight"][:c]])
        swapped[f"{key}.kv.bias"] = torch.cat([p[f"{key}.kv.bias"][c:], p[f"{key}.kv.bias"][:c]])
        assert (reference_forward(swapped, cfg, cur, prev)[0] - base).abs().max() > 1e-3
    plus = ComparisonConfig(**{**cfg.to_dict(), "mlp2_sign": 1.0})
    with torch.no_grad():
        enc_plus = ComparisonEncoder(plus).double()
        enc_plus.load_state_dict(p)
        assert (enc_plus(cur, prev)[0] - base).abs().max() > 1e-3


@pytest.mark.parametrize("scale", sorted(SCALES))
def test_forward_sequence_pairs_each_image_with_its_predecessor(scale: str):
    cfg = SCALES[scale]()
    enc = ComparisonEncoder(cfg).eval()
    randomise(enc, seed=3)
    feats = torch.randn(3, 8, cfg.width, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    pos = grid_positions(2, 4)
    with torch.no_grad():
        got = enc.forward_sequence(feats, pos)
    p = dict(enc.state_dict())
    prev = torch.stack([feats[0], feats[0], feats[1]])  # P_0 = I_0, P_i = I_{i-1}
    close(got, reference_forward(p, cfg, feats, prev, pos, pos)[0], cfg.rope_2d)


def test_nano_model_compares_the_query_with_its_references():
    """The nano model feeds the query as "current" and its k references as one "previous" image."""
    cfg = NanoConfig(width=32, num_heads=4, mlp_hidden=40, num_queries=4, out_width=24, head_hidden=8)
    model = NanoComparisonModel(cfg).eval()
    randomise(model, seed=5)
    g = torch.Generator().manual_seed(5)
    qf = torch.randn(1, 152, 3, 3, generator=g, dtype=torch.float64)
    rf = torch.randn(1, 2, 152, 3, 3, generator=g, dtype=torch.float64)  # k = 2 references
    with torch.no_grad():
        got = model(qf, rf)["tokens"]
        cur = model.input_proj(qf.flatten(2).transpose(1, 2))  # (1, 9, C)
        prev = model.input_proj(rf.flatten(3).permute(0, 1, 3, 2).reshape(1, 18, 152))  # (1, 18, C)
    pos = grid_positions(3, 3)
    want = reference_forward(dict(model.compare.state_dict()), cfg.compare_config(), cur, prev, pos, pos.repeat(2, 1))
    close(got, want[0], rope=True)


def test_positions_count_only_with_rope_and_only_when_both_are_given():
    g = torch.Generator().manual_seed(4)
    cur, prev = (torch.randn(1, 6, 16, generator=g, dtype=torch.float64) for _ in range(2))
    pos = grid_positions(2, 3)
    rope = ComparisonEncoder(other_theta_config()).eval()
    plain = ComparisonEncoder(ComparisonConfig(**{**other_theta_config().to_dict(), "rope_2d": False})).eval()
    for enc in (rope, plain):
        randomise(enc, seed=4)
    with torch.no_grad():
        unplaced = rope(cur, prev)[0]
        close(rope(cur, prev, pos, None)[0], unplaced)  # one side's positions alone are ignored
        close(rope(cur, prev, None, pos)[0], unplaced)
        assert (rope(cur, prev, pos, pos)[0] - unplaced).abs().max() > 1e-3
        close(plain(cur, prev, pos, pos)[0], plain(cur, prev)[0])  # without rope_2d, positions are ignored
        close(plain.first_queries(prev, pos), plain.first_queries(prev))
        xa = rope.encoder_cross_attn1
        close(xa(cur, prev, pos, None), xa(cur, prev))
        close(xa(cur, prev, None, pos), xa(cur, prev))


# ----------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("rope_2d", [False, True])
def test_gradients_match_finite_differences(rope_2d: bool):
    cfg = ComparisonConfig(width=8, num_heads=2, mlp_hidden=6, num_queries=3, out_width=5, rope_2d=rope_2d)
    enc = ComparisonEncoder(cfg)
    randomise(enc, seed=7)
    names = [n for n, _ in enc.named_parameters()]
    g = torch.Generator().manual_seed(7)
    cur = torch.randn(1, 4, 8, generator=g, dtype=torch.float64, requires_grad=True)  # a 2x2 grid
    prev = torch.randn(1, 4, 8, generator=g, dtype=torch.float64, requires_grad=True)
    pos = grid_positions(2, 2)
    params = tuple(prm.detach().clone().requires_grad_(True) for prm in enc.parameters())

    def fn(cur: torch.Tensor, prev: torch.Tensor, *values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return functional_call(enc, dict(zip(names, values, strict=True)), (cur, prev, pos, pos))

    assert torch.autograd.gradcheck(fn, (cur, prev, *params), eps=1e-6, atol=1e-6, fast_mode=True)
