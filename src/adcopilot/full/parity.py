"""One image pair through every variant of the full model, dumped for comparison with the authors' code.

Which attention layout (``compare_attention_layout``) and which M-RoPE scheme of the comparison
tokens (``compare_position``) the released weights were trained with can only be settled by
running the authors' remote code on a GPU. :func:`run_parity` makes that one step: the same
inputs (the authors' prompt, images thumbnailed with LANCZOS to 512 pixels) through each
layout x position, writing

- ``parity.safetensors``: the shared inputs (``input_ids`` (1, S), ``attention_mask``,
  ``pixel_values``, ``image_grid_thw``) and per variant ``VARIANT/comparison_tokens`` (n_images,
  L, D), ``VARIANT/position_ids`` (3, 1, S), ``VARIANT/last_logits`` (vocab,) of the prompt's last
  token and ``VARIANT/generated_ids`` (first greedy tokens), all float32 / int64;
- ``parity.json``: the prompt, the checkpoint's own variant, and per variant its settings, the
  first generated token ids and text.

``VARIANT`` is ``LAYOUT-POSITION``, e.g. ``release-start``. ``docs/scale.md`` shows the comparison
on the authors' side.

Usage::

    summary = run_parity("AD-Copilot/", "query.png", ["good.png"], "dump/", max_new_tokens=8)
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from adcopilot.errors import AdcopilotError
from adcopilot.full.configuration_adcopilot import ATTENTION_LAYOUTS, POSITIONS
from adcopilot.full.pipeline import FullModel, anomaly_question, image_name
from adcopilot.imaging import ImageInput, load_image

log = logging.getLogger(__name__)

#: The variants a dump holds: every attention layout with every position scheme.
VARIANTS: tuple[tuple[str, str], ...] = tuple((lay, pos) for lay in ATTENTION_LAYOUTS for pos in POSITIONS)


def variant_name(layout: str, position: str) -> str:
    return f"{layout}-{position}"


def _variant_outputs(model: Any, inputs: dict[str, torch.Tensor], max_new_tokens: int) -> dict[str, torch.Tensor]:
    """Comparison tokens, positions, last-token logits and first generated tokens under the model's settings."""
    grid = inputs["image_grid_thw"]
    with torch.inference_mode():
        feats = model.model.get_image_features(inputs["pixel_values"], grid, return_dict=True)
        embeds = model.model.add_comparison_tokens(feats, grid, inputs["input_ids"])
        base = (grid.prod(-1) // model.config.vision_config.spatial_merge_size**2).tolist()
        tokens = torch.stack([e[b:] for e, b in zip(embeds, base, strict=True)])  # (n, L, D)
        position_ids, _ = model.model.get_rope_index(inputs["input_ids"], image_grid_thw=grid,
                                                     attention_mask=inputs.get("attention_mask"))
        logits = model(**inputs).logits[0, -1]
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return {
        "comparison_tokens": tokens.float().cpu(),
        "position_ids": position_ids.cpu(),
        "last_logits": logits.float().cpu(),
        "generated_ids": out[0, inputs["input_ids"].shape[1]:].cpu(),
    }


def run_parity(
    model_path: str | os.PathLike,
    query: ImageInput,
    references: Sequence[ImageInput],
    out_dir: str | os.PathLike,
    *,
    prompt: str | None = None,
    max_new_tokens: int = 8,
    device: str = "auto",
    dtype: str = "auto",
) -> dict[str, Any]:
    """Run the pair through every variant, write ``parity.safetensors`` and ``parity.json`` to ``out_dir``.

    Returns the JSON summary. The model's own settings are restored afterwards."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise AdcopilotError(f"{out}: exists and is not a folder")
    if max_new_tokens < 1:
        raise AdcopilotError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    images = [*references, query]
    for i, src in enumerate(images):  # bad images fail before the model loads
        load_image(src, name=image_name(src, i))
    full = FullModel.load(model_path, device=device, dtype=dtype)
    model, cfg = full.model, full.model.config
    prompt = prompt or anomaly_question(len(references))
    inputs = full.prepare(images, [{"role": "user", "content": prompt}])
    own = (cfg.compare_attention_layout, cfg.compare_position, cfg.compare_pairing)
    tensors: dict[str, torch.Tensor] = {
        k: v.cpu().contiguous() for k, v in inputs.items() if torch.is_tensor(v) and k != "mm_token_type_ids"
    }
    variants: dict[str, Any] = {}
    try:
        for layout, position in VARIANTS:
            name = variant_name(layout, position)
            cfg.compare_attention_layout, cfg.compare_position = layout, position
            result = _variant_outputs(model, inputs, max_new_tokens)
            tensors.update({f"{name}/{k}": v.contiguous() for k, v in result.items()})
            ids = result["generated_ids"].tolist()
            variants[name] = {
                "compare_attention_layout": layout,
                "compare_position": position,
                "generated_ids": ids,
                "generated_text": full.processor.tokenizer.decode(ids, skip_special_tokens=True),
            }
            log.info("%s: %r", name, variants[name]["generated_text"])
    finally:
        cfg.compare_attention_layout, cfg.compare_position, cfg.compare_pairing = own
    summary = {
        "model": str(model_path),
        "prompt": prompt,
        "prompt_text": full.processor.tokenizer.decode(inputs["input_ids"][0]),
        "checkpoint_variant": variant_name(own[0], own[1]),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "device": str(full.device),
        "image_grid_thw": inputs["image_grid_thw"].tolist(),
        "max_new_tokens": max_new_tokens,
        "variants": variants,
    }
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "parity.safetensors"))
    (out / "parity.json").write_text(json.dumps(summary, indent=2))
    return summary
