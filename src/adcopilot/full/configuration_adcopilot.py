"""Configuration of the full-scale AD-Copilot model: Qwen2.5-VL plus the Comparison Encoder.

:class:`ADCopilotConfig` is a :class:`transformers.Qwen2_5_VLConfig` (so every size of the vision
tower and the language model is set as for Qwen2.5-VL) with the comparison settings added at the
top level. ``model_type`` is ``"ad_copilot"``, as in the authors' released config, and the
comparison-token count is mirrored into ``vision_config.compare_token_size`` where the release
keeps it.

Settings (all serialised to ``config.json``):

- ``sequence_compare`` (True): run the Comparison Encoder and add comparison tokens. False gives a
  plain Qwen2.5-VL.
- ``compare_token_size`` (100): L, comparison tokens per image (= learnable queries; the released
  layout has L queries at ViT width and a plain ViT-width -> LLM-width projector, no 2x2 merge).
- ``compare_placement`` ("all"): which images receive comparison tokens right after their base
  tokens: ``"all"`` (every image, as the release) or ``"query"`` (only the last image of each
  sample). The processor and the model read it from here.
- ``compare_position`` ("diagonal"): M-RoPE positions of the comparison tokens, s being the image's
  first position. ``"start"``: all L tokens at (s, s, s) and the text after them restarting at s + 1
  (the public port's scheme, the default of the authors' checkpoints); ``"diagonal"``: token k at
  (s, s + k, s + k) (the paper's figure, (i, 0, 0) to (i, L, L)); ``"last"``: all L tokens at the
  image's last base token (s, s + h - 1, s + w - 1), which the port's comment says its code does;
  ``"shared"``: all L tokens at one position right after the image's grid; ``"sequential"``:
  numbered like text after the grid.
  Which one the released weights were trained with is argued in ``docs/scale.md``; only a logits
  comparison with the authors' code on a GPU settles it (``adcopilot full parity``).
- ``compare_attention_layout`` ("standard"): the head merge of the Comparison Encoder's attentions
  (:mod:`adcopilot.model.compare`). ``"release"`` reproduces the public port's interleaving merge and
  what it implies: pre-merge features in the vision tower's window order, all images of a batch
  padded to the longest with masks and paired by a roll over the batch (``compare_pairing`` is then
  ``"batch"`` whatever it says); ``"standard"`` merges heads as usual, on features in patch order.
- ``compare_pairing`` ("sample"): "previous image" of the first image of each sample is itself
  (``"sample"``), or, as the released code does, the pairing runs over the flattened list of all
  images in the batch (``"batch"``; identical for batch size 1).
- ``compare_num_heads`` / ``compare_mlp_hidden`` (None: the ViT's heads and MLP width),
  ``compare_depth`` (1), ``compare_mlp2_sign`` (-1.0, the released model subtracts the second
  encoder MLP).

Usage::

    cfg = ADCopilotConfig()                       # the released 7B model's sizes
    cfg = ADCopilotConfig(vision_config={...}, text_config={...}, compare_token_size=100)
    cfg.comparison_config()          # the ComparisonConfig of the encoder
"""

from __future__ import annotations

from typing import Any

from transformers import Qwen2_5_VLConfig

from adcopilot.model.compare import LAYOUTS, ComparisonConfig

PLACEMENTS = ("all", "query")
POSITIONS = ("diagonal", "start", "last", "shared", "sequential")
ATTENTION_LAYOUTS = LAYOUTS
#: The variant an authors' checkpoint (model_type ad_copilot or yangjian, without our settings) gets:
#: the public port's computation (the evidence is in docs/scale.md).
RELEASE_VARIANT: dict[str, str] = {
    "compare_attention_layout": "release",
    "compare_position": "start",
    "compare_pairing": "batch",
}
RELEASED_MODEL_TYPES = ("ad_copilot", "yangjian")
PAIRINGS = ("sample", "batch")

#: Qwen2.5-VL-7B's vision tower and language model (the released model's base): the defaults here.
VISION_7B: dict[str, Any] = dict(
    depth=32, hidden_size=1280, hidden_act="silu", intermediate_size=3420, num_heads=16, in_channels=3,
    out_hidden_size=3584, patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
    fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2,
)
TEXT_7B: dict[str, Any] = dict(
    vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
    num_key_value_heads=4, max_position_embeddings=128000, rms_norm_eps=1e-6, hidden_act="silu",
    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
    use_sliding_window=False, sliding_window=32768, max_window_layers=28,
    bos_token_id=151643, eos_token_id=151645,
)

#: Comparison settings mirrored into ``vision_config`` (the vision tower builds the encoder from it).
_MIRRORED = (
    "compare_token_size",
    "compare_num_heads",
    "compare_mlp_hidden",
    "compare_depth",
    "compare_mlp2_sign",
    "compare_attention_layout",
)


class ADCopilotConfig(Qwen2_5_VLConfig):
    """Qwen2.5-VL configuration with the Comparison Encoder's settings."""

    model_type = "ad_copilot"

    sequence_compare: bool = True
    compare_token_size: int = 100
    compare_placement: str = "all"
    compare_position: str = "diagonal"
    compare_attention_layout: str = "standard"
    compare_pairing: str = "sample"
    compare_num_heads: int | None = None
    compare_mlp_hidden: int | None = None
    compare_depth: int = 1
    compare_mlp2_sign: float = -1.0

    def __post_init__(self, **kwargs: Any) -> None:
        # Unlike Qwen2_5_VLConfig (whose bare defaults are the 72B's), unset sizes are the 7B's.
        if self.vision_config is None:
            self.vision_config = dict(VISION_7B)
        elif isinstance(self.vision_config, dict):
            self.vision_config = {**VISION_7B, **self.vision_config}
        flat_text = any(k in kwargs for k in ("hidden_size", "num_hidden_layers", "vocab_size"))
        if self.text_config is None and not flat_text:  # 4.x configs keep the text settings at the top level
            self.text_config = dict(TEXT_7B)
        elif isinstance(self.text_config, dict):
            self.text_config = {**TEXT_7B, **self.text_config}
        super().__post_init__(**kwargs)
        for name, allowed in (
            ("compare_placement", PLACEMENTS),
            ("compare_position", POSITIONS),
            ("compare_pairing", PAIRINGS),
            ("compare_attention_layout", ATTENTION_LAYOUTS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if int(self.compare_token_size) < 1:
            raise ValueError(f"compare_token_size must be positive, got {self.compare_token_size}")
        vc = self.vision_config
        for name in _MIRRORED:
            setattr(vc, name, getattr(self, name))
        vc.compare_out_width = self.text_config.hidden_size
        vc.sequence_compare = self.sequence_compare

    def comparison_config(self) -> ComparisonConfig:
        """The Comparison Encoder's configuration (width = the ViT's, output = the LLM's width)."""
        return comparison_config_from_vision(self.vision_config)


def comparison_config_from_vision(vc: Any) -> ComparisonConfig:
    """ComparisonConfig from a vision config carrying the mirrored ``compare_*`` settings."""
    return ComparisonConfig(
        width=vc.hidden_size,
        num_heads=getattr(vc, "compare_num_heads", None) or vc.num_heads,
        mlp_hidden=getattr(vc, "compare_mlp_hidden", None) or vc.intermediate_size,
        num_queries=int(getattr(vc, "compare_token_size", 100)),
        out_width=int(getattr(vc, "compare_out_width", vc.out_hidden_size)),
        depth=int(getattr(vc, "compare_depth", 1)),
        mlp2_sign=float(getattr(vc, "compare_mlp2_sign", -1.0)),
        rope_2d=False,  # ViT features already carry the ViT's 2-D rotary positions
        attention_layout=str(getattr(vc, "compare_attention_layout", "standard")),
    )


def config_from_released(raw: dict[str, Any]) -> ADCopilotConfig:
    """Build an :class:`ADCopilotConfig` from a ``config.json`` dict in any of the known layouts.

    Accepts our own saves, the authors' released layout (``model_type`` ``"ad_copilot"`` or the
    Thinking variant's ``"yangjian"``, ``compare_token_size`` inside ``vision_config``,
    ``sequence_compare`` at the top level) and plain Qwen2.5-VL configs (``"qwen2_5_vl"``: the
    comparison settings get their defaults but ``sequence_compare`` is off unless set, so the
    model answers as the base model until a comparison encoder is trained). An authors' config
    (``ad_copilot`` or ``yangjian`` without our ``compare_position`` setting, which our saves always
    write) gets :data:`RELEASE_VARIANT` for the settings it does not name.
    """
    d = dict(raw)
    if is_authors_config(raw):
        for key, value in RELEASE_VARIANT.items():
            d.setdefault(key, value)
    if raw.get("model_type") == "qwen2_5_vl" and "sequence_compare" not in raw:
        d["sequence_compare"] = False  # a plain Qwen2.5-VL behaves as itself unless asked otherwise
    for key in ("model_type", "architectures", "auto_map", "transformers_version", "_name_or_path"):
        d.pop(key, None)
    vision = dict(d.get("vision_config") or {})
    if "compare_token_size" not in d and "compare_token_size" in vision:
        d["compare_token_size"] = int(vision["compare_token_size"])
    vision.pop("model_type", None)
    for key in (*_MIRRORED, "compare_out_width", "sequence_compare"):
        vision.pop(key, None)
    d["vision_config"] = vision
    if "torch_dtype" in d and "dtype" not in d:
        d["dtype"] = d.pop("torch_dtype")
    return ADCopilotConfig(**d)


def is_authors_config(raw: dict[str, Any]) -> bool:
    """Whether a ``config.json`` dict is the authors' release (not a save of this package)."""
    return raw.get("model_type") in RELEASED_MODEL_TYPES and "compare_position" not in raw
