"""``adcopilot full parity`` on the tiny model: every variant dumped, and what it dumps is what the model computes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from adcopilot.cli import main
from adcopilot.full.loading import load_full_model
from adcopilot.full.parity import VARIANTS, variant_name
from adcopilot.full.tiny import build_tiny_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return build_tiny_checkpoint(tmp_path_factory.mktemp("parity") / "tiny", compare_num_heads=4)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("pair")
    rng = np.random.default_rng(0)
    ref = (rng.random((70, 100, 3)) * 80 + 80).astype(np.uint8)
    Image.fromarray(ref).save(root / "ref.png")
    ref[20:40, 30:60] = 250
    Image.fromarray(ref).save(root / "query.png")
    return root / "query.png", root / "ref.png"


def test_parity_dumps_every_variant(ckpt, pair, tmp_path, capsys):
    query, ref = pair
    out = tmp_path / "dump"
    main(["full", "parity", "--model", str(ckpt), "--query", str(query), "--ref", str(ref), "--out", str(out),
          "--max-new-tokens", "3"])
    assert "release-start" in capsys.readouterr().out
    summary = json.loads((out / "parity.json").read_text())
    tensors = load_file(str(out / "parity.safetensors"))
    names = [variant_name(*v) for v in VARIANTS]
    assert sorted(summary["variants"]) == sorted(names) and len(names) == 10
    assert summary["checkpoint_variant"] == "standard-diagonal"  # our save keeps its own
    ids = tensors["input_ids"]
    for name in names:
        tok = tensors[f"{name}/comparison_tokens"]
        assert tok.shape == (2, 8, 64) and tensors[f"{name}/position_ids"].shape == (3, 1, ids.shape[1])
        assert summary["variants"][name]["generated_ids"] == tensors[f"{name}/generated_ids"].tolist()
        assert len(summary["variants"][name]["generated_ids"]) <= 3
    # Layouts change the tokens, position schemes the positions.
    assert not torch.allclose(tensors["release-start/comparison_tokens"], tensors["standard-start/comparison_tokens"])
    assert torch.equal(tensors["release-start/comparison_tokens"], tensors["release-diagonal/comparison_tokens"])
    assert not torch.equal(tensors["release-start/position_ids"], tensors["release-diagonal/position_ids"])
    # What the dump says a variant computes is what the model loaded with those settings computes.
    model = load_full_model(ckpt, compare_attention_layout="release", compare_position="start")
    inputs = {k: tensors[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")}
    with torch.no_grad():
        logits = model(**inputs).logits[0, -1]
        pos, _ = model.model.get_rope_index(inputs["input_ids"], image_grid_thw=inputs["image_grid_thw"])
    torch.testing.assert_close(logits, tensors["release-start/last_logits"])
    assert torch.equal(pos, tensors["release-start/position_ids"])
    assert model.config.compare_attention_layout == "release"


def test_parity_bad_input_is_one_line(ckpt, pair, tmp_path, capsys):
    query, ref = pair
    for args, message in (
        (["--model", str(tmp_path / "none")], "no such checkpoint folder"),
        (["--model", str(ckpt), "--query", str(tmp_path / "missing.png")], "missing.png"),
    ):
        argv = ["full", "parity", "--query", str(query), "--ref", str(ref), "--out", str(tmp_path / "d"), *args]
        with pytest.raises(SystemExit) as exc:
            main(argv)
        err = capsys.readouterr().err
        assert exc.value.code == 2 and err.startswith("error: ") and message in err and "Traceback" not in err
