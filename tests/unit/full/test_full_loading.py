"""Checkpoints: save and reload, the released naming and layout, shape checks, clear errors."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import save_file

from adcopilot.errors import CheckpointError
from adcopilot.full.loading import (
    canonical_key,
    load_full_model,
    load_processor,
    read_config,
    save_full_model,
)
from adcopilot.full.processing_adcopilot import format_chat

PROMPT = [{"role": "user", "content": "Is there any defect?"}]


def _logits(model, processor, images):
    inputs = processor(images=images, text=[format_chat(PROMPT, len(images))], return_tensors="pt")
    with torch.no_grad():
        return model(**inputs).logits, inputs


def _released_key(key: str) -> str:
    """Our key -> the released checkpoint's (transformers 4.x) name."""
    if key.startswith("model.visual."):
        return key[len("model."):]
    if key.startswith("model.language_model."):
        return "model." + key[len("model.language_model."):]
    return key


def write_released_checkpoint(
    model, processor, folder, keep=lambda k: True, transform=lambda k, v: v, model_type: str = "ad_copilot"
) -> None:
    """A checkpoint as the authors released it: 4.x key prefixes, flat text config, two shards + index."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {_released_key(k): v.clone().contiguous() for k, v in model.state_dict().items() if keep(k)}
    state = {k: transform(k, v) for k, v in state.items()}
    names = sorted(state)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for file, keys in shards.items():
        save_file({k: state[k] for k in keys}, str(folder / file))
        weight_map.update({k: file for k in keys})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    cfg = model.config.to_dict()
    cfg.pop("dtype", None)
    text = cfg.pop("text_config")
    vision = cfg.pop("vision_config")
    for k in ("compare_token_size", "compare_num_heads", "compare_mlp_hidden", "compare_depth", "compare_mlp2_sign",
              "compare_out_width", "sequence_compare", "compare_placement", "compare_position", "compare_pairing",
              "compare_attention_layout"):
        cfg.pop(k, None)
        vision.pop(k, None)
    vision.update(model_type="qwen2_5_vl", compare_token_size=model.config.compare_token_size)
    released = {**{k: v for k, v in text.items() if k not in ("model_type", "rope_parameters")}, **cfg,
                "rope_scaling": {"type": "mrope", "mrope_section": text["rope_parameters"]["mrope_section"]},
                "rope_theta": text["rope_parameters"]["rope_theta"],
                "architectures": ["ADCopilotVLForConditionalGeneration"], "model_type": model_type,
                "sequence_compare": True, "vision_config": vision, "torch_dtype": "bfloat16",
                "transformers_version": "4.57.3"}
    (folder / "config.json").write_text(json.dumps(released, indent=1))
    processor.tokenizer.save_pretrained(folder)
    processor.image_processor.save_pretrained(folder)


def test_save_and_reload_gives_identical_outputs(tiny, images, tmp_path):
    model, processor = tiny
    out = save_full_model(model, processor, tmp_path / "ckpt")
    assert (out / "config.json").is_file() and (out / "MODEL_CARD.md").is_file()
    assert not list(out.glob("*.bin")) and list(out.glob("*.safetensors"))
    again, report = load_full_model(out, return_report=True)
    proc2 = load_processor(out)
    assert report.missing == [] and report.unexpected == [] and report.initialised == []
    a, inputs = _logits(model, processor, images)
    b, inputs2 = _logits(again, proc2, images)
    assert torch.equal(inputs["input_ids"], inputs2["input_ids"])
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    n = inputs["input_ids"].shape[1]
    g1 = model.generate(**inputs, max_new_tokens=5, do_sample=False)[0, n:]
    g2 = again.generate(**inputs2, max_new_tokens=5, do_sample=False)[0, n:]
    assert torch.equal(g1, g2)


def test_released_layout_loads_with_every_shape_checked(tiny, images, tmp_path):
    model, processor = tiny
    folder = tmp_path / "released"
    write_released_checkpoint(model, processor, folder)
    cfg = read_config(folder)
    assert cfg.compare_token_size == 8 and cfg.model_type == "ad_copilot"
    # The authors' config names no variant: it computes as the released model.
    assert (cfg.compare_attention_layout, cfg.compare_position, cfg.compare_pairing) == ("release", "start", "batch")
    assert read_config(folder, compare_position="diagonal").compare_attention_layout == "release"
    loaded, report = load_full_model(folder, dtype="float32", return_report=True)
    assert report.layout.startswith("transformers-4") and report.missing == []
    assert any(k.startswith("visual.compare_visual_encoder.") for k in json.loads(
        (folder / "model.safetensors.index.json").read_text())["weight_map"])
    same = load_full_model(folder, dtype="float32", compare_attention_layout="standard", compare_position="diagonal",
                           compare_pairing="sample")
    torch.testing.assert_close(_logits(same, load_processor(folder), images)[0], _logits(model, processor, images)[0])
    assert not torch.allclose(_logits(loaded, load_processor(folder), images)[0], _logits(model, processor, images)[0])
    # The config's dtype is used by default, as the release's bfloat16.
    assert next(load_full_model(folder).parameters()).dtype == torch.bfloat16


def test_our_saves_keep_their_variant(tiny, tmp_path):
    model, processor = tiny
    out = save_full_model(model, processor, tmp_path / "ours")
    cfg = read_config(out)
    assert (cfg.compare_attention_layout, cfg.compare_position) == ("standard", "diagonal")


def test_key_prefix_styles():
    assert canonical_key("visual.blocks.0.attn.qkv.weight") == "model.visual.blocks.0.attn.qkv.weight"
    assert canonical_key("visual.compare_visual_encoder.query_embeddings") == (
        "model.visual.compare_visual_encoder.query_embeddings")
    assert canonical_key("model.layers.3.mlp.up_proj.weight") == "model.language_model.layers.3.mlp.up_proj.weight"
    assert canonical_key("model.embed_tokens.weight") == "model.language_model.embed_tokens.weight"
    assert canonical_key("model.language_model.norm.weight") == "model.language_model.norm.weight"
    assert canonical_key("lm_head.weight") == "lm_head.weight"


def test_base_qwen_checkpoint_gets_a_fresh_seeded_encoder(tiny, images, tmp_path, caplog):
    model, processor = tiny
    folder = tmp_path / "base"
    write_released_checkpoint(model, processor, folder, keep=lambda k: "compare_visual_encoder" not in k,
                              model_type="qwen2_5_vl")
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "sequence_compare": True}))
    with caplog.at_level(logging.WARNING):
        a, report = load_full_model(folder, dtype="float32", return_report=True, seed=3)
    assert report.initialised and "Comparison Encoder" in report.initialised[0]
    assert "no Comparison Encoder weights" in caplog.text
    b = load_full_model(folder, dtype="float32", seed=3)
    for (n1, p1), (_, p2) in zip(a.comparison_encoder.named_parameters(), b.comparison_encoder.named_parameters(),
                                 strict=True):
        assert torch.equal(p1, p2), n1
    assert a.comparison_encoder.query_embeddings.std() < 0.05  # initialised, not left empty
    assert torch.isfinite(_logits(a, processor, images)[0]).all()


def test_ad_copilot_checkpoint_without_its_encoder_is_an_error(tiny, tmp_path):
    model, processor = tiny
    folder = tmp_path / "no-encoder"
    write_released_checkpoint(model, processor, folder, keep=lambda k: "compare_visual_encoder" not in k)
    with pytest.raises(CheckpointError, match="AD-Copilot checkpoint without the Comparison Encoder"):
        load_full_model(folder)


def test_missing_shards_are_named(tiny, tmp_path):
    model, processor = tiny
    folder = tmp_path / "shards"
    write_released_checkpoint(model, processor, folder)
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model-00002-of-00002\.safetensors: shard listed in .* is missing"):
        load_full_model(folder)
    (folder / "model.safetensors.index.json").unlink()  # no index: the shard names tell the count
    with pytest.raises(CheckpointError, match="1 of 2 weight shards missing"):
        load_full_model(folder)


def test_generation_config_is_honoured(tiny, tmp_path):
    model, processor = tiny
    out = save_full_model(model, processor, tmp_path / "gen")
    eos = [processor.tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    (out / "generation_config.json").write_text(json.dumps({"eos_token_id": eos, "repetition_penalty": 1.05}))
    loaded = load_full_model(out)
    assert loaded.generation_config.eos_token_id == eos and loaded.generation_config.repetition_penalty == 1.05
    (out / "generation_config.json").write_text("{oops")
    with pytest.raises(CheckpointError, match=r"generation_config\.json: malformed JSON"):
        load_full_model(out)


def test_wrong_shapes_are_named(tiny, tmp_path):
    model, processor = tiny
    folder = tmp_path / "bad"

    def shrink(k, v):
        return v[:4] if k == "visual.compare_visual_encoder.query_embeddings" else v

    write_released_checkpoint(model, processor, folder, transform=shrink)
    with pytest.raises(CheckpointError, match=r"query_embeddings: checkpoint \[4, 32\] vs model \[8, 32\]"):
        load_full_model(folder)


def test_missing_and_unexpected_keys_are_reported(tiny, tmp_path):
    model, processor = tiny
    folder = tmp_path / "missing"
    write_released_checkpoint(model, processor, folder, keep=lambda k: "layers.1.mlp.up_proj" not in k)
    with pytest.raises(CheckpointError, match=r"1 tensors missing.*layers\.1\.mlp\.up_proj"):
        load_full_model(folder)
    folder = tmp_path / "partial"
    write_released_checkpoint(model, processor, folder, keep=lambda k: "compare_visual_encoder.decoder_mlp" not in k)
    with pytest.raises(CheckpointError, match="Comparison Encoder is incomplete"):
        load_full_model(folder)
    folder = tmp_path / "extra"
    write_released_checkpoint(model, processor, folder)
    save_file({"visual.extra_head.weight": torch.zeros(2)}, str(folder / "extra.safetensors"))
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["weight_map"]["visual.extra_head.weight"] = "extra.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"1 unexpected keys: visual\.extra_head\.weight"):
        load_full_model(folder)
    _, report = load_full_model(folder, strict=False, return_report=True)
    assert report.unexpected == ["visual.extra_head.weight"]


def test_bad_folders_give_one_line_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint folder"):
        load_full_model(tmp_path / "nope")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="malformed JSON"):
        read_config(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(CheckpointError, match="not an AD-Copilot or Qwen2.5-VL"):
        read_config(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "ad_copilot", "compare_position": "x"}))
    with pytest.raises(CheckpointError, match="invalid configuration"):
        read_config(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
    assert read_config(tmp_path).sequence_compare is False  # a plain Qwen2.5-VL stays itself
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="only pickle weights"):
        load_full_model(tmp_path)
    with pytest.raises(CheckpointError, match="unknown model setting"):
        read_config(tmp_path, wings=2)


def test_bad_checkpoints_are_one_line_and_exit_2_from_the_cli(tiny, images, tmp_path, capsys):
    from adcopilot.cli import main

    model, processor = tiny
    images[0].save(tmp_path / "ref.png")
    images[1].save(tmp_path / "query.png")
    cases = {
        "no-encoder": (dict(keep=lambda k: "compare_visual_encoder" not in k), "without the Comparison Encoder"),
        "wrong-shape": (dict(transform=lambda k, v: v[:, :16].contiguous() if k.endswith("encoder_cross_attn1.kv.weight") else v),
                        "encoder_cross_attn1.kv.weight: checkpoint [64, 16] vs model [64, 32]"),
        "no-shard": (dict(), "model-00001-of-00002.safetensors: shard listed"),
    }
    for name, (kwargs, message) in cases.items():
        folder = tmp_path / name
        write_released_checkpoint(model, processor, folder, **kwargs)
        if name == "no-shard":
            (folder / "model-00001-of-00002.safetensors").unlink()
        with pytest.raises(SystemExit) as exc:
            main(["inspect", str(tmp_path / "query.png"), "--ref", str(tmp_path / "ref.png"), "--model", str(folder)])
        err = capsys.readouterr().err
        errors = [line for line in err.split("\n") if line.startswith("error: ")]  # besides the progress bar
        assert exc.value.code == 2 and len(errors) == 1 and message in errors[0] and "Traceback" not in err, name
