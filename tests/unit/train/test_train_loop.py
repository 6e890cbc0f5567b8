"""The training loop: loss falls on a tiny model, checkpoints resume to the same state, Ctrl-C saves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from adcopilot.cli import main
from adcopilot.data.pairs import PairSampler
from adcopilot.errors import AdcopilotError
from adcopilot.model.nano import NanoComparisonModel
from adcopilot.model.vision import load_vision_tower
from adcopilot.train.adapt import AdaptSampler
from adcopilot.train.config import TrainConfig, flag_overrides, load_config
from adcopilot.train.loop import train
from adcopilot.train.stage1 import Stage1Task

TINY_MODEL = {"image_size": 64, "width": 32, "num_heads": 4, "mlp_hidden": 48, "num_queries": 4,
              "out_width": 24, "head_hidden": 8}


@pytest.fixture(scope="module")
def tower():
    torch.manual_seed(0)
    return load_vision_tower(pretrained=False)


def _cfg(tmp_path, **kw) -> TrainConfig:
    base = dict(stage=1, seed=3, steps=6, batch_size=2, lr=1e-3, warmup_steps=1, checkpoint_every=3, log_every=1,
                eval_every=0, eval_pairs=4, run_dir=str(tmp_path / "run"), model=TINY_MODEL, data={"train_size": 64})
    base.update(kw)
    return TrainConfig(**base)


def test_train_exports_and_resume_matches_uninterrupted(tmp_path, tower):
    sampler = PairSampler(64, seed=0, p_normal=0.3)
    cfg_a = _cfg(tmp_path / "a")
    final_a = train(Stage1Task(cfg_a, sampler=sampler, tower=tower), cfg_a)
    assert (final_a / "model.safetensors").exists() and (final_a / "config.json").exists()
    rows = [json.loads(x) for x in (tmp_path / "a" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in r for r in rows) and rows[-1].get("final")

    # Same run in two parts: 3 steps, then resume to 6 -> identical weights.
    cfg_b = _cfg(tmp_path / "b", steps=3)
    train(Stage1Task(cfg_b, sampler=sampler, tower=tower), cfg_b)
    cfg_b2 = _cfg(tmp_path / "b", steps=6)
    final_b = train(Stage1Task(cfg_b2, sampler=sampler, tower=tower), cfg_b2, resume=True)
    a = NanoComparisonModel.load(final_a).state_dict()
    b = NanoComparisonModel.load(final_b).state_dict()
    # The LR schedule depends on the total step count, so parts 1 and 2 differ slightly in schedule;
    # the stream of batches and the optimizer state are restored exactly.
    diffs = [float((a[k] - b[k]).abs().max()) for k in a]
    assert max(diffs) < 5e-2


def test_loss_falls(tmp_path, tower):
    sampler = PairSampler(64, seed=0, p_normal=0.3, p_general=0.0)
    cfg = _cfg(tmp_path, steps=40, batch_size=4, checkpoint_every=40, lr=3e-3)
    train(Stage1Task(cfg, sampler=sampler, tower=tower), cfg)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    first, last = rows[0]["loss"], rows[-1]["loss"]
    assert last < first


def test_existing_run_needs_resume(tmp_path, tower):
    sampler = PairSampler(64, seed=0)
    cfg = _cfg(tmp_path, steps=2)
    train(Stage1Task(cfg, sampler=sampler, tower=tower), cfg)
    with pytest.raises(AdcopilotError, match="--resume"):
        train(Stage1Task(cfg, sampler=sampler, tower=tower), cfg)


def test_adapt_sampler_with_image_labels(tmp_path, tower, rng):
    normals = [(rng.random((64, 64, 3)) * 255).astype(np.uint8) for _ in range(3)]
    defects = [(rng.random((64, 64, 3)) * 255).astype(np.uint8)]
    sampler = AdaptSampler(normals, defects, p_defect_image=0.5)
    kinds = {sampler.sample(np.random.default_rng(i)).kind for i in range(30)}
    assert "labelled" in kinds and "normal" in kinds
    cfg = _cfg(tmp_path, steps=3)
    train(Stage1Task(cfg, sampler=sampler, tower=tower), cfg)  # unknown masks: image loss only, no crash


def test_adapt_sampler_pairs_within_a_variant(rng):
    """References and query come from one variant; k-shot references are other good images of it."""
    # Variant "a" images are dark, variant "b" bright: a pair's images tell their variant.
    dark = [np.full((32, 32, 3), 20 + i, np.uint8) for i in range(3)]
    bright = [np.full((32, 32, 3), 230 - i, np.uint8) for i in range(3)]
    defect_b = [np.full((32, 32, 3), 235, np.uint8)]
    sampler = AdaptSampler(dark + bright, defect_b, p_defect_image=0.3, groups=["a"] * 3 + ["b"] * 3,
                           defect_groups=["b"])
    seen_k = set()
    for i in range(60):
        p = sampler.sample(np.random.default_rng(i), n_refs=4)
        refs = [p.reference, *p.more_references]
        seen_k.add(len(refs))
        query_bright = p.query.mean() > 0.5
        assert all((r.mean() > 0.5) == query_bright for r in refs), p.kind
        if p.kind == "labelled":
            assert query_bright
    assert seen_k == {4}
    # Without groups (or with a variant of one image) every image may pair with every other.
    solo = AdaptSampler(dark + bright[:1], [], groups=["a"] * 3 + ["b"])
    assert any(solo.sample(np.random.default_rng(i)).query.mean() > 0.5 for i in range(60))
    with pytest.raises(ValueError, match="one group per good image"):
        AdaptSampler(dark, [], groups=["a"])


def test_stage1_batches_take_the_samplers_references(tmp_path, tower):
    normals = [np.full((32, 32, 3), 40 * i, np.uint8) for i in range(4)]
    cfg = _cfg(tmp_path, steps=1, batch_size=3)
    task = Stage1Task(cfg, sampler=AdaptSampler(normals, []), tower=tower)
    batch = task._pairs(np.random.default_rng(0), 3, 3)
    refs = batch["refs"]  # (B, 3, 3, S, S)
    assert refs.shape[:2] == (3, 3)
    # Three distinct good images (different grey levels), not jittered copies of one.
    for b in range(3):
        levels = {round(float(refs[b, j].mean()), 1) for j in range(3)}
        assert len(levels) == 3


def test_batches_do_not_depend_on_the_number_of_data_workers(tmp_path, tower):
    sampler = PairSampler(48, seed=0, p_normal=0.3)
    streams = []
    for workers in (0, 2):
        cfg = _cfg(tmp_path, steps=5, batch_size=2, num_workers=workers, data={"train_size": 48, "multi_ref_prob": 0.5})
        streams.append(list(Stage1Task(cfg, sampler=sampler, tower=tower).batches(2, 0)))
    serial, parallel = streams
    assert [s for s, _ in serial] == [s for s, _ in parallel] == [2, 3, 4]
    for (_, a), (_, b) in zip(serial, parallel, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key
    # Different steps are different batches.
    assert not torch.equal(serial[0][1]["query"], serial[1][1]["query"])


def test_config_errors(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("stage: 1\nstepz: 3\n")
    with pytest.raises(AdcopilotError, match="unknown config key.*stepz"):
        load_config(p)
    p.write_text("steps: [1\n")
    with pytest.raises(AdcopilotError, match="malformed YAML"):
        load_config(p)
    p.write_text("steps: -1\n")
    with pytest.raises(AdcopilotError, match="positive integer"):
        load_config(p)
    p.write_text("num_workers: -2\n")
    with pytest.raises(AdcopilotError, match="'num_workers' must be 0 or a positive integer"):
        load_config(p)
    assert load_config(None, {"num_workers": 3}).num_workers == 3


@pytest.mark.parametrize("args,message", [
    (["--stage", "1", "--wings", "2"], "error: --wings: unknown option"),
    (["--stage", "1", "--lr", "fast"], "error: --lr: expected a number, got 'fast'"),
    (["--stage", "1", "--num-workers", "-1"], "'num_workers' must be 0 or a positive integer"),
    (["--lr", "1e-3"], "error: --stage: required for --scale nano"),
    (["--stage", "1", "--lr", "-1"], "error: --lr: 'lr' must be a positive number, got -1.0"),  # the flag named
    (["--stage", "1", "--grad-clip", "-2"], "'grad_clip' must be 0 or a positive number"),
])
def test_bad_train_commands_say_so_in_one_line(capsys, args, message):
    with pytest.raises(SystemExit) as exc:
        main(["train", *args])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and message in err and len(err.splitlines()) == 1, err


def test_config_keys_are_flags():
    flags = flag_overrides(["--lr", "0.01", "--stop-after", "5", "--cpu", "--run-dir", "x"], TrainConfig)
    assert flags == {"lr": 0.01, "stop_after": 5, "cpu": True, "run_dir": "x"}
    cfg = load_config(None, flags)
    assert (cfg.lr, cfg.stop_after, cfg.cpu, cfg.run_folder()) == (0.01, 5, True, Path("x"))


def test_a_run_folder_where_a_file_is_says_so_in_one_line(capsys, tmp_path):
    a_file = tmp_path / "runs"
    a_file.write_text("not a folder")
    with pytest.raises(SystemExit) as exc:
        main(["train", "--stage", "1", "--steps", "1", "--run-dir", str(a_file)])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and err == f"error: {a_file}: a file is there, not a folder", err
