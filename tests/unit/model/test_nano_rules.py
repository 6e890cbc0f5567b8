"""The nano model's smaller rules, each against hand-computed values: the pooled image score, the
global-judgement term, the distance's floor, k-shot reference inputs, and what a checkpoint's folder
may say about its name, threshold, product memory and memory weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from adcopilot.errors import CheckpointError
from adcopilot.model.memory import build_memory
from adcopilot.model.nano import (
    NanoComparisonModel,
    NanoConfig,
    NanoDetector,
    ReferenceInputs,
    load_nano_detector,
)
from adcopilot.model.score import pooled_score
from adcopilot.model.vision import load_vision_tower

TINY = NanoConfig(image_size=64, width=32, num_heads=4, mlp_hidden=48, num_queries=4, out_width=24, head_hidden=8)


@pytest.fixture(scope="module")
def tower():
    torch.manual_seed(0)
    return load_vision_tower(pretrained=False)


def test_pooled_score_is_the_mean_of_the_top_fraction():
    prob = (np.arange(100, dtype=np.float32) / 100).reshape(10, 10)[::-1]  # 0.00 .. 0.99, any order
    assert pooled_score(prob, 0.05) == pytest.approx(np.mean([0.95, 0.96, 0.97, 0.98, 0.99]))
    assert pooled_score(prob, 0.02) == pytest.approx(0.985)
    assert pooled_score(prob, 0.001) == pytest.approx(0.99)  # at least one pixel: the maximum
    assert pooled_score(prob, 1.0) == pytest.approx(0.495)


def test_the_global_term_adds_the_queries_judgement_to_the_image_logit(tower):
    torch.manual_seed(3)
    model = NanoComparisonModel(TINY).eval()
    qf = model.features(tower, torch.rand(1, 3, 64, 64))
    rf = model.features(tower, torch.rand(1, 3, 64, 64))[:, None]
    with torch.no_grad():
        plain = model(qf, rf)
        model.cfg = NanoConfig(**{**TINY.__dict__, "global_score": True})
        model.image_head.bias.fill_(1.5)  # a zero weight: the term is the bias alone
        judged = model.compare_with(qf, model.reference_inputs(rf), with_tokens=False)
    assert judged["image_logit"] - plain["image_logit"] == pytest.approx(1.5, abs=1e-5)
    assert "tokens" in judged  # the decoder runs for the term even when no tokens are asked for


def test_an_identical_reference_gives_a_distance_of_exactly_zero_never_below(tower):
    model = NanoComparisonModel(TINY).eval()
    qf = model.features(tower, torch.rand(1, 3, 64, 64))
    with torch.no_grad():
        distance = model(qf, qf[:, None])["distance"]
    assert (distance >= 0).all() and distance.max() < 1e-5


def test_reference_inputs_of_several_references_line_up_along_the_patches(tower):
    model = NanoComparisonModel(TINY).eval()
    with torch.no_grad():
        parts = [model.reference_inputs(model.features(tower, torch.rand(1, 3, 64, 64))[:, None]) for _ in range(2)]
    assert ReferenceInputs.concat(parts[:1]) is parts[0]
    both = ReferenceInputs.concat(parts)
    assert both.tokens.shape == (1, 128, 152) and both.prev.shape == (1, 128, 32) and both.pos.shape == (128, 2)
    assert both.queries.shape == (1, 4, 128, 8)
    assert torch.equal(both.tokens[:, 64:], parts[1].tokens) and torch.equal(both.queries[:, :, 64:], parts[1].queries)
    assert torch.equal(both.prev[:, :64], parts[0].prev) and torch.equal(both.pos[64:], parts[1].pos)


def test_the_memory_weight_of_no_variant_is_the_default(tower):
    det = NanoDetector(NanoComparisonModel(TINY), tower, memory_weight=0.25, memory_weights={"dark": 0.75})
    assert (det.weight_for(None), det.weight_for("dark"), det.weight_for("bright")) == (0.25, 0.75, 0.25)


def _config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))


def test_a_checkpoints_name_threshold_and_memory_weights(tmp_path):
    folder = tmp_path / "my-nano"
    NanoComparisonModel(TINY).save(folder)
    config = json.loads((folder / "config.json").read_text())
    del config["name"], config["threshold"]
    (folder / "config.json").write_text(json.dumps(config))
    det, meta = load_nano_detector(folder)
    assert meta == {"name": "my-nano", "threshold": 0.5} and det.name == "my-nano"  # the folder's name
    assert det.memory_weight == 0.5 and det.memory_weights == {}
    _config(folder, name="line-3", threshold=0.3, memory_weight=1, memory_weights={"dark": 0})
    det, meta = load_nano_detector(folder)
    assert meta == {"name": "line-3", "threshold": 0.3} and (det.memory_weight, det.memory_weights) == (1.0, {"dark": 0.0})
    for bad in (True, 1.5, -0.1):
        _config(folder, memory_weight=bad)
        with pytest.raises(CheckpointError, match=r"config.json: memory_weight must be a number in \[0, 1\]"):
            load_nano_detector(folder)
    _config(folder, memory_weight=0.5, memory_weights={"dark": False})
    with pytest.raises(CheckpointError, match="memory_weights must map variants to numbers in"):
        load_nano_detector(folder)


def test_a_checkpoints_product_memory_comes_with_its_detector(tmp_path):
    folder = NanoComparisonModel(TINY).save(tmp_path / "adapted")
    assert load_nano_detector(folder)[0].memory is None

    def colour_blocks(image: np.ndarray) -> torch.Tensor:  # (64, 64, 3) -> (1, 3, 8, 8) unit-norm block colours
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
        return torch.nn.functional.normalize(torch.nn.functional.avg_pool2d(x, 8) + 0.1, dim=1)

    rng = np.random.default_rng(0)
    images = [rng.random((64, 64, 3), dtype=np.float32) for _ in range(4)]
    memory = build_memory(images, ["mono"] * 4, colour_blocks, patches=20, seed=0)
    memory.save(folder)
    det, _ = load_nano_detector(folder)
    assert det.memory is not None and det.memory.describe() == memory.describe()
    assert det.describe()["memory"]["variants"] == memory.describe()


def test_the_image_logit_pools_the_configured_top_fraction_of_pixel_logits(tower):
    torch.manual_seed(4)
    model = NanoComparisonModel(NanoConfig(**{**TINY.__dict__, "topk_frac": 0.25})).eval()
    qf = model.features(tower, torch.rand(1, 3, 64, 64))
    with torch.no_grad():
        out = model(qf, model.features(tower, torch.rand(1, 3, 64, 64))[:, None])
    top = out["pixel_logits"].flatten().sort(descending=True).values[:16]  # a quarter of the 8 x 8 patches
    assert out["image_logit"].item() == pytest.approx(top.mean().item(), abs=1e-6)
