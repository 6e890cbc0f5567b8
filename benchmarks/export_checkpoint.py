"""Export a training checkpoint (``<run>/checkpoint``) as a loadable nano model folder.

    python benchmarks/export_checkpoint.py runs/stage1-v1 /tmp/nano-step300
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml
from safetensors.torch import load_file

from adcopilot.model.nano import NanoComparisonModel, NanoConfig


def main() -> None:
    run, out = Path(sys.argv[1]), Path(sys.argv[2])
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    model = NanoComparisonModel(NanoConfig(**{"image_size": 256, **cfg.get("model", {})}))
    model.load_state_dict(load_file(str(run / "checkpoint" / "model.safetensors")))
    model.save(out)
    print(out)


if __name__ == "__main__":
    main()
