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

Inference (:class:`NanoDetector`) computes the same thing faster: the tower runs as a
:class:`~adcopilot.model.vision.FusedPatchTower`; everything on the reference side that does not
depend on the query (its patch tokens, their input projection and the first cross-attention's
queries, :class:`ReferenceInputs`) is computed once per reference and cached by the caller; the
comparison tokens are not decoded when nothing reads them. Maps agree with :meth:`forward` to
float rounding.

The image score is the mean of the top 1 % of the smoothed map (``pooled_score``), or, with
``image_score: "fused"`` in the config, the map fused with the distance to the references' dihedral views
(:mod:`adcopilot.model.score`; opt-in, figures in benchmarks/RESULTS.md).

Checkpoint folder: ``config.json`` (architecture, threshold, image size), ``model.safetensors``
(trained parts only; the tower comes from its package) and ``MODEL_CARD.md``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from adcopilot.errors import CheckpointError
from adcopilot.model.backbone import load_backbone
from adcopilot.model.baseline import normalized_patch_features
from adcopilot.model.compare import ComparisonConfig, ComparisonEncoder, grid_positions
from adcopilot.model.detector import Detection, Detector, to_batch
from adcopilot.model.heads import DenseAnomalyHead, topk_mean
from adcopilot.model.memory import ProductMemory
from adcopilot.model.score import dihedral_views, fused_score, view_distance
from adcopilot.model.upsample import upsample_centered
from adcopilot.model.vision import EfficientNetLite0, FusedPatchTower, load_vision_tower

log = logging.getLogger(__name__)

FEATURE_CHANNELS = 152
IMAGE_SCORES = ("map", "fused")  # NanoConfig.image_score
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
    # data never seen in training (ELPV) that term ranked defects below normal cells, while the pooled
    # pixel evidence transfers (benchmarks/RESULTS.md, "Design choices measured").
    global_score: bool = False
    # The image score (model/score.py): "map" pools the map (the mean of its top ``topk_frac``); "fused"
    # takes the maximum of prob ** fused_weight * (distance to the reference's dihedral views) ** (1 - w).
    image_score: str = "map"
    fused_weight: float = 0.05
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


@dataclass(frozen=True)
class ReferenceInputs:
    """The query-independent inputs of a comparison with ``k`` references (M = k * N patches).

    Every field is per patch, so the inputs of several references concatenate along the patch axis
    (:meth:`concat`); one reference's are worth caching with its features (about 1.7 MB at 256 px, and
    4.4 MB more with the views of the fused image score, model/score.py).
    """

    tokens: torch.Tensor  # (B, M, 152) unit-norm patch features, row-major per reference
    prev: torch.Tensor  # (B, M, C) their input projection: the encoder's "previous image"
    queries: torch.Tensor  # (B, H, M, D) the first cross-attention's queries of ``prev``
    pos: torch.Tensor  # (M, 2) grid positions of the patches
    views: torch.Tensor | None = None  # (B, 7 * M, 152) the references' other dihedral views' patches

    @classmethod
    def concat(cls, parts: Sequence[ReferenceInputs]) -> ReferenceInputs:
        """The inputs of several references as one "previous image" (k-shot memory)."""
        if len(parts) == 1:
            return parts[0]
        return cls(
            tokens=torch.cat([p.tokens for p in parts], dim=1),
            prev=torch.cat([p.prev for p in parts], dim=1),
            queries=torch.cat([p.queries for p in parts], dim=2),
            pos=torch.cat([p.pos for p in parts], dim=0),
            views=None if any(p.views is None for p in parts) else torch.cat([p.views for p in parts], dim=1),
        )

    @classmethod
    def stack(cls, parts: Sequence[ReferenceInputs]) -> ReferenceInputs:
        """The inputs of several comparisons (one each, the same number of patches M) as one batch."""
        if all(p is parts[0] for p in parts):  # one reference set for all: a view, no copy
            b = len(parts)
            one = parts[0]
            return cls(tokens=one.tokens.expand(b, -1, -1), prev=one.prev.expand(b, -1, -1),
                       queries=one.queries.expand(b, -1, -1, -1), pos=one.pos)
        return cls(
            tokens=torch.cat([p.tokens for p in parts]),
            prev=torch.cat([p.prev for p in parts]),
            queries=torch.cat([p.queries for p in parts]),
            pos=parts[0].pos,  # the same grid for every reference set of M patches
        )


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
        return self.compare_with(qf, self.reference_inputs(rf))

    def reference_inputs(self, rf: torch.Tensor) -> ReferenceInputs:
        """rf (B, k, 152, h, w) reference features -> their query-independent comparison inputs."""
        b, k, c, h, w = rf.shape
        tokens = rf.flatten(3).permute(0, 1, 3, 2).reshape(b, k * h * w, c)  # (B, k*N, 152)
        pos = grid_positions(h, w, rf.device).repeat(k, 1)  # (k*N, 2): every reference on the same grid
        prev = self.input_proj(tokens)
        return ReferenceInputs(tokens=tokens, prev=prev, queries=self.compare.first_queries(prev, pos), pos=pos)

    def compare_with(
        self, qf: torch.Tensor, refs: ReferenceInputs, with_tokens: bool = True
    ) -> dict[str, torch.Tensor]:
        """qf (B, 152, h, w) compared with the references' inputs; ``with_tokens=False`` skips the
        comparison-token decoder when the image logit does not need it (no "tokens" then)."""
        b, c, h, w = qf.shape
        q_tokens = qf.flatten(2).transpose(1, 2)  # (B, N, 152)
        # Nearest-reference-patch cosine distance (features are unit norm).
        sim = torch.bmm(q_tokens, refs.tokens.transpose(1, 2))  # (B, N, k*N)
        distance = (1.0 - sim.max(dim=2).values).clamp_min(0).view(b, 1, h, w)
        pos = grid_positions(h, w, qf.device)  # (N, 2)
        cur = self.input_proj(q_tokens)
        cur, _ = self.compare.encode(cur, refs.prev, pos, refs.pos, prev_queries=refs.queries)  # (B, N, C)
        fmap = cur.transpose(1, 2).reshape(b, -1, h, w)  # (B, C, h, w)
        pixel_logits = self.head(fmap, distance)  # (B, 1, h, w)
        image_logit = topk_mean(pixel_logits, self.cfg.topk_frac)  # (B,)
        out = {"pixel_logits": pixel_logits, "image_logit": image_logit, "distance": distance}
        if with_tokens or self.cfg.global_score:
            tokens, q_states = self.compare.decode(cur)  # (B, L, out), (B, L, C)
            if self.cfg.global_score:
                out["image_logit"] = image_logit + self.image_head(q_states.mean(1)).squeeze(1)
            out["tokens"] = tokens
        return out

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
        cfg = NanoConfig.from_dict(raw)
        w = cfg.fused_weight
        if cfg.image_score not in IMAGE_SCORES or isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w <= 1:
            raise CheckpointError(f"{cfg_path}: image_score must be one of {', '.join(IMAGE_SCORES)} and fused_weight "
                                  f"a number in [0, 1], got {cfg.image_score!r} and {cfg.fused_weight!r}")
        model = cls(cfg)
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

    On real data the model never saw (ELPV) this pooling ranked defective cells better than the
    training-time logit pooling on the coarse patch grid (figures in ``benchmarks/RESULTS.md``),
    since smoothing at full resolution averages out isolated noisy patches.
    """
    flat = prob.ravel()
    k = max(1, int(round(flat.size * frac)))
    return float(np.partition(flat, flat.size - k)[-k:].mean())


class NanoDetector(Detector):
    """:class:`Detector` around a trained :class:`NanoComparisonModel`.

    A reference is encoded once into :class:`ReferenceInputs` (cached by the caller); a query costs
    the fused tower, the comparison and the dense head. ``tower`` stays the plain frozen tower (the
    language encoder shares it); the detector runs a fused copy of it.
    """

    patch_distances = True

    def __init__(
        self,
        model: NanoComparisonModel,
        tower: EfficientNetLite0 | None = None,
        name: str = "nano",
        memory: ProductMemory | None = None,
        memory_weight: float = 0.5,
        memory_weights: dict[str, float] | None = None,
    ) -> None:
        self.model = model.eval()
        # An adapted model's product memory (see model/memory.py) and its weight in the fused map:
        # per variant where ``adapt`` chose one on validation images, else ``memory_weight``.
        self.memory = memory
        self.memory_weight = float(memory_weight)
        self.memory_weights = {str(k): float(v) for k, v in (memory_weights or {}).items()}
        self.tower = tower if tower is not None else load_vision_tower()
        self.fused_tower = FusedPatchTower.from_tower(self.tower)
        self.image_size = model.cfg.image_size
        self.threshold = model.cfg.threshold
        self.name = name
        self._last_score: float | None = None

    def patch_features(self, image: np.ndarray) -> torch.Tensor:
        """(S, S, 3) float image -> (1, 152, h, w) normalised patch features (fused tower)."""
        return normalized_patch_features(self.fused_tower, to_batch([image]))

    @torch.inference_mode()
    def encode_reference(self, image: np.ndarray) -> ReferenceInputs:
        inputs = self.model.reference_inputs(self.patch_features(image).unsqueeze(1))
        if self.model.cfg.image_score != "fused":
            return inputs
        # The other seven dihedral views in one batch: (7, 152, h, w) -> (1, 7 * N, 152).
        feats = normalized_patch_features(self.fused_tower, to_batch(dihedral_views(image)[1:]))
        return replace(inputs, views=feats.flatten(2).transpose(1, 2).reshape(1, -1, feats.shape[1]))

    @torch.inference_mode()
    def run(
        self, query: np.ndarray, references: Sequence[ReferenceInputs | torch.Tensor], with_tokens: bool = True
    ) -> dict[str, torch.Tensor]:
        """The model's outputs for a query and encoded references (or raw (152, h, w) features)."""
        refs = ReferenceInputs.concat([self._as_inputs(r) for r in references])
        return self.model.compare_with(self.patch_features(query), refs, with_tokens=with_tokens)

    def _as_inputs(self, reference: ReferenceInputs | torch.Tensor) -> ReferenceInputs:
        if isinstance(reference, ReferenceInputs):
            return reference
        return self.model.reference_inputs(reference[None, None])

    @torch.inference_mode()
    def maps(self, query: np.ndarray, references: list[Any]) -> tuple[np.ndarray, np.ndarray | None, str | None]:
        """The two maps before fusion: (comparison model's (S, S) probability map, product memory's
        calibrated (S, S) map or None without a memory, the memory variant used or None)."""
        qf = self.patch_features(query)  # (1, 152, h, w)
        refs = ReferenceInputs.concat([self._as_inputs(r) for r in references])
        out = self.model.compare_with(qf, refs, with_tokens=False)
        return self._maps_from(out, qf, refs)

    def _maps_from(
        self, out: dict[str, torch.Tensor], qf: torch.Tensor, refs: ReferenceInputs
    ) -> tuple[np.ndarray, np.ndarray | None, str | None]:
        """:meth:`maps` from the comparison's output (pixel logits (1, 1, h, w), distance) and the
        query's features."""
        logits = out["pixel_logits"]
        prob = torch.sigmoid(upsample_centered(logits, self.image_size // logits.shape[-1]))[0, 0].numpy()
        if self.model.cfg.smooth_sigma > 0:
            prob = cv2.GaussianBlur(prob, (0, 0), self.model.cfg.smooth_sigma)
        if self.memory is None:
            return prob, None, None
        h, w = qf.shape[2:]
        variant = self.memory.choose(refs.tokens[0][: h * w])
        mem = self.memory.anomaly_map(qf[0].flatten(1).T, refs.tokens[0], (h, w), self.image_size,
                                      reference_distance=out["distance"][0, 0].flatten())  # reused, not recomputed
        return prob, mem, variant

    def weight_for(self, variant: str | None) -> float:
        """The memory's weight in the fused map for ``variant`` (chosen per variant by ``adapt``)."""
        return self.memory_weights.get(variant, self.memory_weight) if variant is not None else self.memory_weight

    @torch.inference_mode()
    def detection(self, query: np.ndarray, references: list[Any], with_tokens: bool = False) -> Detection:
        """One comparison pass: the fused map and its score, the distance map, the query's features
        and (``with_tokens``) the comparison tokens."""
        qf = self.patch_features(query)  # (1, 152, h, w)
        refs = ReferenceInputs.concat([self._as_inputs(r) for r in references])
        out = self.model.compare_with(qf, refs, with_tokens=with_tokens)
        return self._detection_from(out, qf, refs, with_tokens)

    @torch.inference_mode()
    def detections(
        self, queries: Sequence[np.ndarray], references: Sequence[Sequence[Any]], with_tokens: bool = False
    ) -> list[Detection]:
        """:meth:`detection` of several queries in one pass: the tower on all of them at once, the
        comparison on each group with the same number of reference patches (one batch when all have
        the same number of references). The same results to float rounding."""
        qf = normalized_patch_features(self.fused_tower, to_batch(list(queries)))  # (B, 152, h, w)
        refs = [ReferenceInputs.concat([self._as_inputs(r) for r in rs]) for rs in references]
        groups: dict[int, list[int]] = {}
        for i, r in enumerate(refs):
            groups.setdefault(r.tokens.shape[1], []).append(i)
        found: dict[int, Detection] = {}
        for idx in groups.values():
            out = self.model.compare_with(qf[idx], ReferenceInputs.stack([refs[i] for i in idx]), with_tokens=with_tokens)
            for j, i in enumerate(idx):
                one = {k: v[j : j + 1] for k, v in out.items()}  # batch of one, as detection's
                found[i] = self._detection_from(one, qf[i : i + 1], refs[i], with_tokens)
        return [found[i] for i in range(len(refs))]

    def _detection_from(
        self, out: dict[str, torch.Tensor], qf: torch.Tensor, refs: ReferenceInputs, with_tokens: bool
    ) -> Detection:
        """:meth:`detection` from the comparison's output for one query (batch of one) and its features."""
        prob, mem, variant = self._maps_from(out, qf, refs)
        if mem is not None:
            w = self.weight_for(variant)
            prob = (1.0 - w) * prob + w * mem
        distance = upsample_centered(out["distance"], self.image_size // qf.shape[-1])[0, 0].numpy()  # (S, S)
        return Detection(
            amap=prob.astype(np.float32, copy=False),
            score=self._score(prob, out, qf, refs, plain=mem is None),
            distance=distance,
            features=qf[0],
            tokens=out["tokens"][0] if with_tokens else None,  # (L, out_width)
        )

    def _score(self, prob: np.ndarray, out: dict[str, torch.Tensor], qf: torch.Tensor, refs: ReferenceInputs,
               plain: bool) -> float:
        """The image score: the map fused with the distance to the references' views (model/score.py) when
        the config asks for it and the references carry their views, else the pooled map. A product
        memory already holds many good images' normal variation: with one, the map is pooled as it is."""
        cfg = self.model.cfg
        if cfg.image_score != "fused" or not plain or refs.views is None:
            return pooled_score(prob, cfg.topk_frac)
        d8 = view_distance(out["distance"][0, 0], qf[0].flatten(1).T, refs.views[0])  # (h, w)
        return fused_score(prob, d8, cfg.fused_weight)

    def detect(self, query: np.ndarray, references: list[Any]) -> tuple[np.ndarray, float]:
        d = self.detection(query, references)
        return d.amap, d.score

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        if self.memory is not None:
            d["memory"] = {"weight": self.memory_weight, "variants": self.memory.describe()}
            if self.memory_weights:
                d["memory"]["weights"] = dict(self.memory_weights)
        return d

    def anomaly_map(self, query: np.ndarray, references: list[Any]) -> np.ndarray:
        return self.detect(query, references)[0]


def load_nano_detector(folder: str | Path) -> tuple[NanoDetector, dict[str, Any]]:
    folder = Path(folder)
    model = NanoComparisonModel.load(folder)
    raw = json.loads((folder / "config.json").read_text())
    name = raw.get("name", folder.name)
    memory = ProductMemory.load(folder)
    weight = raw.get("memory_weight", 0.5)
    weights = raw.get("memory_weights") or {}

    def is_weight(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1

    if not is_weight(weight):
        raise CheckpointError(f"{folder / 'config.json'}: memory_weight must be a number in [0, 1], got {weight!r}")
    if not isinstance(weights, dict) or not all(is_weight(v) for v in weights.values()):
        raise CheckpointError(f"{folder / 'config.json'}: memory_weights must map variants to numbers in [0, 1]")
    tower = load_backbone(raw.get("vision_tower"))  # EfficientNet-Lite0 when the config names none
    detector = NanoDetector(model, tower, name=name, memory=memory, memory_weight=weight, memory_weights=weights)
    return detector, {"name": name, "threshold": raw.get("threshold", 0.5)}
