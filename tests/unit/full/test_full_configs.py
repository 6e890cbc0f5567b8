"""The launch and stage configurations shipped in configs/: they parse and name real modules."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from accelerate.commands.config.config_args import ClusterConfig

from adcopilot.full.tiny import build_tiny
from adcopilot.train.config import FullTrainConfig, flag_overrides, load_config

ROOT = Path(__file__).resolve().parents[3] / "configs"
EXPECTED = {
    "single_gpu.yaml": "NO",
    "ddp.yaml": "MULTI_GPU",
    "fsdp.yaml": "FSDP",
    "deepspeed_zero2.yaml": "DEEPSPEED",
    "deepspeed_zero3.yaml": "DEEPSPEED",
    "cpu_smoke.yaml": "MULTI_GPU",
}


@pytest.mark.parametrize("name,kind", sorted(EXPECTED.items()))
def test_accelerate_configs_load(name, kind):
    cfg = ClusterConfig.from_yaml_file(str(ROOT / "accelerate" / name))
    assert str(cfg.distributed_type).split(".")[-1] == kind
    if kind == "DEEPSPEED":
        assert "NOT TESTED" in (ROOT / "accelerate" / name).read_text()
        assert cfg.deepspeed_config["zero_stage"] == (2 if "zero2" in name else 3)


def test_fsdp_wraps_modules_the_model_has():
    raw = yaml.safe_load((ROOT / "accelerate" / "fsdp.yaml").read_text())
    wrap = raw["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"].split(",")
    model, _ = build_tiny()
    classes = {type(m).__name__ for m in model.modules()}
    assert set(wrap) <= classes
    assert raw["fsdp_config"]["fsdp_use_orig_params"] is True  # frozen and trained parameters mix


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_stage_configs_parse(stage):
    flags = flag_overrides(["--model", "m", "--data", "d"], FullTrainConfig)
    cfg = load_config(ROOT / "full" / f"stage{stage}.yaml", flags, FullTrainConfig)
    assert cfg.stage == stage and cfg.gradient_checkpointing and cfg.dtype == "bfloat16"
