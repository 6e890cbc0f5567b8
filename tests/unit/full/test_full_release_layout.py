"""The released model's computation, rebuilt here from its description with plain tensor ops.

The public port of the released Comparison Encoder (described in ``docs/scale.md``) splits the
vision tower's last hidden states per image as they come (the tower's window order), pads every
image of the call with zero rows to the longest, masks the padding as keys, pairs image i with
image i - 1 by a roll over the whole list (image 0 with itself), and merges the attention heads
with an extra transpose: transformers' attention functions return (B, N, H, D); the port
transposes that to (B, H, N, D) and reshapes it to (B, N, H*D). Its positions put all comparison
tokens of an image at (s, s, s), s the image's first position, and the text after them restarts
at s + 1. Nothing here calls the encoder's own methods: the test recomputes from the weights.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from adcopilot.full.processing_adcopilot import format_chat
from adcopilot.full.tiny import build_tiny

PROMPT = [{"role": "user", "content": "Is there any defect?"}]


def _rms(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    h = x.float()
    return w * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)).to(x.dtype)


def _mlp(x: torch.Tensor, m) -> torch.Tensor:
    return F.linear(F.silu(F.linear(x, m.gate_proj.weight)) * F.linear(x, m.up_proj.weight), m.down_proj.weight)


def _xattn(q_in, kv_in, kv_mask, a, heads: int, port_merge: bool) -> torch.Tensor:
    b, n, c = q_in.shape
    m, d = kv_in.shape[1], c // heads
    q = F.linear(q_in, a.q_proj.weight, a.q_proj.bias).reshape(b, n, heads, d).transpose(1, 2)  # (B, H, N, D)
    kv = F.linear(kv_in, a.kv.weight, a.kv.bias).reshape(b, m, 2, heads, d)
    k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)  # (B, H, M, D)
    scores = q @ k.transpose(-1, -2) * d**-0.5
    if kv_mask is not None:
        scores = scores.masked_fill(~kv_mask[:, None, None, :], float("-inf"))
    out = (scores.softmax(-1) @ v).transpose(1, 2)  # what transformers' attention functions return: (B, N, H, D)
    if port_merge:
        out = out.transpose(1, 2)  # the port's extra transpose: back to (B, H, N, D)
    return F.linear(out.reshape(b, n, c), a.proj.weight, a.proj.bias)


def reference_tokens(enc, feats: list[torch.Tensor], heads: int, release: bool) -> torch.Tensor:
    """Comparison tokens (n, L, out) of images ``feats`` per the description (release or standard)."""
    if release:
        longest = max(f.shape[0] for f in feats)
        cur = torch.stack([F.pad(f, (0, 0, 0, longest - f.shape[0])) for f in feats])
        mask = torch.stack([torch.arange(longest) < f.shape[0] for f in feats])
        prev, prev_mask = torch.roll(cur, 1, 0), torch.roll(mask, 1, 0)
        if len(feats) > 1:
            prev[0], prev_mask[0] = prev[1], prev_mask[1]
        return _ref_pairs(enc, cur, prev, mask, prev_mask, heads, True)
    out = []
    for i, f in enumerate(feats):  # one pair at a time, no padding
        p = feats[max(i - 1, 0)]
        out.append(_ref_pairs(enc, f[None], p[None], None, None, heads, False)[0])
    return torch.stack(out)


def _ref_pairs(e, cur, prev, mask, prev_mask, heads: int, port: bool) -> torch.Tensor:
    prev = prev + _xattn(_rms(prev, e.encoder_norm1.weight), _rms(cur, e.encoder_norm1.weight), mask,
                         e.encoder_cross_attn1, heads, port)
    prev = prev + _mlp(_rms(prev, e.encoder_norm2.weight), e.encoder_mlp1)
    cur = cur + _xattn(_rms(cur, e.encoder_norm3.weight), _rms(prev, e.encoder_norm3.weight), prev_mask,
                       e.encoder_cross_attn2, heads, port)
    cur = cur - _mlp(_rms(cur, e.encoder_norm4.weight), e.encoder_mlp2)
    q = e.query_embeddings[None].expand(cur.shape[0], -1, -1)
    q = q + _xattn(_rms(q, e.decoder_norm1.weight), _rms(cur, e.decoder_norm1.weight), mask,
                   e.decoder_cross_attn, heads, port)
    q = q + _mlp(_rms(q, e.decoder_norm2.weight), e.decoder_mlp)
    return F.linear(q, e.compare_projector.weight, e.compare_projector.bias)


def _assert_same(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal up to float32 rounding, relative to the tokens' scale."""
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5 * float(b.abs().max()))


def _differs(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Far apart relative to the tokens' scale (the tiny random model's tokens are small)."""
    return bool((a - b).abs().max() > 0.1 * b.abs().max())


def _pictures() -> list[Image.Image]:
    """Images of different sizes (16, 36 and 24 patches), so padding and window order matter."""
    g = torch.Generator().manual_seed(1)
    sizes = [(56, 56), (84, 84), (112, 56)]
    return [Image.fromarray((torch.rand(h, w, 3, generator=g) * 255).byte().numpy()) for w, h in sizes]


@pytest.fixture(scope="module")
def release_model():
    """The tiny model in the release variant, with 4 heads in the encoder (interleaving needs more than
    one) and windows of 2x2 merged patches in the tower (so window order differs from patch order)."""
    vision = dict(
        depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=14,
        spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1],
    )
    model, processor = build_tiny(seed=0, vision_config=vision, compare_num_heads=4,
                                  compare_attention_layout="release", compare_position="start")
    # Weights of unit scale (not the tiny init's 0.02), so attention outputs weigh as much as the
    # features they are added to and every difference of layout shows.
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in model.comparison_encoder.named_parameters():
            if "norm" not in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model, processor


def _tokens_of(model, processor, samples: list[list[Image.Image]]):
    texts = [format_chat(PROMPT, len(s)) for s in samples]
    inputs = processor(images=[im for s in samples for im in s], text=texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"], return_dict=True)
        hidden = out.last_hidden_state  # the tower's pre-merge states, in its window order
        full = model.model.add_comparison_tokens(out, inputs["image_grid_thw"], inputs["input_ids"])
    base = (inputs["image_grid_thw"].prod(-1) // 4).tolist()
    ours = torch.stack([t[b:] for t, b in zip(full, base, strict=True)])
    return ours, hidden, inputs


@pytest.mark.parametrize("n_samples", [1, 2])
def test_release_layout_matches_the_port_and_standard_does_not(release_model, n_samples):
    model, processor = release_model
    pics = _pictures()
    samples = [pics[:2], [pics[2], pics[0]]][:n_samples]  # two samples: the roll pairs across them
    ours, hidden, inputs = _tokens_of(model, processor, samples)
    sizes = inputs["image_grid_thw"].prod(-1).tolist()
    window_feats = list(torch.split(hidden, sizes))
    enc = model.comparison_encoder
    with torch.no_grad():
        expected = reference_tokens(enc, window_feats, heads=4, release=True)
    _assert_same(ours, expected)
    model.config.compare_attention_layout = "standard"
    try:
        standard, _, _ = _tokens_of(model, processor, samples)
    finally:
        model.config.compare_attention_layout = "release"
    assert _differs(standard, expected)


def test_standard_layout_matches_the_usual_merge_on_patch_order(release_model):
    """Golden test of ``standard``: per pair, unpadded, heads merged as usual, features in patch order."""
    model, processor = release_model
    samples = [_pictures()[:2]]
    model.config.compare_attention_layout = "standard"
    model.config.compare_pairing = "sample"
    try:
        ours, hidden, inputs = _tokens_of(model, processor, samples)
        feats = model.model.visual.pre_merge_features(hidden, inputs["image_grid_thw"])
    finally:
        model.config.compare_attention_layout = "release"
        model.config.compare_pairing = "batch"
    with torch.no_grad():
        expected = reference_tokens(model.comparison_encoder, feats, heads=4, release=False)
        port = reference_tokens(model.comparison_encoder, list(torch.split(hidden, [16, 36])), heads=4, release=True)
    _assert_same(ours, expected)
    assert _differs(ours, port)


def _port_positions(ids: list[int], grids: list[tuple[int, int]], image_id: int, num: int) -> torch.Tensor:
    """Positions (3, S) as the port numbers them: text like text, each image's grid from s, its
    comparison tokens all at (s, s, s), then the text restarting at s + 1."""
    cols: list[list[int]] = []
    i, img, nxt = 0, 0, 0
    while i < len(ids):
        if ids[i] != image_id:
            cols.append([nxt] * 3)
            nxt += 1
            i += 1
            continue
        h, w = grids[img]
        s = nxt
        cols += [[s, s + r, s + c] for r in range(h) for c in range(w)]
        cols += [[s, s, s]] * num
        nxt = s + 1
        i += h * w + num
        img += 1
    return torch.tensor(cols).T


def test_start_positions_are_the_ports(release_model):
    model, processor = release_model
    _, _, inputs = _tokens_of(model, processor, [_pictures()[:2]])
    grids = [(int(g[1]) // 2, int(g[2]) // 2) for g in inputs["image_grid_thw"]]
    ids = inputs["input_ids"][0].tolist()
    pos, delta = model.model.get_rope_index(inputs["input_ids"], image_grid_thw=inputs["image_grid_thw"])
    expected = _port_positions(ids, grids, model.config.image_token_id, 8)
    assert torch.equal(pos[:, 0], expected)
    assert int(delta[0]) == int(expected.max()) + 1 - len(ids)
    model.config.compare_position = "shared"
    try:
        other, _ = model.model.get_rope_index(inputs["input_ids"], image_grid_thw=inputs["image_grid_thw"])
    finally:
        model.config.compare_position = "start"
    assert not torch.equal(other[:, 0], expected)
