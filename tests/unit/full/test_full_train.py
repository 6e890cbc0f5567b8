"""Training the full-scale model on the shared loop: stage groups, Chat-AD reading, deterministic batches,
resume, the config file and flags of ``adcopilot train --scale full``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from adcopilot.cli import main
from adcopilot.errors import AdcopilotError
from adcopilot.full.chat_batches import ChatBatches, read_chat_jsonl
from adcopilot.full.tiny import build_tiny, build_tiny_checkpoint
from adcopilot.model.stages import get_stage
from adcopilot.train.config import FullTrainConfig, flag_overrides, load_config
from adcopilot.train.full_scale import FullTask, apply_stage, optimizer_groups, param_group
from adcopilot.train.loop import train

QUESTION = "The first image is a normal sample. The second image is the query sample. Is there any defect?"


def write_chat_data(root: Path, n: int = 6) -> Path:
    """n reference/query pairs (every other one with a bright square) as Chat-AD JSONL lines."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        ref = (rng.random((64, 64, 3)) * 60 + 100).astype(np.uint8)
        query = ref.copy()
        if i % 2 == 0:
            query[20:36, 24:40] = 250
        Image.fromarray(ref).save(root / f"ref{i}.png")
        Image.fromarray(query).save(root / f"q{i}.png")
        answer = "Yes, a bright stain." if i % 2 == 0 else "No."
        lines.append({"id": f"s{i}", "task": "comparison", "image": f"q{i}.png", "references": [f"ref{i}.png"],
                      "turns": [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": answer}],
                      "split": "train"})
    path = root / "chat.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def test_parameter_groups():
    assert param_group("model.visual.compare_visual_encoder.query_embeddings") == "queries"
    assert param_group("model.visual.compare_visual_encoder.compare_projector.weight") == "projector"
    assert param_group("model.visual.compare_visual_encoder.decoder_mlp.up_proj.weight") == "compare"
    assert param_group("model.visual.merger.mlp.0.weight") == "projector"
    assert param_group("model.visual.blocks.0.attn.qkv.weight") == "tower"
    assert param_group("lm_head.weight") == "llm"
    assert param_group("base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.default.weight") == "lora"


@pytest.mark.parametrize("stage,full,trained,frozen", [
    (1, False, {"compare", "queries", "projector"}, {"tower", "llm"}),
    (2, False, {"projector", "queries"}, {"tower", "compare", "llm"}),
    (3, False, {"lora", "projector", "compare"}, {"tower", "llm", "queries"}),
    (3, True, {"llm", "projector", "compare"}, {"tower", "queries"}),
])
def test_stages_freeze_and_train_the_right_groups(stage, full, trained, frozen):
    model, _ = build_tiny()
    st = get_stage(stage).with_full_finetune() if full else get_stage(stage)
    model = apply_stage(model, st, FullTrainConfig(lora_rank=4))
    seen: dict[str, set[bool]] = {}
    for name, p in model.named_parameters():
        seen.setdefault(param_group(name), set()).add(p.requires_grad)
    assert {g for g, flags in seen.items() if flags == {True}} == trained
    assert {g for g, flags in seen.items() if flags == {False}} >= frozen
    groups = {g["name"]: g["lr"] for g in optimizer_groups(model, st, FullTrainConfig())}
    assert set(groups) == trained
    if stage == 3:
        assert groups["compare"] < groups["projector"]  # the encoder follows at a lower rate


def test_reader_skips_and_reports_bad_lines(tmp_path, caplog):
    path = write_chat_data(tmp_path, n=2)
    good = path.read_text().splitlines()
    bad = [
        "{not json",
        json.dumps({"id": "m", "image": "missing.png", "references": [], "turns": [
            {"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}),
        json.dumps({"id": "q", "image": "q0.png", "references": ["ref0.png"], "turns": [{"role": "user", "content": "x"}]}),
        json.dumps({"id": "t", "image": "q0.png", "turns": [{"role": "user", "content": "x"},
                                                            {"role": "assistant", "content": "y"}], "split": "test"}),
    ]
    path.write_text("\n".join([*good, *bad]) + "\n")
    samples = read_chat_jsonl(path)
    assert [s.id for s in samples] == ["s0", "s1"]
    assert samples[0].images == [str(tmp_path / "ref0.png"), str(tmp_path / "q0.png")]
    assert "skipped 3 bad lines" in caplog.text and "line 3: malformed JSON" in caplog.text
    assert [s.id for s in read_chat_jsonl(path, split=None)] == ["s0", "s1", "t"]
    with pytest.raises(AdcopilotError, match="no usable samples"):
        read_chat_jsonl(path, tasks=["caption"])
    with pytest.raises(AdcopilotError, match="no such training data file"):
        read_chat_jsonl(tmp_path / "none.jsonl")


def test_batches_are_deterministic_and_split_across_processes(tmp_path):
    path = write_chat_data(tmp_path, n=6)
    _, processor = build_tiny()
    samples = read_chat_jsonl(path)
    feeds = [ChatBatches(samples, processor, batch_size=1, seed=1, world_size=2, rank=r) for r in (0, 1)]
    again = ChatBatches(samples, processor, batch_size=1, seed=1, world_size=2, rank=0)
    seen = []
    for step in range(3):  # one epoch: 6 samples over 2 processes
        b0, b1 = feeds[0].batch(step), feeds[1].batch(step)
        assert torch.equal(b0["input_ids"], again.batch(step)["input_ids"])
        assert not torch.equal(b0["pixel_values"], b1["pixel_values"])  # the processes see different pairs
        seen += [feeds[0]._index(step * 2), feeds[1]._index(step * 2 + 1)]
        assert set(b0) >= {"input_ids", "labels", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids"}
    assert sorted(seen) == list(range(6))


def test_an_unreadable_image_is_replaced_by_the_next_sample(tmp_path, caplog):
    path = write_chat_data(tmp_path, n=3)
    (tmp_path / "q1.png").write_bytes(b"not a png")
    _, processor = build_tiny()
    feed = ChatBatches(read_chat_jsonl(path), processor, batch_size=3, seed=0)
    batch = feed.batch(0)
    assert batch["input_ids"].shape[0] == 3 and "s1" in feed.skipped
    assert "skipping sample s1" in caplog.text


@pytest.fixture
def fresh_accelerate_state():
    """Accelerate keeps one process-wide state; start (and leave) it clean so --cpu takes effect."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_training_resumes_to_the_same_weights(tmp_path, fresh_accelerate_state):
    data = write_chat_data(tmp_path / "data", n=4)
    texts = [json.loads(x)["turns"][1]["content"] for x in data.read_text().splitlines()]
    ckpt = build_tiny_checkpoint(tmp_path / "tiny", texts=texts)
    common = dict(model=str(ckpt), data=str(data), stage=1, steps=3, batch_size=2, lr=1e-3, log_every=1,
                  checkpoint_every=100, cpu=True)

    def run(resume: bool = False, **kw) -> Path:
        cfg = FullTrainConfig(**common, **kw)
        return train(FullTask(cfg), cfg, resume=resume)

    final = run(output=str(tmp_path / "a"))
    stopped = run(output=str(tmp_path / "b"), stop_after=1)
    assert stopped == tmp_path / "b" / "checkpoint"
    state = json.loads((stopped / "state.json").read_text())
    assert state["step"] == 1 and state["optimizer"] is not None
    with pytest.raises(AdcopilotError, match="pass --resume"):
        run(output=str(tmp_path / "b"))
    run(output=str(tmp_path / "b"), resume=True)
    a = load_file(str(tmp_path / "a" / "checkpoint" / "trainable.safetensors"))
    b = load_file(str(tmp_path / "b" / "checkpoint" / "trainable.safetensors"))
    assert set(a) == set(b) and all(k.startswith("model.visual.") for k in a)  # stage 1: visual side only
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-7)
    rows = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in rows)
    assert all(r["tokens_per_s"] > 0 for r in rows)  # the task's token count, logged as a rate
    # The exported model is a checkpoint folder with the trained encoder.
    from adcopilot.full.loading import load_full_model

    exported = load_full_model(final)
    torch.testing.assert_close(exported.comparison_encoder.query_embeddings,
                               a["model.visual.compare_visual_encoder.query_embeddings"])


def test_config_file_and_flags(tmp_path):
    cfg = tmp_path / "s3.yaml"
    cfg.write_text("stage: 3\nlora_rank: 8\nsteps: 10\n")
    flags = flag_overrides(["--steps", "20", "--gradient-checkpointing", "--tasks", "vqa", "caption", "--lr=1e-4"],
                           FullTrainConfig)
    c = load_config(cfg, flags, FullTrainConfig)
    assert (c.stage, c.lora_rank, c.steps, c.gradient_checkpointing, c.tasks, c.lr) == (
        3, 8, 20, True, ["vqa", "caption"], 1e-4)
    with pytest.raises(AdcopilotError, match="--steps: expected an integer, got 'many'"):
        flag_overrides(["--steps", "many"], FullTrainConfig)
    with pytest.raises(AdcopilotError, match="--lora-rank: needs a value"):
        flag_overrides(["--lora-rank", "--cpu"], FullTrainConfig)
    cfg.write_text("stage: 3\nlr: fast\n")
    with pytest.raises(AdcopilotError, match="'lr' must be a finite number"):
        load_config(cfg, None, FullTrainConfig)
    with pytest.raises(AdcopilotError, match="are required"):
        FullTask(FullTrainConfig())


@pytest.mark.parametrize("args,message", [
    (["--wings", "2"], "error: --wings: unknown option"),
    (["--config", "{cfg}"], "unknown config key(s) wings"),
    (["--run-dir", "x"], "the full scale reads --output"),
    (["--scale", "huge"], "--scale huge: unknown scale"),
])
def test_bad_full_scale_commands_say_so_in_one_line(tmp_path, capsys, args, message):
    cfg = tmp_path / "s3.yaml"
    cfg.write_text("stage: 3\nwings: 2\n")
    with pytest.raises(SystemExit) as exc:
        main(["train", "--scale", "full", *[a.format(cfg=cfg) for a in args]])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and message in err and len(err.splitlines()) == 1, err
