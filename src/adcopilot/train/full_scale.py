"""The full-scale model (Qwen2.5-VL with the Comparison Encoder) as a task of the shared training loop.

``adcopilot train --scale full`` runs it on one GPU, with DDP, FSDP or DeepSpeed, on many nodes
(``accelerate launch -m adcopilot train --scale full ...``; see ``docs/scale.md`` and
``configs/accelerate/``). The loop, config, checkpoints and schedule are :mod:`adcopilot.train`'s;
what is specific to this model lives here: the stage groups of its parameters, LoRA adapters on the
LLM (peft), float32 master copies of the trained weights under mixed precision, its Chat-AD batches
and the export of a merged checkpoint.

The stages are the shared definitions of :mod:`adcopilot.model.stages` (the nano trainer reads the
same ones), mapped onto this model's modules:

==============  ======================================================================
group           parameters
==============  ======================================================================
``tower``       ``model.visual.*`` (the ViT blocks and patch embedding)
``compare``     ``model.visual.compare_visual_encoder.*`` but the queries and projector
``queries``     ``model.visual.compare_visual_encoder.query_embeddings``
``projector``   ``...compare_visual_encoder.compare_projector.*`` and ``model.visual.merger.*``
``lora``        LoRA adapters (peft) on the LLM's attention and MLP projections
``llm``         ``model.language_model.*`` and ``lm_head`` (full fine-tuning)
``heads``       none here (the nano model's dense head); the ``dense``/``score`` losses too
==============  ======================================================================

The loss is next-token cross-entropy on the assistant's words of Chat-AD conversations
(:mod:`adcopilot.full.chat_batches`). Stage 1 reads the ``comparison`` samples (spot-the-difference
pairs), stage 2 ``caption`` and ``comparison``, stage 3 every task (``tasks`` overrides).

The run folder's checkpoint holds only the trained tensors; ``final/`` is the base checkpoint with
them (LoRA merged), a folder ``--model`` loads. Under FSDP or DeepSpeed the optimizer state is
sharded and is not saved: a resumed run restores weights, step and schedule and restarts the
optimizer's moments.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from accelerate.state import AcceleratorState
from peft import LoraConfig, get_peft_model
from torch import nn

from adcopilot.errors import AdcopilotError
from adcopilot.full.chat_batches import ChatBatches, read_chat_jsonl
from adcopilot.full.loading import load_full_model, load_processor, save_full_model
from adcopilot.model.stages import Stage, get_stage
from adcopilot.train.checkpoint import checkpoint_folder, trained_tensors
from adcopilot.train.config import FullTrainConfig
from adcopilot.train.loop import is_sharded

log = logging.getLogger(__name__)

#: Chat-AD tasks each stage reads (None: all).
STAGE_TASKS: dict[int, tuple[str, ...] | None] = {1: ("comparison",), 2: ("caption", "comparison"), 3: None}
#: LoRA targets: the LLM's attention and MLP projections (never the ViT or the Comparison Encoder).
LORA_TARGETS = r".*language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
COMPARE = "model.visual.compare_visual_encoder."


# ---------------------------------------------------------------------------- stage -> parameters
def param_group(name: str) -> str:
    """The stage module group of a parameter (names of the model, or of its peft wrapper)."""
    n = name.removeprefix("base_model.model.")
    if "lora_" in n:
        return "lora"
    if n.startswith(COMPARE):
        rest = n[len(COMPARE):]
        if rest.startswith("query_embeddings"):
            return "queries"
        if rest.startswith("compare_projector."):
            return "projector"
        return "compare"
    if n.startswith("model.visual.merger."):
        return "projector"
    if n.startswith("model.visual."):
        return "tower"
    return "llm"


def lora_config(cfg: FullTrainConfig) -> LoraConfig:
    return LoraConfig(
        r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
        target_modules=LORA_TARGETS, bias="none",
    )


def apply_stage(model: nn.Module, stage: Stage, cfg: FullTrainConfig) -> nn.Module:
    """Freeze what ``stage`` freezes; add LoRA adapters when it trains them. Returns the model to train."""
    if "lora" in stage.trainable:
        model = get_peft_model(model, lora_config(cfg))
    for name, p in model.named_parameters():
        p.requires_grad_(param_group(name) in stage.trainable)
    unused = [g for g in stage.trainable if not any(param_group(n) == g for n, _ in model.named_parameters())]
    if unused:
        log.info("stage %d groups absent from the full model (nano only): %s", stage.number, ", ".join(unused))
    return model


def optimizer_groups(model: nn.Module, stage: Stage, cfg: FullTrainConfig) -> list[dict[str, Any]]:
    """AdamW parameter groups, one per trained module group, at the stage's (scaled) learning rates."""
    scale = (cfg.lr / stage.lr) if cfg.lr else 1.0
    by_group: dict[str, list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            by_group.setdefault(param_group(name), []).append(p)
    if not by_group:
        raise AdcopilotError(f"stage {stage.number}: nothing to train (every parameter is frozen)")
    return [
        {"params": ps, "lr": stage.lr_for(g) * scale, "name": g, "weight_decay": cfg.weight_decay if g != "queries" else 0.0}
        for g, ps in sorted(by_group.items())
    ]


def model_overrides(cfg: FullTrainConfig) -> dict[str, Any]:
    """Model settings a training run sets on the checkpoint it starts from."""
    overrides: dict[str, Any] = {"sequence_compare": True}
    for key in ("compare_position", "compare_attention_layout"):
        if getattr(cfg, key):
            overrides[key] = getattr(cfg, key)
    return overrides


def export_final(cfg: FullTrainConfig, trained: dict[str, torch.Tensor], out: Path, card: str) -> Path:
    """Base checkpoint + trained tensors (LoRA merged) -> a checkpoint folder ``--model`` loads."""
    base = load_full_model(cfg.model, dtype=cfg.dtype, **model_overrides(cfg))
    processor = load_processor(cfg.model, config=base.config)
    if any(param_group(k) == "lora" for k in trained):
        base = get_peft_model(base, lora_config(cfg))
    unknown = set(trained) - set(dict(base.named_parameters()))
    if unknown:
        raise AdcopilotError(f"trained tensors that the model lacks: {sorted(unknown)[:3]}")
    base.load_state_dict({k: v.to(next(base.parameters()).dtype) for k, v in trained.items()}, strict=False)
    if hasattr(base, "merge_and_unload"):
        base = base.merge_and_unload()
    return save_full_model(base, processor, out, extra=card)


# ---------------------------------------------------------------------------- the task
class FullTask:
    """One stage of the full-scale model for :func:`adcopilot.train.loop.train`."""

    def __init__(self, cfg: FullTrainConfig) -> None:
        if not cfg.model or not cfg.data:
            raise AdcopilotError("--model (a checkpoint folder) and --data (Chat-AD JSONL) are required")
        self.cfg = cfg
        stage = get_stage(cfg.stage)
        self.stage = stage.with_full_finetune() if cfg.full_finetune else stage
        tasks = cfg.tasks if cfg.tasks is not None else STAGE_TASKS.get(self.stage.number)
        self.samples = read_chat_jsonl(cfg.data, split=cfg.split, tasks=tasks)
        self.feed: ChatBatches | None = None
        self.device = torch.device("cpu")

    def build(self) -> nn.Module:
        cfg, stage = self.cfg, self.stage
        state = AcceleratorState()  # the loop's Accelerator: processes, device, precision, strategy
        self.device = state.device
        if set(stage.losses) - {"lm"}:
            log.info("losses %s belong to the nano model's heads; the full model trains with 'lm'",
                     sorted(set(stage.losses) - {"lm"}))
        model = load_full_model(cfg.model, dtype=cfg.dtype, attn_implementation=cfg.attn_implementation,
                                **model_overrides(cfg))
        processor = load_processor(cfg.model, min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels, config=model.config)
        model.config.use_cache = False
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model = apply_stage(model, stage, cfg)
        if state.mixed_precision in ("bf16", "fp16") and cfg.dtype in ("bfloat16", "float16") and not is_sharded(state):
            # Frozen weights stay in 16 bits; trained ones get fp32 master copies (autocast runs the
            # matmuls in 16 bits), else small updates vanish in bf16 rounding. DeepSpeed keeps its own
            # fp32 masters; FSDP needs one dtype per wrapped unit (load with --dtype float32 there).
            for p in model.parameters():
                if p.requires_grad:
                    p.data = p.data.float()
        self.feed = ChatBatches(
            self.samples, processor, batch_size=cfg.batch_size, seed=cfg.seed, world_size=state.num_processes,
            rank=state.process_index, max_length=cfg.max_length, max_image_size=cfg.max_image_size,
        )
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        n_all = sum(p.numel() for p in model.parameters())
        log.info("stage %d (%s): %d samples, %d steps, %s of %s parameters trained, %d processes",
                 stage.number, stage.name, len(self.samples), self.total_steps(), f"{n_train:,}", f"{n_all:,}",
                 state.num_processes)
        return model

    def _feed(self) -> ChatBatches:
        if self.feed is None:
            raise AdcopilotError("the full-scale task reads its batches after build()")
        return self.feed

    def total_steps(self) -> int:
        return self.cfg.steps or max(1, math.ceil(self.cfg.epochs * self._feed().epoch_steps() / self.cfg.grad_accum))

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        return optimizer_groups(model, self.stage, self.cfg)

    def batches(self, start: int, process_index: int) -> Iterator[tuple[int, Any]]:
        micro = start
        while True:  # the feed was built for this process (its rank); the loop stops the stream
            yield micro, self._feed().batch(micro)
            micro += 1

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        batch = {k: v.to(self.device) for k, v in batch.items()}
        return model(**batch).loss, {"n_tokens": float(batch["attention_mask"].sum())}

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return {}  # judged afterwards by `adcopilot eval` on the exported model

    def export(self, model: nn.Module, folder: Path, metrics: dict[str, Any]) -> None:
        """Base + the trained tensors of the final checkpoint (gathered from every process's shards)."""
        cfg, stage = self.cfg, self.stage
        llm = ("full fine-tuning" if cfg.full_finetune else f"LoRA r={cfg.lora_rank}" if "lora" in stage.trainable
               else "no LLM training")
        card = (f"Trained by adcopilot train --scale full: stage {stage.number} ({stage.name}), {metrics['steps']} "
                f"steps, {len(self.samples)} samples of {Path(cfg.data).name}, {AcceleratorState().num_processes} "
                f"processes, {llm}, {metrics['train_seconds']} s.")
        export_final(cfg, trained_tensors(checkpoint_folder(cfg.run_folder())), folder, card)
        log.info("final model: %s", folder)
