"""Train the full-scale model with Hugging Face Accelerate: one GPU, DDP, FSDP, DeepSpeed, many nodes.

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
pairs), stage 2 ``caption`` and ``comparison``, stage 3 every task (``--tasks`` overrides).

Run folder ``--output``: ``train_config.json``, ``metrics.jsonl``, ``checkpoint/`` (the trained
tensors and the optimizer state as safetensors, counters as JSON; written every
``checkpoint_every`` steps, on Ctrl-C and at the end; ``--resume`` continues from it with the same
batches) and ``final/`` (base weights + trained parts, LoRA merged: a checkpoint folder that
``--model`` loads). Under FSDP or DeepSpeed the optimizer state is sharded and is not saved: a
resumed run restores weights, step and schedule and restarts the optimizer's moments.

Usage (see ``docs/scale.md`` and ``configs/accelerate/`` for every configuration)::

    accelerate launch --config_file configs/accelerate/ddp.yaml -m adcopilot.full.train \\
        --model Qwen2.5-VL-7B-Instruct/ --data chat_ad.jsonl --stage 1 --output runs/full-s1 \\
        --dtype bfloat16 --gradient-checkpointing --attn-implementation flash_attention_2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from adcopilot.errors import AdcopilotError
from adcopilot.model.stages import Stage, get_stage
from adcopilot.model.training_state import (
    OPTIMIZER_FILE,
    load_optimizer_state,
    partial_folder,
    save_optimizer_state,
    swap_in,
)
from adcopilot.yaml_config import read_yaml_config

log = logging.getLogger(__name__)

#: Chat-AD tasks each stage reads (None: all).
STAGE_TASKS: dict[int, tuple[str, ...] | None] = {1: ("comparison",), 2: ("caption", "comparison"), 3: None}
#: LoRA targets: the LLM's attention and MLP projections (never the ViT or the Comparison Encoder).
LORA_TARGETS = r".*language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
COMPARE = "model.visual.compare_visual_encoder."


@dataclass
class FullTrainConfig:
    model: str = ""  # checkpoint folder to start from (base Qwen2.5-VL or AD-Copilot)
    data: str = ""  # Chat-AD JSONL
    output: str = "runs/full"
    stage: int = 3
    full_finetune: bool = False  # stage 3: train the LLM itself instead of LoRA adapters
    tasks: list[str] | None = None  # Chat-AD tasks to read (default: the stage's)
    split: str | None = "train"
    steps: int | None = None  # optimizer steps (default: epochs over the data)
    epochs: float = 1.0
    batch_size: int = 1  # per process
    grad_accum: int = 1
    lr: float | None = None  # scales every group's stage learning rate to this base rate
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    grad_clip: float = 1.0
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    max_length: int = 4096
    max_image_size: int = 512
    min_pixels: int = 64 * 28 * 28
    max_pixels: int = 1280 * 28 * 28
    dtype: str = "float32"  # weights as loaded: float32, bfloat16 (GPU), float16
    mixed_precision: str | None = None  # no / bf16 / fp16; None: accelerate's config decides
    gradient_checkpointing: bool = False
    attn_implementation: str | None = None  # eager / sdpa / flash_attention_2
    find_unused_parameters: bool = False  # DDP: set when some batches have no images
    cpu: bool = False  # train on CPU processes (gloo), e.g. smoke tests of a launch configuration
    compare_position: str | None = None  # override the checkpoint's M-RoPE placement
    compare_attention_layout: str | None = None  # override the checkpoint's head merge (release / standard)
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 500
    resume: bool = False
    stop_after: int | None = None  # stop (with a checkpoint) after this many steps of this run; --resume later
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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


def lora_config(cfg: FullTrainConfig):
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
        target_modules=LORA_TARGETS, bias="none",
    )


def apply_stage(model: torch.nn.Module, stage: Stage, cfg: FullTrainConfig) -> torch.nn.Module:
    """Freeze what ``stage`` freezes; add LoRA adapters when it trains them. Returns the model to train."""
    if "lora" in stage.trainable:
        from peft import get_peft_model

        model = get_peft_model(model, lora_config(cfg))
    for name, p in model.named_parameters():
        p.requires_grad_(param_group(name) in stage.trainable)
    unused = [g for g in stage.trainable if not any(param_group(n) == g for n, _ in model.named_parameters())]
    if unused:
        log.info("stage %d groups absent from the full model (nano only): %s", stage.number, ", ".join(unused))
    return model


def optimizer_groups(model: torch.nn.Module, stage: Stage, cfg: FullTrainConfig) -> list[dict[str, Any]]:
    """AdamW parameter groups, one per trained module group, at the stage's (scaled) learning rates."""
    scale = (cfg.lr / stage.lr) if cfg.lr else 1.0
    by_group: dict[str, list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            by_group.setdefault(param_group(name), []).append(p)
    if not by_group:
        raise AdcopilotError(f"stage {stage.number}: nothing to train (every parameter is frozen)")
    return [
        {"params": ps, "lr": stage.lr_for(g) * scale, "name": g, "weight_decay": cfg.weight_decay if g != "queries" else 0.0}
        for g, ps in sorted(by_group.items())
    ]


def schedule(total: int, warmup: int):
    """Linear warm-up then cosine decay to 10% of the peak rate."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        t = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return f


# ---------------------------------------------------------------------------- checkpoints
def _trained_state(accelerator, model, names: list[str]) -> dict[str, torch.Tensor]:
    """The trained tensors, gathered from every strategy's shards (call on every process)."""
    state = accelerator.get_state_dict(model)
    return {k: v.detach().contiguous().cpu() for k, v in state.items() if k in names} if state else {}


def _sharded(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def save_checkpoint(folder: Path, accelerator, model, optimizer, scheduler, names: list[str], meta: dict) -> None:
    """Write trained tensors, optimizer state (unsharded strategies) and counters atomically."""
    trained = _trained_state(accelerator, model, names)
    opt_state = None if _sharded(accelerator) else optimizer.state_dict()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        tmp = partial_folder(folder)
        save_file(trained, str(tmp / "trainable.safetensors"))
        info = {**meta, "scheduler": scheduler.state_dict(), "optimizer": None}
        if opt_state is not None:
            info["optimizer"] = save_optimizer_state(opt_state, tmp)
        (tmp / "state.json").write_text(json.dumps(info, indent=1))
        swap_in(tmp, folder)
    accelerator.wait_for_everyone()


def load_checkpoint(folder: Path, model, optimizer, scheduler, names: list[str]) -> dict:
    """Restore a :func:`save_checkpoint` folder into the (unprepared) model, optimizer and scheduler."""
    if not (folder / "state.json").is_file():
        raise AdcopilotError(f"{folder}: nothing to resume (no checkpoint yet)")
    meta = json.loads((folder / "state.json").read_text())
    trained = load_file(str(folder / "trainable.safetensors"))
    missing = sorted(set(names) - set(trained))
    if missing:
        raise AdcopilotError(f"{folder}: the checkpoint lacks {len(missing)} trained tensors ({missing[0]}, ...); "
                             "was it written by another stage or LoRA setting?")
    model.load_state_dict(trained, strict=False)
    opt = meta.get("optimizer")
    if opt is not None and (folder / OPTIMIZER_FILE).is_file():
        optimizer.load_state_dict(load_optimizer_state(folder, opt))
    else:
        log.warning("%s: no optimizer state (sharded run): the optimizer's moments restart", folder)
    scheduler.load_state_dict(meta["scheduler"])
    return meta


def model_overrides(cfg: FullTrainConfig) -> dict[str, Any]:
    """Model settings a training run sets on the checkpoint it starts from."""
    overrides: dict[str, Any] = {"sequence_compare": True}
    for key in ("compare_position", "compare_attention_layout"):
        if getattr(cfg, key):
            overrides[key] = getattr(cfg, key)
    return overrides


def export_final(cfg: FullTrainConfig, trained: dict[str, torch.Tensor], out: Path, card: str) -> Path:
    """Base checkpoint + trained tensors (LoRA merged) -> a checkpoint folder ``--model`` loads."""
    from adcopilot.full.loading import load_full_model, load_processor, save_full_model

    base = load_full_model(cfg.model, dtype=cfg.dtype, **model_overrides(cfg))
    processor = load_processor(cfg.model, config=base.config)
    if any(param_group(k) == "lora" for k in trained):
        from peft import get_peft_model

        base = get_peft_model(base, lora_config(cfg))
    unknown = set(trained) - set(dict(base.named_parameters()))
    if unknown:
        raise AdcopilotError(f"trained tensors that the model lacks: {sorted(unknown)[:3]}")
    base.load_state_dict({k: v.to(next(base.parameters()).dtype) for k, v in trained.items()}, strict=False)
    if hasattr(base, "merge_and_unload"):
        base = base.merge_and_unload()
    return save_full_model(base, processor, out, extra=card)


# ---------------------------------------------------------------------------- the loop
def train(cfg: FullTrainConfig) -> Path:
    """Run (or resume) one stage; returns the final checkpoint folder (the checkpoint when stopped early)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, set_seed

    from adcopilot.full.chat_batches import ChatBatches, read_chat_jsonl
    from adcopilot.full.loading import load_full_model, load_processor

    if not cfg.model or not cfg.data:
        raise AdcopilotError("--model (a checkpoint folder) and --data (Chat-AD JSONL) are required")
    stage = get_stage(cfg.stage)
    if cfg.full_finetune:
        stage = stage.with_full_finetune()
    accelerator = Accelerator(
        cpu=cfg.cpu,
        gradient_accumulation_steps=cfg.grad_accum,
        mixed_precision=cfg.mixed_precision,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=cfg.find_unused_parameters)],
    )
    set_seed(cfg.seed)
    out = Path(cfg.output)
    ckpt = out / "checkpoint"
    if ckpt.exists() and not cfg.resume:
        raise AdcopilotError(f"{out}: a run already exists there; pass --resume to continue it or choose --output")
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
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
    upcast = accelerator.mixed_precision in ("bf16", "fp16") and cfg.dtype in ("bfloat16", "float16")
    if upcast and not _sharded(accelerator):
        # Frozen weights stay in 16 bits; trained ones get fp32 master copies (autocast runs the
        # matmuls in 16 bits), else small updates vanish in bf16 rounding. DeepSpeed keeps its own
        # fp32 masters; FSDP needs one dtype per wrapped unit (load with --dtype float32 there).
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())

    tasks = cfg.tasks if cfg.tasks is not None else STAGE_TASKS.get(stage.number)
    samples = read_chat_jsonl(cfg.data, split=cfg.split, tasks=tasks)
    feed = ChatBatches(
        samples, processor, batch_size=cfg.batch_size, seed=cfg.seed, world_size=accelerator.num_processes,
        rank=accelerator.process_index, max_length=cfg.max_length, max_image_size=cfg.max_image_size,
    )
    total = cfg.steps or max(1, math.ceil(cfg.epochs * feed.epoch_steps() / cfg.grad_accum))
    optimizer = torch.optim.AdamW(optimizer_groups(model, stage, cfg))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule(total, int(cfg.warmup_ratio * total)))
    start, elapsed_before = 0, 0.0
    if cfg.resume:
        meta = load_checkpoint(ckpt, model, optimizer, scheduler, names)
        start, elapsed_before = int(meta["step"]), float(meta.get("elapsed_s", 0.0))
        log.info("resumed from step %d", start)
    if accelerator.is_main_process:
        log.info("stage %d (%s): %d samples, %d steps, %s of %s parameters trained, %d processes",
                     stage.number, stage.name, len(samples), total, f"{n_train:,}", f"{n_all:,}", accelerator.num_processes)
    model, optimizer = accelerator.prepare(model, optimizer)

    def log_metrics(row: dict[str, Any]) -> None:
        if accelerator.is_main_process:
            with (out / "metrics.jsonl").open("a") as f:
                f.write(json.dumps(row) + "\n")

    def checkpoint(step: int, elapsed: float) -> None:
        save_checkpoint(ckpt, accelerator, model, optimizer, scheduler, names,
                        {"step": step, "elapsed_s": round(elapsed, 1), "stage": stage.number,
                         "world_size": accelerator.num_processes})

    model.train()
    t0 = time.time()
    step, tokens, window_loss, window_n = start, 0, 0.0, 0
    bar = tqdm(total=total, initial=start, desc=f"full stage {stage.number}", disable=not accelerator.is_main_process)
    try:
        for step in range(start, total):
            for j in range(cfg.grad_accum):
                batch = {k: v.to(accelerator.device) for k, v in feed.batch(step * cfg.grad_accum + j).items()}
                with accelerator.accumulate(model):
                    loss = model(**batch).loss
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and cfg.grad_clip:
                        accelerator.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.grad_clip)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                window_loss += float(loss.detach())
                window_n += 1
                tokens += int(batch["attention_mask"].sum())
            scheduler.step()
            done = step + 1
            bar.update(1)
            if done % cfg.log_every == 0 or done == total:
                mean = accelerator.reduce(torch.tensor(window_loss / window_n, device=accelerator.device), "mean")
                elapsed = elapsed_before + time.time() - t0
                row = {"step": done, "loss": round(float(mean), 5), "lr": max(scheduler.get_last_lr()),
                       "elapsed_s": round(elapsed, 1), "tokens_per_s_per_process": round(tokens / max(1e-9, time.time() - t0), 1)}
                log_metrics(row)
                bar.set_postfix(loss=f"{row['loss']:.4f}")
                window_loss, window_n = 0.0, 0
            if done % cfg.checkpoint_every == 0 and done < total:
                checkpoint(done, elapsed_before + time.time() - t0)
            step = done
            if cfg.stop_after and done - start >= cfg.stop_after and done < total:
                bar.close()
                checkpoint(done, elapsed_before + time.time() - t0)
                log.info("stopped after %d steps at step %d; continue with --resume", cfg.stop_after, done)
                return ckpt
    except KeyboardInterrupt:
        bar.close()
        checkpoint(step, elapsed_before + time.time() - t0)
        raise AdcopilotError(f"interrupted at step {step}; checkpoint saved to {ckpt} (continue with --resume)") from None
    bar.close()
    elapsed = elapsed_before + time.time() - t0
    checkpoint(step, elapsed)
    trained = _trained_state(accelerator, model, names)
    final = out / "final"
    if accelerator.is_main_process:
        llm = ("full fine-tuning" if cfg.full_finetune else f"LoRA r={cfg.lora_rank}" if "lora" in stage.trainable
               else "no LLM training")
        card = (f"Trained by adcopilot.full.train: stage {stage.number} ({stage.name}), {step} steps, "
                f"{len(samples)} samples of {Path(cfg.data).name}, {accelerator.num_processes} processes, "
                f"{llm}, {round(elapsed)} s.")
        export_final(cfg, trained, final, card)
        log.info("final model: %s", final)
    accelerator.wait_for_everyone()
    return final


# ---------------------------------------------------------------------------- command line
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m adcopilot.full.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="YAML file of FullTrainConfig keys (command-line flags override it)")
    for f in dataclasses.fields(FullTrainConfig):
        if f.name == "extra":
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            p.add_argument(flag, action="store_true", default=None)
        elif f.name == "tasks":
            p.add_argument(flag, nargs="+", default=None)
        else:
            kind = {"int": int, "float": float}.get(str(f.type).split(" ")[0].replace("|", "").strip(), str)
            p.add_argument(flag, type=kind, default=None)
    return p


def config_from_args(argv: list[str] | None = None) -> FullTrainConfig:
    """FullTrainConfig from ``--config`` YAML and flags; unknown keys are reported with the file's name."""
    args = vars(_parser().parse_args(argv))
    raw = read_yaml_config(args.pop("config", None), FullTrainConfig)
    raw.update({k: v for k, v in args.items() if v is not None})
    try:
        return FullTrainConfig(**raw)
    except TypeError as exc:
        raise AdcopilotError(f"bad training configuration: {exc}") from None


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        final = train(config_from_args(argv))
    except AdcopilotError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    if os.environ.get("RANK", "0") == "0":
        print(final)


if __name__ == "__main__":
    main()
