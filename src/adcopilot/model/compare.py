"""The Comparison Encoder of AD-Copilot (Jiang et al., 2026), generic over any vision tower.

It compares each image with its "previous image" at the feature level, before any language model
sees them, and condenses the comparison into ``L`` comparison tokens:

    P_i = I_i            for i = 0   (the first image is paired with itself)
    P_i = I_{i-1}        for i >= 1  (every later image with its predecessor)

    encoder (pre-norm RMSNorm, residuals):
      prev = prev + CrossAttn1(q=norm1(prev), kv=norm1(cur))      "previous attends to current"
      prev = prev + SwiGLU1(norm2(prev))
      cur  = cur  + CrossAttn2(q=norm3(cur),  kv=norm3(prev))     "current attends to the updated previous"
      cur  = cur  - SwiGLU2(norm4(cur))                            (minus, as the released model does)
    decoder:
      q = Q + CrossAttn(q=dnorm1(Q), kv=dnorm1(cur))               Q: L learnable comparison queries
      q = q + SwiGLU(dnorm2(q))
      comparison tokens = Projector(q)                             (L, out_width)

Parameter names and shapes follow the authors' released checkpoint (fused key/value projection
``kv``, ``q_proj``, ``proj``; ``encoder_norm1..4``; ``encoder_mlp1/2``; ``decoder_*``;
``query_embeddings``; ``compare_projector``), so the full-scale model loads the released weights into
this very class (width 1280, 16 heads, MLP 3420, L 100, out 3584: 63,801,344 parameters).

Attention layout: ``attention_layout="standard"`` merges the heads of each attention output as usual
((B, H, N, D) -> (B, N, H*D), one position per row). ``"release"`` reproduces the head merge of the
public port of the released model, which transposes the (B, N, H, D) output of transformers' attention
functions back to (B, H, N, D) before the reshape: row n of the merged output then holds H chunks of D
channels taken from (head, position) pairs n*H .. n*H + H - 1 in head-major order, i.e. heads and
positions interleaved. In that layout a row depends on the order and the count of the rows (padding
included), so :meth:`ComparisonEncoder.forward_padded` also reproduces the port's batching: every image
padded with zeros to the longest, masked as keys, paired by a roll over the whole list.

Positions: the released model runs on Qwen2.5-VL ViT features, which already carry 2-D rotary
positions from the ViT, and is configured here with ``rope_2d=False``. Towers whose features carry no
explicit position (the nano model's CNN) use ``rope_2d=True``: a 2-D rotary embedding (half of each
head's channels rotated by the row, half by the column, as Qwen2-VL's vision rotary does) applied to
queries and keys of the two encoder cross-attentions. Being relative, it lets a query patch prefer
reference patches at the same place, which is what comparison of aligned parts needs, adds no
parameters (the checkpoint layout is unchanged) and works at any grid size.

Usage::

    enc = ComparisonEncoder(ComparisonConfig(width=192, num_heads=6, mlp_hidden=512, num_queries=16, out_width=576))
    tokens, cur = enc(cur_feats, prev_feats)                   # (B, N, C), (B, M, C)
    tokens_seq = enc.forward_sequence(feats)                   # (n_images, N, C): pairing rule applied
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ComparisonConfig:
    width: int = 1280  # channels of the vision features (and of the comparison queries)
    num_heads: int = 16
    mlp_hidden: int = 3420
    num_queries: int = 100  # L
    out_width: int = 3584  # the language model's width
    depth: int = 1  # encoder layers; the released model has one
    eps: float = 1e-6
    mlp2_sign: float = -1.0  # the released model subtracts the second encoder MLP
    rope_2d: bool = False
    rope_theta: float = 100.0
    attention_layout: str = "standard"  # "standard" or "release" (the port's interleaving head merge)

    def to_dict(self) -> dict:
        return asdict(self)


#: Head merges of the cross-attentions (see the module's docstring).
LAYOUTS = ("standard", "release")


class QwenRMSNorm(nn.Module):
    """RMSNorm computed as Qwen's: in float32 (float64 inputs in float64), cast back to the input's
    dtype, then scaled by the weight.

    (``nn.RMSNorm`` multiplies by the weight before casting, which differs in bf16.)"""

    def __init__(self, width: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x.to(torch.promote_types(dtype, torch.float32))  # bf16/fp16 -> fp32 as Qwen; fp64 stays exact
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


class SwiGLU(nn.Module):
    """SwiGLU feed-forward without bias, shaped like Qwen2.5-VL's vision MLP."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(width, hidden, bias=False)
        self.up_proj = nn.Linear(width, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def rotary_2d(x: torch.Tensor, pos: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate (B, H, N, D) by 2-D positions pos (N, 2) = (row, col); D/2 channels per axis."""
    d = x.shape[-1]
    quarter = d // 4
    if quarter == 0:
        return x
    freqs = 1.0 / (theta ** (torch.arange(quarter, device=x.device, dtype=torch.float32) / quarter))
    ang = torch.cat([pos[:, :1].float() * freqs, pos[:, 1:2].float() * freqs], dim=-1)  # (N, D/2)
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    x1, x2 = x[..., : d // 2], x[..., d // 2 : 2 * (d // 2)]
    out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return torch.cat([out, x[..., 2 * (d // 2) :]], dim=-1) if d % 2 else out


class CrossAttention(nn.Module):
    """Multi-head cross-attention with a fused key/value projection (released layout)."""

    def __init__(self, width: int, num_heads: int) -> None:
        super().__init__()
        if width % num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(width, width, bias=True)
        self.kv = nn.Linear(width, 2 * width, bias=True)  # rows [0, width) are K, [width, 2 width) V
        self.proj = nn.Linear(width, width, bias=True)

    def forward(
        self,
        q: torch.Tensor,
        kv: torch.Tensor,
        q_pos: torch.Tensor | None = None,
        kv_pos: torch.Tensor | None = None,
        theta: float = 100.0,
        kv_mask: torch.Tensor | None = None,
        layout: str = "standard",
    ) -> torch.Tensor:
        """q (B, N, C) attends to kv (B, M, C) -> (B, N, C); rotary positions only if both are given.

        ``kv_mask`` (B, M) bool: True for real rows (False rows are padding, never attended to)."""
        if q_pos is None or kv_pos is None:
            q_pos = kv_pos = None
        return self.attend(self.project_queries(q, q_pos, theta), kv, kv_pos, theta, kv_mask, layout)

    def project_queries(self, q: torch.Tensor, q_pos: torch.Tensor | None = None, theta: float = 100.0) -> torch.Tensor:
        """(B, N, C) -> per-head queries (B, H, N, D), rotated by ``q_pos`` when given.

        They depend on ``q`` alone, so a caller whose queries repeat may compute them once."""
        b, n, c = q.shape
        qh = self.q_proj(q).view(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)
        return rotary_2d(qh, q_pos, theta) if q_pos is not None else qh

    def attend(
        self,
        qh: torch.Tensor,
        kv: torch.Tensor,
        kv_pos: torch.Tensor | None = None,
        theta: float = 100.0,
        kv_mask: torch.Tensor | None = None,
        layout: str = "standard",
    ) -> torch.Tensor:
        """Per-head queries (B, H, N, D) from :meth:`project_queries` attend to kv (B, M, C) -> (B, N, C)."""
        b, h, n, d = qh.shape
        m = kv.shape[1]
        k, v = self.kv(kv).view(b, m, 2, h, d).permute(2, 0, 3, 1, 4)  # 2 x (B, H, M, D)
        if kv_pos is not None:
            k = rotary_2d(k, kv_pos, theta)
        mask = kv_mask[:, None, None, :] if kv_mask is not None else None  # (B, 1, 1, M)
        out = F.scaled_dot_product_attention(qh, k, v, attn_mask=mask)  # (B, H, N, D), scale D^-0.5
        if layout == "release":
            # The port's merge: (B, H, N, D) reshaped as it is, heads and positions interleaved.
            return self.proj(out.reshape(b, n, h * d))
        if layout != "standard":
            raise ValueError(f"attention layout must be one of {LAYOUTS}, got {layout!r}")
        return self.proj(out.transpose(1, 2).reshape(b, n, h * d))


class EncoderLayer(nn.Module):
    """One bidirectional comparison layer (used for layers after the first when depth > 1)."""

    def __init__(self, cfg: ComparisonConfig) -> None:
        super().__init__()
        w = cfg.width
        self.cross_attn1 = CrossAttention(w, cfg.num_heads)
        self.cross_attn2 = CrossAttention(w, cfg.num_heads)
        self.norm1, self.norm2, self.norm3, self.norm4 = (QwenRMSNorm(w, eps=cfg.eps) for _ in range(4))
        self.mlp1 = SwiGLU(w, cfg.mlp_hidden)
        self.mlp2 = SwiGLU(w, cfg.mlp_hidden)


class ComparisonEncoder(nn.Module):
    """Bidirectional cross-attention encoder + comparison-query decoder + projector."""

    def __init__(self, cfg: ComparisonConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        # Layer 0, with the released checkpoint's flat names.
        self.encoder_cross_attn1 = CrossAttention(w, cfg.num_heads)
        self.encoder_cross_attn2 = CrossAttention(w, cfg.num_heads)
        self.encoder_norm1 = QwenRMSNorm(w, eps=cfg.eps)
        self.encoder_norm2 = QwenRMSNorm(w, eps=cfg.eps)
        self.encoder_norm3 = QwenRMSNorm(w, eps=cfg.eps)
        self.encoder_norm4 = QwenRMSNorm(w, eps=cfg.eps)
        self.encoder_mlp1 = SwiGLU(w, cfg.mlp_hidden)
        self.encoder_mlp2 = SwiGLU(w, cfg.mlp_hidden)
        self.extra_layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.depth - 1))
        self.decoder_cross_attn = CrossAttention(w, cfg.num_heads)
        self.decoder_norm1 = QwenRMSNorm(w, eps=cfg.eps)
        self.decoder_norm2 = QwenRMSNorm(w, eps=cfg.eps)
        self.decoder_mlp = SwiGLU(w, cfg.mlp_hidden)
        self.query_embeddings = nn.Parameter(torch.randn(cfg.num_queries, w) * 0.02)
        self.compare_projector = nn.Linear(w, cfg.out_width, bias=True)

    def _layers(self):
        yield (self.encoder_cross_attn1, self.encoder_cross_attn2, self.encoder_norm1, self.encoder_norm2,
               self.encoder_norm3, self.encoder_norm4, self.encoder_mlp1, self.encoder_mlp2)
        for layer in self.extra_layers:
            yield (layer.cross_attn1, layer.cross_attn2, layer.norm1, layer.norm2, layer.norm3, layer.norm4,
                   layer.mlp1, layer.mlp2)

    def _positions(
        self, cur_pos: torch.Tensor | None, prev_pos: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The positions the encoder rotates by: both, or neither (no rope_2d, or one missing)."""
        if not self.cfg.rope_2d or cur_pos is None or prev_pos is None:
            return None, None
        return cur_pos, prev_pos

    def first_queries(self, prev: torch.Tensor, prev_pos: torch.Tensor | None = None) -> torch.Tensor:
        """The first layer's "previous attends to current" queries (B, H, M, D) of prev (B, M, C).

        They depend on ``prev`` alone (not on the current image), so a caller comparing many images
        with the same previous image can compute them once and pass them to :meth:`encode`. They are
        rotated by ``prev_pos`` when ``rope_2d`` and it is given (give the current image's positions
        to :meth:`encode` too, as rotation needs both)."""
        pos = prev_pos if self.cfg.rope_2d else None
        return self.encoder_cross_attn1.project_queries(self.encoder_norm1(prev), pos, self.cfg.rope_theta)

    def encode(
        self,
        cur: torch.Tensor,
        prev: torch.Tensor,
        cur_pos: torch.Tensor | None = None,
        prev_pos: torch.Tensor | None = None,
        prev_queries: torch.Tensor | None = None,
        cur_mask: torch.Tensor | None = None,
        prev_mask: torch.Tensor | None = None,
        layout: str | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cur (B, N, C), prev (B, M, C) -> updated (cur, prev). Positions (N, 2), (M, 2) if rope_2d.

        ``prev_queries``: :meth:`first_queries` of the same ``prev`` and positions, if cached.
        ``cur_mask`` (B, N) / ``prev_mask`` (B, M): True for real rows, where images are padded.
        ``layout``: the attention layout (default: the config's)."""
        layout = layout or self.cfg.attention_layout
        cur_pos, prev_pos = self._positions(cur_pos, prev_pos)
        if prev_queries is None:
            prev_queries = self.first_queries(prev, prev_pos)
        t = self.cfg.rope_theta
        for i, (xa1, xa2, n1, n2, n3, n4, mlp1, mlp2) in enumerate(self._layers()):
            pq = prev_queries if i == 0 else xa1.project_queries(n1(prev), prev_pos, t)
            prev = prev + xa1.attend(pq, n1(cur), cur_pos, t, cur_mask, layout)  # previous attends to current
            prev = prev + mlp1(n2(prev))
            c, p = n3(cur), n3(prev)
            cur = cur + xa2(c, p, cur_pos, prev_pos, t, prev_mask, layout)  # current attends to the updated previous
            cur = cur + self.cfg.mlp2_sign * mlp2(n4(cur))
        return cur, prev

    def decode(
        self, cur: torch.Tensor, cur_mask: torch.Tensor | None = None, layout: str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cur (B, N, C) -> (comparison tokens (B, L, out_width), query states (B, L, C))."""
        layout = layout or self.cfg.attention_layout
        b = cur.shape[0]
        q = self.query_embeddings.unsqueeze(0).expand(b, -1, -1).to(cur.dtype)  # (B, L, C)
        q = q + self.decoder_cross_attn(self.decoder_norm1(q), self.decoder_norm1(cur), kv_mask=cur_mask,
                                        layout=layout)
        q = q + self.decoder_mlp(self.decoder_norm2(q))
        return self.compare_projector(q), q

    def forward(
        self,
        cur: torch.Tensor,
        prev: torch.Tensor,
        cur_pos: torch.Tensor | None = None,
        prev_pos: torch.Tensor | None = None,
        layout: str | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Compare ``cur`` (B, N, C) with ``prev`` (B, M, C); return (tokens (B, L, out), cur (B, N, C))."""
        cur, _ = self.encode(cur, prev, cur_pos, prev_pos, layout=layout)
        tokens, _ = self.decode(cur, layout=layout)
        return tokens, cur

    def forward_padded(
        self, feats: list[torch.Tensor], prev_index: list[int] | None = None, layout: str | None = None
    ) -> torch.Tensor:
        """Every image of ``feats`` (n tensors (N_i, C)) at once, padded: -> tokens (n, L, out).

        The released model's batching: each image padded with zero rows to the longest N (the
        padding masked as keys, not as queries), image i compared with ``prev_index[i]``
        (default: the roll over the list, image 0 with itself)."""
        n = len(feats)
        longest = max(f.shape[0] for f in feats)
        padded = torch.stack([F.pad(f, (0, 0, 0, longest - f.shape[0])) for f in feats])  # (n, N, C)
        mask = torch.zeros(n, longest, dtype=torch.bool, device=padded.device)
        for i, f in enumerate(feats):
            mask[i, : f.shape[0]] = True
        prev_index = previous_images(n) if prev_index is None else prev_index
        cur, _ = self.encode(padded, padded[prev_index], cur_mask=mask, prev_mask=mask[prev_index], layout=layout)
        tokens, _ = self.decode(cur, mask, layout=layout)
        return tokens

    def forward_sequence(self, feats: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        """Apply the pairing rule to a sequence of images' features (n, N, C) -> tokens (n, L, out).

        Image 0 is compared with itself, image i with image i-1 (the references come first, the
        query last, so the query is compared with the reference just before it)."""
        prev = feats[previous_images(feats.shape[0])]  # P_0 = I_0, P_i = I_{i-1}
        tokens, _ = self.forward(feats, prev, pos, pos)
        return tokens


def previous_images(n: int) -> list[int]:
    """The pairing rule over a list of n images: image 0 with itself, image i with image i - 1."""
    return [0] + list(range(n - 1))


def grid_positions(h: int, w: int, device: torch.device | None = None) -> torch.Tensor:
    """(h*w, 2) integer (row, col) positions of a row-major patch grid."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    return torch.stack([ys.flatten(), xs.flatten()], dim=-1)
