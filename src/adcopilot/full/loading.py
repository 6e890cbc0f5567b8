"""Load and save full-scale checkpoints from local folders of safetensors (never the model hub).

Accepted folders: a ``config.json`` (ours, the authors' released AD-Copilot / AD-Copilot-Thinking
layout, or a plain Qwen2.5-VL one) and ``model.safetensors`` or shards listed in
``model.safetensors.index.json``. Both key-prefix styles are read:

=================================  ==========================================
transformers 4.x (the release)      transformers 5.x
=================================  ==========================================
``visual.*``                        ``model.visual.*``
``model.layers.*``, ``model.norm``  ``model.language_model.layers.*`` ...
``model.embed_tokens.*``            ``model.language_model.embed_tokens.*``
``lm_head.*``                       ``lm_head.*``
=================================  ==========================================

The Comparison Encoder lives under ``visual.compare_visual_encoder.*`` (its released name). Every
tensor's shape is checked against the model built from the config; wrong shapes, unexpected keys
and missing keys are reported by name (:class:`adcopilot.errors.CheckpointError`). A base
Qwen2.5-VL checkpoint has no comparison weights: the encoder is then freshly initialised (seeded)
and the report says so (train stage 1 before trusting its answers).

Usage::

    model = load_full_model("ckpt/", device="cuda", dtype="bfloat16", attn_implementation="sdpa")
    processor = load_processor("ckpt/")
    save_full_model(model, processor, "out/")          # safetensors + config.json + MODEL_CARD.md
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from tqdm.auto import tqdm

from adcopilot.errors import CheckpointError
from adcopilot.full.configuration_adcopilot import (
    RELEASE_VARIANT,
    RELEASED_MODEL_TYPES,
    ADCopilotConfig,
    config_from_released,
    is_authors_config,
)
from adcopilot.full.modeling_adcopilot import ADCopilotVLForConditionalGeneration, _init_comparison
from adcopilot.full.processing_adcopilot import ADCopilotProcessor
from adcopilot.jsonfile import read_json
from adcopilot.model.checkpoint_kind import FULL_KINDS, checkpoint_kind, kind_of_config, read_config_json
from adcopilot.model.compare import ComparisonEncoder

log = logging.getLogger(__name__)

COMPARE_KEY = "model.visual.compare_visual_encoder."


@dataclass
class LoadReport:
    """What a load found: the key layout, and what was missing, unexpected or freshly initialised."""

    layout: str = "transformers-5"
    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    initialised: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{self.loaded} tensors loaded ({self.layout} key layout)"]
        if self.initialised:
            parts.append(f"freshly initialised: {', '.join(self.initialised)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected keys ignored")
        return "; ".join(parts)


# ---------------------------------------------------------------------------- reading the folder
def is_full_checkpoint(path: str | os.PathLike) -> bool:
    """True if ``path`` is a folder whose config.json describes an AD-Copilot (or Qwen2.5-VL) model."""
    try:
        return checkpoint_kind(path) in FULL_KINDS
    except CheckpointError:
        return False


def _read_json_object(file: Path) -> dict[str, Any]:
    """A JSON file holding an object; anything else is a one-line :class:`CheckpointError`."""
    raw = read_json(file, CheckpointError)
    if not isinstance(raw, dict):
        raise CheckpointError(f"{file}: expected a JSON object")
    return raw


def read_config(path: str | os.PathLike, **overrides: Any) -> ADCopilotConfig:
    """The :class:`ADCopilotConfig` of a checkpoint folder (any known layout), ``overrides`` applied."""
    file = Path(path) / "config.json"
    raw = read_config_json(path)
    mt = raw.get("model_type")
    if kind_of_config(raw) not in FULL_KINDS:
        raise CheckpointError(f"{file}: model_type {mt!r} is not an AD-Copilot or Qwen2.5-VL checkpoint")
    for k in overrides:
        if not hasattr(ADCopilotConfig, k):
            raise CheckpointError(f"unknown model setting {k!r}")
    # The authors' defaults are decided on the file itself, before the caller's overrides.
    defaults = {k: v for k, v in RELEASE_VARIANT.items() if k not in raw} if is_authors_config(raw) else {}
    try:
        cfg = config_from_released({**raw, **defaults, **overrides})
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{file}: invalid configuration ({exc})") from None
    if defaults:
        log.info("%s: the authors' checkpoint; computing as the released model: %s", file,
                 ", ".join(f"{k}={getattr(cfg, k)}" for k in RELEASE_VARIANT))
    if mt == "qwen2_5_vl" and not cfg.sequence_compare:
        log.info("%s: a plain Qwen2.5-VL config; comparison tokens are off (sequence_compare=True to add them)", file)
    return cfg


def _model_type(root: Path) -> str:
    """The ``model_type`` of a folder whose config.json :func:`read_config` has accepted."""
    return str(json.loads((root / "config.json").read_text()).get("model_type", ""))


#: A shard's name as transformers writes it: ``model-00001-of-00004.safetensors``.
_SHARD = re.compile(r"-(\d+)-of-(\d+)\.safetensors$")


def weight_files(path: str | os.PathLike) -> list[Path]:
    """The safetensors files of a checkpoint folder (shards in index order)."""
    root = Path(path)
    index = root / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{index}: malformed index ({exc})") from None
        files = [root / name for name in dict.fromkeys(weight_map.values())]
        for f in files:
            if not f.is_file():
                raise CheckpointError(f"{f}: shard listed in {index.name} is missing")
        return files
    files = sorted(root.glob("*.safetensors"))
    if not files:
        if any(root.glob("*.bin")) or any(root.glob("*.pt")):
            raise CheckpointError(f"{root}: only pickle weights (.bin/.pt) found; convert them to safetensors")
        raise CheckpointError(f"{root}: no .safetensors weights found")
    totals = {int(m.group(2)) for f in files if (m := _SHARD.search(f.name))}
    for total in totals:  # shards without an index: all of them must be there
        have = {int(m.group(1)) for f in files if (m := _SHARD.search(f.name)) and int(m.group(2)) == total}
        lacking = sorted(set(range(1, total + 1)) - have)
        if lacking:
            raise CheckpointError(
                f"{root}: {len(lacking)} of {total} weight shards missing (e.g. shard {lacking[0]} of {total})"
            )
    return files


def canonical_key(key: str) -> str:
    """A checkpoint key in transformers-5 naming (accepts the 4.x layout of the release)."""
    if key.startswith("visual."):
        return "model." + key
    if key.startswith("model.") and not key.startswith(("model.visual.", "model.language_model.")):
        return "model.language_model." + key[len("model."):]
    return key


# ---------------------------------------------------------------------------- loading
def _dtype(dtype: str | torch.dtype | None, config: ADCopilotConfig) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        d = getattr(config, "dtype", None)
        if isinstance(d, str):
            d = getattr(torch, d, None)
        return d if isinstance(d, torch.dtype) else torch.float32
    resolved = getattr(torch, str(dtype), None)
    if not isinstance(resolved, torch.dtype):
        raise CheckpointError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
    return resolved


def load_full_model(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = "auto",
    attn_implementation: str | None = None,
    strict: bool = True,
    seed: int = 0,
    return_report: bool = False,
    **config_overrides: Any,
):
    """Build the model from ``path/config.json`` and load its safetensors, checking every shape.

    ``attn_implementation``: None (transformers' default, SDPA), "eager", "sdpa" or
    "flash_attention_2" (GPU, needs the flash-attn package). ``strict``: unexpected keys are an
    error (else logged and ignored). ``config_overrides`` set config fields (e.g.
    ``compare_position="shared"``). Returns the model in eval mode (and the :class:`LoadReport`
    with ``return_report``)."""
    from accelerate import init_empty_weights

    root = Path(path)
    if not root.is_dir():
        raise CheckpointError(f"{root}: no such checkpoint folder")
    config = read_config(root, **config_overrides)
    released = _model_type(root) in RELEASED_MODEL_TYPES
    torch_dtype = _dtype(dtype, config)
    files = weight_files(root)
    try:
        with init_empty_weights(include_buffers=False):
            model = ADCopilotVLForConditionalGeneration._from_config(
                config, attn_implementation=attn_implementation, dtype=torch_dtype
            )
    except (ImportError, ValueError) as exc:
        raise CheckpointError(f"{root}: cannot build the model ({exc})") from None
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}

    report = LoadReport()
    state: dict[str, torch.Tensor] = {}
    wrong: list[str] = []
    for file in tqdm(files, desc=f"loading {root.name}", unit="shard", disable=len(files) < 2):
        try:
            with safe_open(str(file), framework="pt", device="cpu") as f:
                names = list(f.keys())  # a safetensors handle is not iterable
                for key in names:
                    name = canonical_key(key)
                    if name != key:
                        report.layout = "transformers-4 (released)"
                    if name not in expected:
                        report.unexpected.append(key)
                        continue
                    shape = tuple(f.get_slice(key).get_shape())
                    if shape != expected[name]:
                        wrong.append(f"{key}: checkpoint {list(shape)} vs model {list(expected[name])}")
                        continue
                    state[name] = f.get_tensor(key).to(device=device, dtype=torch_dtype)
        except (OSError, RuntimeError, ValueError) as exc:
            if isinstance(exc, CheckpointError):
                raise
            raise CheckpointError(f"{file}: unreadable safetensors ({exc})") from None
    if wrong:
        raise CheckpointError(f"{root}: {len(wrong)} tensors have the wrong shape: " + "; ".join(wrong[:5]))
    if report.unexpected:
        msg = f"{root}: {len(report.unexpected)} unexpected keys: {', '.join(report.unexpected[:5])}"
        if strict:
            raise CheckpointError(msg + " (pass strict=False to ignore them)")
        log.warning(msg)

    missing = [k for k in expected if k not in state]
    compare_missing = [k for k in missing if k.startswith(COMPARE_KEY)]
    tied = config.tie_word_embeddings and "lm_head.weight" in missing
    other = [k for k in missing if not k.startswith(COMPARE_KEY) and not (tied and k == "lm_head.weight")]
    if other:
        raise CheckpointError(f"{root}: {len(other)} tensors missing from the checkpoint: {', '.join(other[:5])}")
    n_compare = sum(k.startswith(COMPARE_KEY) for k in expected)
    if compare_missing and len(compare_missing) != n_compare:
        raise CheckpointError(
            f"{root}: the Comparison Encoder is incomplete: {len(compare_missing)} of {n_compare} tensors missing "
            f"({', '.join(compare_missing[:3])})"
        )
    if compare_missing and released and config.sequence_compare:
        # An AD-Copilot checkpoint is trained with its encoder: a random one would answer silently wrong.
        raise CheckpointError(
            f"{root}: an AD-Copilot checkpoint without the Comparison Encoder's tensors "
            f"({COMPARE_KEY.removeprefix('model.')}*); only a plain Qwen2.5-VL folder may lack them"
        )
    report.missing = missing
    report.loaded = len(state)

    model.load_state_dict(state, strict=False, assign=True)
    if compare_missing:
        _fresh_comparison_encoder(model, seed, torch_dtype, device)
        report.initialised.append("Comparison Encoder (not in the checkpoint; train stage 1)")
        log.warning("%s: no Comparison Encoder weights; initialised it freshly (seed %d)", root, seed)
    if tied:
        model.lm_head.weight = model.model.language_model.embed_tokens.weight
    leftover = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if leftover:  # pragma: no cover - guards against a model change the checks above missed
        raise CheckpointError(f"{root}: parameters left unloaded: {', '.join(leftover[:5])}")
    model.to(device)
    model.eval()
    gen = read_generation_config(root)
    if gen is not None:
        model.generation_config = gen
    log.info("%s: %s", root, report.summary())
    return (model, report) if return_report else model


def read_generation_config(root: Path):
    """The folder's ``generation_config.json`` (end tokens, repetition penalty, ...), or None if absent.

    ``generate`` then uses it as the authors' ``from_pretrained`` does; callers still choose greedy
    decoding and the answer length."""
    from transformers import GenerationConfig

    file = root / "generation_config.json"
    if not file.is_file():
        return None
    raw = _read_json_object(file)
    try:
        return GenerationConfig.from_dict(raw)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{file}: invalid generation settings ({exc})") from None


def _fresh_comparison_encoder(model, seed: int, dtype: torch.dtype, device: str | torch.device) -> None:
    visual = model.model.visual
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        enc = ComparisonEncoder(visual.compare_visual_encoder.cfg)
        enc.apply(visual._init_weights)
        enc.apply(_init_comparison)
    finally:
        torch.random.set_rng_state(gen_state)
    visual.compare_visual_encoder = enc.to(device=device, dtype=dtype)


def load_processor(
    path: str | os.PathLike,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    config: ADCopilotConfig | None = None,
):
    """The :class:`ADCopilotProcessor` of a checkpoint folder (tokenizer + image processor files).

    Reads the tokenizer and ``preprocessor_config.json`` directly, so released folders whose
    processor class is not installed (the Thinking variant's) load as well."""
    from transformers import AutoTokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    root = Path(path)
    config = config or read_config(root)
    settings = _image_processor_settings(root)
    if min_pixels is not None or max_pixels is not None:
        size = dict(settings.get("size") or {})
        if min_pixels is not None:
            size["shortest_edge"] = int(min_pixels)
        if max_pixels is not None:
            size["longest_edge"] = int(max_pixels)
        settings["size"] = size
        settings.pop("min_pixels", None)
        settings.pop("max_pixels", None)
    try:
        tokenizer = AutoTokenizer.from_pretrained(root, local_files_only=True)
        image_processor = Qwen2VLImageProcessorPil(**settings)
    except (OSError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{root}: cannot read the tokenizer or image processor ({exc})") from None
    template = getattr(tokenizer, "chat_template", None)
    if (root / "chat_template.jinja").is_file():
        template = (root / "chat_template.jinja").read_text()
    elif (root / "chat_template.json").is_file():
        try:
            template = json.loads((root / "chat_template.json").read_text()).get("chat_template", template)
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{root / 'chat_template.json'}: malformed JSON ({exc.msg})") from None
    return ADCopilotProcessor(
        image_processor,
        tokenizer,
        chat_template=template if isinstance(template, str) else None,
        # A model without comparison tokens (a plain Qwen2.5-VL) gets no comparison placeholders.
        compare_token_size=config.compare_token_size if config.sequence_compare else 0,
        compare_placement=config.compare_placement,
    )


def _image_processor_settings(root: Path) -> dict[str, Any]:
    """The image processor's settings: ``preprocessor_config.json`` (4.x) or ``processor_config.json`` (5.x)."""
    for name, section in (("preprocessor_config.json", None), ("processor_config.json", "image_processor")):
        file = root / name
        if not file.is_file():
            continue
        try:
            raw = json.loads(file.read_text())
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{file}: malformed JSON ({exc.msg}, line {exc.lineno})") from None
        settings = raw.get(section) if section else raw
        if isinstance(settings, dict):
            drop = ("image_processor_type", "processor_class", "auto_map", "_processor_class")
            return {k: v for k, v in settings.items() if k not in drop}
    raise CheckpointError(f"{root}: no image-processor settings (preprocessor_config.json or processor_config.json)")


# ---------------------------------------------------------------------------- saving
MODEL_CARD = """# {name}

AD-Copilot full-scale model: Qwen2.5-VL with the Comparison Encoder (bidirectional cross-attention
between each image's pre-merge ViT features and its predecessor's, {L} learnable comparison queries,
projector to the LLM width), saved by adcopilot.

| setting | value |
|---|---|
| parameters | {params:,} (Comparison Encoder {cparams:,}) |
| vision tower | width {vw}, {vd} blocks |
| language model | width {tw}, {tl} layers, vocabulary {vocab} |
| comparison tokens | {L} per image, placement `{placement}`, M-RoPE position `{position}` |
| dtype | {dtype} |

Files: `config.json`, `model*.safetensors` (no pickle), tokenizer and image-processor files.
Load with `adcopilot.full.load_full_model(path)` or `adcopilot inspect --model PATH`.

{extra}
"""


def save_full_model(model, processor, path: str | os.PathLike, extra: str = "", max_shard_size: str = "5GB") -> Path:
    """Write ``model`` (safetensors, released key layout) and ``processor`` to ``path`` with a model card."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, max_shard_size=max_shard_size)
    if processor is not None:
        processor.save_pretrained(out)
    cfg = model.config
    enc = model.model.visual.compare_visual_encoder
    card = MODEL_CARD.format(
        name=out.name or "AD-Copilot",
        L=cfg.compare_token_size,
        params=sum(p.numel() for p in model.parameters()),
        cparams=sum(p.numel() for p in enc.parameters()),
        vw=cfg.vision_config.hidden_size,
        vd=cfg.vision_config.depth,
        tw=cfg.text_config.hidden_size,
        tl=cfg.text_config.num_hidden_layers,
        vocab=cfg.text_config.vocab_size,
        placement=cfg.compare_placement,
        position=cfg.compare_position,
        dtype=str(next(model.parameters()).dtype).replace("torch.", ""),
        extra=extra,
    )
    (out / "MODEL_CARD.md").write_text(card)
    return out
