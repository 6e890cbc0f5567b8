"""AD-Copilot-nano's comparison model: frozen EfficientNet-Lite0 -> Comparison Encoder -> heads.

    query, reference(s) (B, 3, S, S)
      -> tower: stride-8 + stride-16 patch features, L2-normalised per scale   (B, 152, S/8, S/8)
      -> nearest-reference-patch cosine distance per query patch                (B, 1, S/8, S/8)
      -> input projection to the encoder width                                  (B, N, C), N = (S/8)^2
      -> ComparisonEncoder(cur = query, prev = references; 2-D rotary positions)
           comparison tokens (B, L, out_width) for the language model, query states (B, N, C)
      -> DenseAnomalyHead -> pixel logits (B, 1, S/8, S/8) -> up-sampled map (S, S)
      -> image logit (see heads.py for the pooling)

With k references, the query's "previous image" is the concatenation of the k references' patches
(the pairing rule generalised to a k-shot memory; with one reference it is the paper's rule).

Checkpoint folder: ``config.json`` (architecture, threshold, image size), ``model.safetensors``
(trained parts only; the tower comes from its package) and ``MODEL_CARD.md``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from adcopilot.errors import CheckpointError
from adcopilot.model.baseline import normalized_patch_features
from adcopilot.model.compare import ComparisonConfig, ComparisonEncoder, grid_positions
from adcopilot.model.detector import Detector, to_batch
from adcopilot.model.heads import DenseAnomalyHead, topk_mean
from adcopilot.model.upsample import upsample_centered
from adcopilot.model.vision import EfficientNetLite0, load_vision_tower

log = logging.getLogger(__name__)

FEATURE_CHANNELS = 152
STRIDE = 8


@dataclass
class NanoConfig:
    image_size: int = 256
    width: int = 128
    num_heads: int = 4
    mlp_hidden: int = 384
    num_queries: int = 16
    out_width: int = 576  # SmolLM2-135M's hidden size
    depth: int = 1
    head_hidden: int = 48
    topk_frac: float = 0.01
    threshold: float = 0.5
    smooth_sigma: float = 2.0  # Gaussian smoothing of the up-sampled map, in pixels at image_size
    # Add a global judgement from the comparison queries to the image logit. Off by default: on real
    # data never seen in training (ELPV) that term was anti-correlated with defects (AUROC 0.22 mono),
    # while the pooled pixel evidence transfers.
    global_score: bool = False
    name: str = "nano"
    extra: dict[str, Any] = field(default_factory=dict)

    def compare_config(self) -> ComparisonConfig:
        return ComparisonConfig(
            width=self.width,
            num_heads=self.num_heads,
            mlp_hidden=self.mlp_hidden,
            num_queries=self.num_queries,
            out_width=self.out_width,
            depth=self.depth,
            rope_2d=True,
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NanoConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


class NanoComparisonModel(nn.Module):
    """The trainable part of the nano model (the tower is passed in, frozen, and not saved)."""

    def __init__(self, cfg: NanoConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.input_proj = nn.Sequential(nn.Linear(FEATURE_CHANNELS, cfg.width), nn.LayerNorm(cfg.width))
        self.compare = ComparisonEncoder(cfg.compare_config())
        self.head = DenseAnomalyHead(cfg.width, cfg.head_hidden)
        self.image_head = nn.Linear(cfg.width, 1)
        nn.init.zeros_(self.image_head.weight)
        nn.init.constant_(self.image_head.bias, 0.0)

    @staticmethod
    @torch.no_grad()
    def features(tower: EfficientNetLite0, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [0, 1] -> (B, 152, S/8, S/8) normalised patch features."""
        return normalized_patch_features(tower, images)

    def forward(self, qf: torch.Tensor, rf: torch.Tensor) -> dict[str, torch.Tensor]:
        """qf (B, 152, h, w) query features; rf (B, k, 152, h, w) reference features."""
        b, c, h, w = qf.shape
        k = rf.shape[1]
        q_tokens = qf.flatten(2).transpose(1, 2)  # (B, N, 152)
        r_tokens = rf.flatten(3).permute(0, 1, 3, 2).reshape(b, k * h * w, c)  # (B, k*N, 152)
        # Nearest-reference-patch cosine distance (features are unit norm).
        sim = torch.bmm(q_tokens, r_tokens.transpose(1, 2))  # (B, N, k*N)
        distance = (1.0 - sim.max(dim=2).values).clamp_min(0).view(b, 1, h, w)
        pos = grid_positions(h, w, qf.device)  # (N, 2)
        ref_pos = pos.repeat(k, 1)  # (k*N, 2): every reference on the same grid
        cur, prev = self.input_proj(q_tokens), self.input_proj(r_tokens)
        cur, _ = self.compare.encode(cur, prev, pos, ref_pos)  # (B, N, C)
        tokens, q_states = self.compare.decode(cur)  # (B, L, out), (B, L, C)
        fmap = cur.transpose(1, 2).reshape(b, -1, h, w)  # (B, C, h, w)
        pixel_logits = self.head(fmap, distance)  # (B, 1, h, w)
        image_logit = topk_mean(pixel_logits, self.cfg.topk_frac)  # (B,)
        if self.cfg.global_score:
            image_logit = image_logit + self.image_head(q_states.mean(1)).squeeze(1)
        return {
            "pixel_logits": pixel_logits,
            "image_logit": image_logit,
            "tokens": tokens,
            "distance": distance,
        }

    # -------------------------------------------------------------- persistence
    def save(self, folder: str | Path, *, card: str | None = None, extra_config: dict | None = None) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt", "architecture": "adcopilot-nano"})
        config = {"architecture": "adcopilot-nano", "vision_tower": "efficientnet-lite0", **asdict(self.cfg)}
        if extra_config:
            config.update(extra_config)
        (folder / "config.json").write_text(json.dumps(config, indent=2))
        if card is not None:
            (folder / "MODEL_CARD.md").write_text(card)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> NanoComparisonModel:
        folder = Path(folder)
        cfg_path, weights = folder / "config.json", folder / "model.safetensors"
        for p in (cfg_path, weights):
            if not p.exists():
                raise CheckpointError(f"{p}: missing; a nano checkpoint folder holds config.json and model.safetensors")
        try:
            raw = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{cfg_path}: malformed JSON ({exc.msg} at line {exc.lineno})") from None
        if raw.get("architecture") != "adcopilot-nano":
            raise CheckpointError(f"{cfg_path}: not an adcopilot-nano checkpoint (architecture={raw.get('architecture')!r})")
        model = cls(NanoConfig.from_dict(raw))
        try:
            state = load_file(str(weights))
        except Exception as exc:
            raise CheckpointError(f"{weights}: cannot read safetensors ({exc})") from None
        own = model.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        bad = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
        if missing or unexpected or bad:
            raise CheckpointError(
                f"{weights}: does not match its config (missing {missing[:3]}, unexpected {unexpected[:3]}, "
                f"wrong shapes {bad[:3]})"
            )
        model.load_state_dict(state)
        model.eval()
        return model


def pooled_score(prob: np.ndarray, frac: float) -> float:
    """Image score at inference: the mean of the top ``frac`` of the smoothed pixel probability map.

    Measured on real data the model never saw (ELPV, 150 cells per type, 1-shot): this pooling
    ranked defective cells better than the training-time logit pooling on the coarse patch grid
    (image AUROC 0.93 versus 0.83 on mono cells), since smoothing at full resolution averages
    out isolated noisy patches.
    """
    flat = prob.ravel()
    k = max(1, int(round(flat.size * frac)))
    return float(np.partition(flat, flat.size - k)[-k:].mean())


class NanoDetector(Detector):
    """:class:`Detector` around a trained :class:`NanoComparisonModel`."""

    def __init__(
        self, model: NanoComparisonModel, tower: EfficientNetLite0 | None = None, name: str = "nano"
    ) -> None:
        self.model = model.eval()
        self.tower = tower if tower is not None else load_vision_tower()
        self.image_size = model.cfg.image_size
        self.threshold = model.cfg.threshold
        self.name = name
        self._last_score: float | None = None

    @torch.inference_mode()
    def encode_reference(self, image: np.ndarray) -> torch.Tensor:
        return self.model.features(self.tower, to_batch([image]))[0]  # (152, h, w)

    @torch.inference_mode()
    def run(self, query: np.ndarray, references: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        qf = self.model.features(self.tower, to_batch([query]))  # (1, 152, h, w)
        rf = torch.stack(references).unsqueeze(0)  # (1, k, 152, h, w)
        return self.model(qf, rf)

    def detect(self, query: np.ndarray, references: list[Any]) -> tuple[np.ndarray, float]:
        out = self.run(query, references)
        logits = out["pixel_logits"]
        prob = torch.sigmoid(upsample_centered(logits, self.image_size // logits.shape[-1]))[0, 0].numpy()
        if self.model.cfg.smooth_sigma > 0:
            prob = cv2.GaussianBlur(prob, (0, 0), self.model.cfg.smooth_sigma)
        return prob.astype(np.float32), pooled_score(prob, self.model.cfg.topk_frac)

    def anomaly_map(self, query: np.ndarray, references: list[Any]) -> np.ndarray:
        return self.detect(query, references)[0]


def load_nano_detector(folder: str | Path) -> tuple[NanoDetector, dict[str, Any]]:
    folder = Path(folder)
    model = NanoComparisonModel.load(folder)
    raw = json.loads((folder / "config.json").read_text())
    name = raw.get("name", folder.name)
    return NanoDetector(model, name=name), {"name": name, "threshold": raw.get("threshold", 0.5)}
