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
(:mod:`adcopilot.model.score`), "fused-self" that distance lowered to the query's own repeats where the
reference repeats itself, "blend" (the shipped model's one-reference score) the pooled map and "fused-self"
blended, each over its own threshold, or "fused-spread" the fused score read relative to the query's own normal
level. ``multi_image_score`` and ``multi_threshold`` set the score and threshold used with two or more
references: the shipped model's are "fused-spread" and one threshold that flags about the same share of normal
parts on every product measured (figures in benchmarks/RESULTS.md); ``multi_thresholds`` holds thresholds for
three references or more.

Checkpoint folder: ``config.json`` (architecture, threshold, image size), ``model.safetensors``
(trained parts only; the tower comes from its package) and ``MODEL_CARD.md``.
"""

from __future__ import annotations

import json
import logging
import math
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
from adcopilot.model.backbone import backbone_spec
from adcopilot.model.baseline import normalized_patch_features
from adcopilot.model.compare import ComparisonConfig, ComparisonEncoder, grid_positions
from adcopilot.model.detector import Detection, Detector, OwnFrame, to_batch
from adcopilot.model.heads import DenseAnomalyHead, topk_mean
from adcopilot.model.memory import MemoryMaps, ProductMemory, Scales
from adcopilot.model.padim import stretch_grey
from adcopilot.model.score import (
    FUSED_SCORES,
    SELF_SCORES,
    dihedral_views,
    image_score,
    pooled_score,
    self_distance,
)
from adcopilot.model.upsample import upsample_centered
from adcopilot.model.vision import EfficientNetLite0, FusedPatchTower, joint_patch_features, load_vision_tower

log = logging.getLogger(__name__)

FEATURE_CHANNELS = 152
IMAGE_SCORES = ("map", "fused", "fused-self", "blend", "fused-spread")  # NanoConfig.image_score
STRIDE = 8
#: Image sides the model takes: the tower's stride-16 grid must be exactly half its stride-8 grid, and
#: above 1024 px one pair's attention no longer fits a laptop's memory.
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE, IMAGE_SIZE_STEP = 32, 1024, 16


def image_size_problem(size: Any) -> str | None:
    """Why ``size`` cannot be the side of the model's square input (None when it can)."""
    if not isinstance(size, int) or isinstance(size, bool):
        return f"must be an integer number of pixels, got {size!r}"
    if not MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE or size % IMAGE_SIZE_STEP:
        return f"must be a multiple of {IMAGE_SIZE_STEP} from {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE}, got {size}"
    return None


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
    # "fused-self" is "fused" with the query's own patches as evidence where the reference repeats itself
    # (its own self-distance below ``self_gate``), its ordinary patches (up to the ``twin_quantile`` of its
    # distances to the references) as twins (model/score.py). "blend" blends the pooled map and the
    # "fused-self" score, each over its own threshold (``blend_map_scale``, ``blend_self_scale``), the map's
    # share ``blend_weight``, on the map's scale (model/score.py). "fused-spread" reads the fused score relative
    # to the query's own normal level (``spread_weight``, below).
    image_score: str = "map"
    fused_weight: float = 0.05
    self_gate: float = 0.3
    twin_quantile: float = 0.75
    blend_weight: float = 0.4
    blend_map_scale: float = 0.5
    blend_self_scale: float = 0.42
    # With two or more references and no product memory: the image score and the threshold of the verdict
    # (``multi_threshold``; None: ``threshold``). With two references the normal level of "fused-spread" is
    # about the same on every product measured, so one threshold on it needs no labels (benchmarks/RESULTS.md).
    multi_image_score: str = "map"
    multi_threshold: float | None = None
    # "fused-spread": the fused score read relative to the query's own normal level (the quantile of its
    # nearest-reference distances) with this weight (model/score.py); the products' normal levels then meet.
    spread_weight: float = 0.25
    # Thresholds for larger reference sets, keyed by the smallest count each serves ({"3": t, "5": u}): with
    # n references the entry of the largest count not above n, else ``multi_threshold``. The fused score of
    # a normal part falls with every reference added, so the two-reference threshold would waste the ranking.
    multi_thresholds: dict[str, float] = field(default_factory=dict)
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
    4.4 MB more once the views of the fused image score, model/score.py, are made).
    """

    tokens: torch.Tensor  # (B, M, 152) unit-norm patch features, row-major per reference
    prev: torch.Tensor  # (B, M, C) their input projection: the encoder's "previous image"
    queries: torch.Tensor  # (B, H, M, D) the first cross-attention's queries of ``prev``
    pos: torch.Tensor  # (M, 2) grid positions of the patches
    views: torch.Tensor | None = None  # (B, 7 * M, 152) the references' other dihedral views' patches
    # (N,) per grid position the smallest of the references' own self-distances (the "fused-self" score's gate)
    own: torch.Tensor | None = None
    # One reference as encoded, (S, S, 3), when a fused score may need its views: they cost seven tower
    # passes, so they are made on first use (NanoDetector.with_views) and kept in ``made``.
    image: np.ndarray | None = field(default=None, repr=False, compare=False)
    made: dict[str, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)

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
            own=None if any(p.own is None for p in parts) else torch.stack([p.own for p in parts]).amin(0),
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
        check_score_config(cfg, cfg_path)
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


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def valid_twin_quantile(v: Any) -> bool:
    """``twin_quantile`` is usable: a finite share in (0, 1] (a checkpoint's config, an ONNX file's metadata)."""
    return _is_number(v) and 0 < v <= 1


def valid_spread_weight(v: Any) -> bool:
    """``spread_weight`` is usable: a finite weight in [0, 1] (a checkpoint's config, an ONNX file's metadata)."""
    return _is_number(v) and 0 <= v <= 1


def valid_self_gate(v: Any) -> bool:
    """``self_gate`` is usable: a finite cosine distance in (0, 2] (a checkpoint's config, an ONNX file's metadata)."""
    return _is_number(v) and 0 < v <= 2


def blend_problem(weight: Any, map_scale: Any, self_scale: Any) -> str | None:
    """Why the blend's parameters are not usable (None when they are): a share in [0, 1] and two positive
    finite scales (a checkpoint's config, an ONNX file's metadata)."""
    if not (_is_number(weight) and 0 <= weight <= 1):
        return f"blend_weight must be a number in [0, 1], got {weight!r}"
    for name, v in (("blend_map_scale", map_scale), ("blend_self_scale", self_scale)):
        if not (_is_number(v) and v > 0):
            return f"{name} must be a positive number, got {v!r}"
    return None


def check_score_config(cfg: NanoConfig, path: Path) -> None:
    """Refuse a config whose image size, image scores, fused weight or thresholds are not usable (CheckpointError)."""
    problem = image_size_problem(cfg.image_size)
    if problem:
        raise CheckpointError(f"{path}: image_size {problem}")
    scores, w = (cfg.image_score, cfg.multi_image_score), cfg.fused_weight
    if any(s not in IMAGE_SCORES for s in scores) or not _is_number(w) or not 0 <= w <= 1:
        raise CheckpointError(f"{path}: image_score and multi_image_score must be one of {', '.join(IMAGE_SCORES)} "
                              f"and fused_weight a number in [0, 1], got {scores[0]!r}, {scores[1]!r} and {w!r}")
    if not valid_self_gate(cfg.self_gate):
        raise CheckpointError(f"{path}: self_gate must be a cosine distance in (0, 2], got {cfg.self_gate!r}")
    if not valid_twin_quantile(cfg.twin_quantile):
        raise CheckpointError(f"{path}: twin_quantile must be a number in (0, 1], got {cfg.twin_quantile!r}")
    if not valid_spread_weight(cfg.spread_weight):
        raise CheckpointError(f"{path}: spread_weight must be a number in [0, 1], got {cfg.spread_weight!r}")
    blend = blend_problem(cfg.blend_weight, cfg.blend_map_scale, cfg.blend_self_scale)
    if blend:
        raise CheckpointError(f"{path}: {blend}")
    for name in ("threshold", "multi_threshold"):
        v = getattr(cfg, name)
        if not (_is_number(v) or (v is None and name == "multi_threshold")):
            raise CheckpointError(f"{path}: {name} must be a finite number, got {v!r}")
    try:
        check_threshold_table(cfg.multi_thresholds)
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    if cfg.multi_thresholds and cfg.multi_threshold is None:
        raise CheckpointError(f"{path}: multi_thresholds needs multi_threshold (the threshold with two references)")


def check_threshold_table(table: Any) -> dict[str, float]:
    """``multi_thresholds`` as read from a config or a file's metadata, checked: counts from 3 up (as
    strings of digits) to finite numbers; ValueError naming the problem otherwise."""
    if not isinstance(table, dict) or not all(
        isinstance(k, str) and k.isdigit() and int(k) >= 3 and _is_number(v) for k, v in table.items()
    ):
        raise ValueError(f"multi_thresholds must map reference counts from 3 up to finite numbers, got {table!r}")
    return {str(int(k)): float(v) for k, v in table.items()}


def threshold_by_count(references: int, threshold: float, multi: float | None, table: dict[str, float]) -> float:
    """The verdict's threshold with this many references: ``threshold`` with one (or without a
    multi-reference threshold), else the ``table`` entry of the largest count not above ``references``,
    else ``multi``."""
    if references < 2 or multi is None:
        return float(threshold)
    served = [(int(k), v) for k, v in table.items() if int(k) <= references]  # keys as written ("03" is 3)
    return float(max(served)[1]) if served else float(multi)


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

    def image_score_for(self, references: int) -> str:
        """The image score ("map", "fused", "fused-self", "blend" or "fused-spread") of a comparison with this many
        references. A product memory already holds many good images' normal variation: with one, the map is pooled
        as it is."""
        cfg = self.model.cfg
        if self.memory is not None:
            return "map"
        return cfg.multi_image_score if references >= 2 else cfg.image_score

    def threshold_for(self, references: int) -> float:
        """The verdict's threshold with this many references: with two or more, where the score is the
        config's multi-reference score, ``multi_threshold`` or the ``multi_thresholds`` entry for that many;
        else (and with a product memory) the model's threshold."""
        cfg = self.model.cfg
        if self.memory is not None:
            return self.threshold
        return threshold_by_count(references, self.threshold, cfg.multi_threshold, cfg.multi_thresholds)

    @torch.inference_mode()
    def encode_reference(self, image: np.ndarray) -> ReferenceInputs:
        inputs = self.model.reference_inputs(self.patch_features(image).unsqueeze(1))
        if not {self.image_score_for(1), self.image_score_for(2)} & set(FUSED_SCORES):
            return inputs
        return replace(inputs, image=image)  # the views only when a comparison scores with them

    @torch.inference_mode()
    def with_views(self, reference: ReferenceInputs) -> ReferenceInputs:
        """``reference`` with its other seven dihedral views' patches, made once and kept with it."""
        if reference.views is not None or reference.image is None:
            return reference
        if "views" not in reference.made:  # 7 x (1, 152, h, w) -> (1, 7 * N, 152)
            # One view at a time: a batch of seven held 90 MB more at its peak and took longer on a CPU.
            feats = torch.cat([normalized_patch_features(self.fused_tower, to_batch([v]))
                               for v in dihedral_views(reference.image)[1:]])
            reference.made["views"] = feats.flatten(2).transpose(1, 2).reshape(1, -1, feats.shape[1])
        return replace(reference, views=reference.made["views"])

    @torch.inference_mode()
    def with_own(self, reference: ReferenceInputs) -> ReferenceInputs:
        """``reference`` (one) with its own self-distance per position, made once and kept with it."""
        if reference.own is not None:
            return reference
        if "own" not in reference.made:
            side = self.image_size // STRIDE
            reference.made["own"] = self_distance(reference.tokens[0], (side, side))  # (N,)
        return replace(reference, own=reference.made["own"])

    def _scored_inputs(self, references: Sequence[Any]) -> ReferenceInputs:
        """The references' inputs concatenated, with their views where the score for that many reads them."""
        parts = [self._as_inputs(r) for r in references]
        score = self.image_score_for(len(parts))
        if score in FUSED_SCORES:
            parts = [self.with_views(p) for p in parts]
        if score in SELF_SCORES:
            parts = [self.with_own(p) for p in parts]
        return ReferenceInputs.concat(parts)

    @torch.inference_mode()
    def run(
        self, query: np.ndarray, references: Sequence[ReferenceInputs | torch.Tensor], with_tokens: bool = True
    ) -> dict[str, torch.Tensor]:
        """The model's outputs for a query and encoded references (or raw (152, h, w) features)."""
        refs = ReferenceInputs.concat([self._as_inputs(r) for r in references])
        return self.model.compare_with(self.patch_features(query), refs, with_tokens=with_tokens)

    def reference_tokens(self, reference: Any) -> torch.Tensor | None:
        """(N, 152) the patch features the comparison's nearest-reference distance is measured against."""
        return reference.tokens[0] if isinstance(reference, ReferenceInputs) and reference.tokens.shape[0] == 1 else None

    def _as_inputs(self, reference: ReferenceInputs | torch.Tensor) -> ReferenceInputs:
        if isinstance(reference, ReferenceInputs):
            return reference
        return self.model.reference_inputs(reference[None, None])

    @torch.inference_mode()
    def maps(
        self, query: np.ndarray, references: list[Any], own_frame: OwnFrame | None = None
    ) -> tuple[np.ndarray, np.ndarray | None, str | None]:
        """The two maps before fusion: (comparison model's (S, S) probability map, product memory's
        calibrated (S, S) map or None without a memory, the memory variant used or None)."""
        qf, position = self._query_features(to_batch([query]), [own_frame])  # (1, 152, h, w)
        refs = ReferenceInputs.concat([self._as_inputs(r) for r in references])
        out = self.model.compare_with(qf, refs, with_tokens=False)
        prob, mem = self._maps_from(out, qf, refs, position[0])
        if mem is None or self.memory is None:
            return prob, None, None
        part = self.memory.variants[mem.variant].padim
        return prob, mem.mixed(0.0 if part is None else part.share), mem.variant

    def _query_features(
        self, x: torch.Tensor, own_frames: Sequence[OwnFrame | None] | None = None
    ) -> tuple[torch.Tensor, list[tuple[Scales, np.ndarray | None] | None]]:
        """(B, 3, S, S) -> the (B, 152, h, w) normalised patch features and, per query, what the product
        memory's PaDiM part reads (None without one): the raw stage outputs of the query in its own frame
        and the matrix into the reference frame (None: the same frame; then one tower pass serves both)."""
        b = x.shape[0]
        if self.memory is None or not self.memory.needs_scales:
            return normalized_patch_features(self.fused_tower, x), [None] * b
        scales = self.fused_tower.patch_features(x)
        frames = own_frames if own_frames is not None else [None] * b
        stretch = self.memory.padim_stretch  # PaDiM fitted on stretched images: one more tower pass, always
        position: list[tuple[Scales, np.ndarray | None] | None] = []
        for i, f in enumerate(frames):
            if f is None and not stretch:
                position.append(({k: v[i : i + 1] for k, v in scales.items()}, None))
            else:  # one more tower pass: the statistics hold in the frame the good images were taken in
                own = x[i].permute(1, 2, 0).numpy() if f is None else f[0]  # (S, S, 3)
                own = stretch_grey(own) if stretch else own
                position.append((self.fused_tower.patch_features(to_batch([own])), None if f is None else f[1]))
        return joint_patch_features(scales), position

    def _maps_from(
        self, out: dict[str, torch.Tensor], qf: torch.Tensor, refs: ReferenceInputs,
        position: tuple[Scales, np.ndarray | None] | None = None,
    ) -> tuple[np.ndarray, MemoryMaps | None]:
        """The comparison model's (S, S) probability map and the product memory's parts (None without a
        memory) from the comparison's output (pixel logits (1, 1, h, w), distance), the query's features and
        (for a memory with PaDiM) its raw stage outputs and their frame."""
        if "pixel_logits" not in out:  # the comparison was skipped: its weight in the fused map is 0
            prob = np.zeros((self.image_size, self.image_size), np.float32)
        else:
            logits = out["pixel_logits"]
            prob = torch.sigmoid(upsample_centered(logits, self.image_size // logits.shape[-1]))[0, 0].numpy()
            if self.model.cfg.smooth_sigma > 0:
                prob = cv2.GaussianBlur(prob, (0, 0), self.model.cfg.smooth_sigma)
        if self.memory is None:
            return prob, None
        h, w = qf.shape[2:]
        mem = self.memory.maps(qf[0].flatten(1).T, refs.tokens[0], (h, w), self.image_size,
                               reference_distance=out["distance"][0, 0].flatten(),  # reused, not recomputed
                               scales=None if position is None else position[0],
                               padim_warp=None if position is None else position[1])
        return prob, mem

    def weight_for(self, variant: str | None) -> float:
        """The memory's weight in the fused map for ``variant`` (chosen per variant by ``adapt``)."""
        return self.memory_weights.get(variant, self.memory_weight) if variant is not None else self.memory_weight

    @torch.inference_mode()
    def detection(
        self, query: np.ndarray, references: list[Any], with_tokens: bool = False, own_frame: OwnFrame | None = None
    ) -> Detection:
        """One comparison pass: the fused map and its score, the distance map, the query's features
        and (``with_tokens``) the comparison tokens."""
        qf, position = self._query_features(to_batch([query]), [own_frame])  # (1, 152, h, w)
        refs = self._scored_inputs(references)
        out = self._compare(qf, refs, with_tokens, [refs])
        return self._detection_from(out, qf, refs, with_tokens, position[0])

    def _compare(self, qf: torch.Tensor, refs: ReferenceInputs, with_tokens: bool,
                 each: Sequence[ReferenceInputs]) -> dict[str, torch.Tensor]:
        """The comparison's outputs for queries qf (B, 152, h, w), each against its references (``each``, B
        of them; ``refs`` all of them stacked). Where the product memory's map takes the whole fused map
        (weight 1 for every query's variant, as ``adapt`` chose on ELPV) and no tokens are asked for, the
        comparison model's map would be multiplied by 0: only the nearest-reference distance is computed."""
        n = qf.shape[2] * qf.shape[3]
        if with_tokens or self.memory is None or any(
            self.weight_for(self.memory.choose(r.tokens[0][:n])) < 1.0 for r in each
        ):
            return self.model.compare_with(qf, refs, with_tokens=with_tokens)
        sim = torch.bmm(qf.flatten(2).transpose(1, 2), refs.tokens.transpose(1, 2))  # (B, N, k*N)
        return {"distance": (1.0 - sim.max(dim=2).values).clamp_min(0).view(qf.shape[0], 1, *qf.shape[2:])}

    @torch.inference_mode()
    def detections(
        self, queries: Sequence[np.ndarray], references: Sequence[Sequence[Any]], with_tokens: bool = False,
        own_frames: Sequence[OwnFrame | None] | None = None,
    ) -> list[Detection]:
        """:meth:`detection` of several queries in one pass: the tower on all of them at once, the
        comparison on each group with the same number of reference patches (one batch when all have
        the same number of references). The same results to float rounding."""
        qf, position = self._query_features(to_batch(list(queries)), own_frames)  # (B, 152, h, w)
        refs = [self._scored_inputs(rs) for rs in references]
        groups: dict[int, list[int]] = {}
        for i, r in enumerate(refs):
            groups.setdefault(r.tokens.shape[1], []).append(i)
        found: dict[int, Detection] = {}
        for idx in groups.values():
            out = self._compare(qf[idx], ReferenceInputs.stack([refs[i] for i in idx]), with_tokens, [refs[i] for i in idx])
            for j, i in enumerate(idx):
                one = {k: v[j : j + 1] for k, v in out.items()}  # batch of one, as detection's
                found[i] = self._detection_from(one, qf[i : i + 1], refs[i], with_tokens, position[i])
        return [found[i] for i in range(len(refs))]

    def _detection_from(
        self, out: dict[str, torch.Tensor], qf: torch.Tensor, refs: ReferenceInputs, with_tokens: bool,
        position: tuple[Scales, np.ndarray | None] | None = None,
    ) -> Detection:
        """:meth:`detection` from the comparison's output for one query (batch of one), its features and
        (for a memory with PaDiM) its raw stage outputs and their frame."""
        prob, mem = self._maps_from(out, qf, refs, position)
        if mem is not None and self.memory is not None:
            prob, score = self.memory.fuse(prob, mem, self.weight_for(mem.variant),
                                           lambda m: pooled_score(m, self.model.cfg.topk_frac))
        else:
            score = self._score(prob, out, qf, refs)
        distance = upsample_centered(out["distance"], self.image_size // qf.shape[-1])[0, 0].numpy()  # (S, S)
        return Detection(
            amap=prob.astype(np.float32, copy=False),
            score=score,
            distance=distance,
            features=qf[0],
            tokens=out["tokens"][0] if with_tokens else None,  # (L, out_width)
        )

    def _score(self, prob: np.ndarray, out: dict[str, torch.Tensor], qf: torch.Tensor, refs: ReferenceInputs) -> float:
        """The image score (:meth:`image_score_for` the number of references): the map fused with the
        distance to the references' views (model/score.py) when the references carry them, else the pooled map;
        "fused-self" lowers that distance to the query's own where the references repeat themselves; "blend"
        blends that with the pooled map."""
        cfg = self.model.cfg
        k = refs.tokens.shape[1] // (qf.shape[2] * qf.shape[3])  # references compared
        return image_score(self.image_score_for(k), prob, out["distance"][0, 0], qf[0].flatten(1).T,
                           None if refs.views is None else refs.views[0], refs.own, topk_frac=cfg.topk_frac,
                           fused_weight=cfg.fused_weight, self_gate=cfg.self_gate, twin_quantile=cfg.twin_quantile,
                           blend=(cfg.blend_weight, cfg.blend_map_scale, cfg.blend_self_scale),
                           spread_weight=cfg.spread_weight)

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
    spec = backbone_spec(raw.get("vision_tower"))  # EfficientNet-Lite0 when the config names none
    if spec.channels != model.input_proj[0].in_features:
        raise CheckpointError(f"{folder / 'config.json'}: vision_tower {spec.name!r} gives {spec.channels} "
                              f"channels; the model takes {model.input_proj[0].in_features}")
    tower = spec.load()
    detector = NanoDetector(model, tower, name=name, memory=memory, memory_weight=weight, memory_weights=weights)
    return detector, {"name": name, "threshold": raw.get("threshold", 0.5)}
