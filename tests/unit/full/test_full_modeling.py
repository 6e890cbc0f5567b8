"""The full-scale model on a tiny random configuration: forward, backward, generation, placement."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from adcopilot.full.configuration_adcopilot import ADCopilotConfig
from adcopilot.full.modeling_adcopilot import ADCopilotVLForConditionalGeneration, comparison_positions
from adcopilot.full.processing_adcopilot import format_chat
from adcopilot.full.tiny import tiny_config
from adcopilot.model.compare import ComparisonConfig, ComparisonEncoder

PROMPT = [{"role": "user", "content": "Is there any defect?"}]


def _inputs(processor, images, n_samples: int = 1):
    text = format_chat(PROMPT, len(images))
    return processor(images=images * n_samples, text=[text] * n_samples, return_tensors="pt")


def test_default_config_is_the_released_encoder():
    cfg = ADCopilotConfig()
    cc = cfg.comparison_config()
    assert dataclasses.astuple(cc)[:5] == (1280, 16, 3420, 100, 3584)
    assert cfg.vision_config.compare_token_size == 100 and cfg.model_type == "ad_copilot"
    with torch.device("meta"):
        enc = ComparisonEncoder(cc)
    assert sum(p.numel() for p in enc.parameters()) == 63_801_344
    assert len(list(enc.state_dict())) == 36


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="compare_position"):
        ADCopilotConfig(compare_position="corner")
    with pytest.raises(ValueError, match="compare_placement"):
        ADCopilotConfig(compare_placement="some")


def test_forward_shapes_and_comparison_tokens_in_sequence(tiny, images):
    model, processor = tiny
    inputs = _inputs(processor, images)
    n_img = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert n_img == 2 * (4 + 8)  # two images, 4 base + 8 comparison tokens each
    with torch.no_grad():
        out = model(**inputs)
    assert out.logits.shape == (1, inputs["input_ids"].shape[1], model.config.text_config.vocab_size)
    assert torch.isfinite(out.logits).all()


def test_comparison_tokens_see_the_reference(tiny, images):
    """Changing only the reference changes the query image's comparison tokens (and the answer logits)."""
    model, processor = tiny
    a = _inputs(processor, images)
    other_ref = images[0].rotate(90)
    b = _inputs(processor, [other_ref, images[1]])
    with torch.no_grad():
        la, lb = model(**a).logits[0, -1], model(**b).logits[0, -1]
        ea = model.model.get_image_features(a["pixel_values"], a["image_grid_thw"], return_dict=True)
        eb = model.model.get_image_features(b["pixel_values"], b["image_grid_thw"], return_dict=True)
        ta = model.model.add_comparison_tokens(ea, a["image_grid_thw"], a["input_ids"])
        tb = model.model.add_comparison_tokens(eb, b["image_grid_thw"], b["input_ids"])
    assert torch.equal(ta[1][:4], tb[1][:4])  # the query's own base tokens are unchanged
    assert not torch.allclose(ta[1][4:], tb[1][4:])  # its comparison tokens differ
    assert not torch.allclose(la, lb)


def test_backward_reaches_encoder_projectors_and_llm(tiny, images):
    model, processor = tiny
    inputs = _inputs(processor, images)
    labels = inputs["input_ids"].clone()
    labels[labels == model.config.image_token_id] = -100
    model.train()
    try:
        loss = model(**inputs, labels=labels).loss
        loss.backward()
    finally:
        model.eval()
    grads = {n: p.grad for n, p in model.named_parameters()}
    for name in (
        "model.visual.compare_visual_encoder.query_embeddings",
        "model.visual.compare_visual_encoder.encoder_cross_attn1.q_proj.weight",
        "model.visual.compare_visual_encoder.compare_projector.weight",
        "model.visual.merger.mlp.0.weight",
        "model.language_model.layers.0.self_attn.q_proj.weight",
    ):
        assert grads[name] is not None and grads[name].abs().sum() > 0, name
    model.zero_grad(set_to_none=True)


def test_greedy_generation_is_deterministic_and_cache_consistent(tiny, images):
    model, processor = tiny
    inputs = _inputs(processor, images)
    n = inputs["input_ids"].shape[1]
    g1 = model.generate(**inputs, max_new_tokens=6, do_sample=False)[0, n:]
    g2 = model.generate(**inputs, max_new_tokens=6, do_sample=False)[0, n:]
    g3 = model.generate(**inputs, max_new_tokens=6, do_sample=False, use_cache=False)[0, n:]
    assert len(g1) == 6
    assert torch.equal(g1, g2) and torch.equal(g1, g3)
    # The first generated token is the argmax of a plain forward pass.
    with torch.no_grad():
        assert int(model(**inputs).logits[0, -1].argmax()) == int(g1[0])


def test_pre_merge_features_are_in_patch_order(tiny, images):
    """Undoing the window permutation: merging our per-image features gives the tower's base tokens."""
    model, processor = tiny
    inputs = _inputs(processor, images)
    visual = model.model.visual
    with torch.no_grad():
        out = visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"])
        feats = visual.pre_merge_features(out.last_hidden_state, inputs["image_grid_thw"])
        base = torch.split(out.pooler_output, [4, 4])
        for f, b in zip(feats, base, strict=True):
            assert f.shape == (16, 32)
            torch.testing.assert_close(visual.merger(f), b)


def test_positions_of_comparison_tokens():
    pos, nxt = comparison_positions(start=10, extent=3, num=5, mode="diagonal")
    assert pos.tolist() == [[10] * 5, [10, 11, 12, 13, 14], [10, 11, 12, 13, 14]] and nxt == 15
    pos, nxt = comparison_positions(start=10, extent=7, num=5, mode="diagonal")
    assert nxt == 17  # the image's grid is wider than the diagonal
    pos, nxt = comparison_positions(start=10, extent=3, num=5, mode="shared")
    assert pos.tolist() == [[13] * 5] * 3 and nxt == 14
    pos, nxt = comparison_positions(start=10, extent=3, num=5, mode="start")
    assert pos.tolist() == [[10] * 5] * 3 and nxt == 11  # the text after them overlaps the grid
    pos, nxt = comparison_positions(start=10, extent=3, num=5, mode="last", grid=(2, 3))
    assert pos.tolist() == [[10] * 5, [11] * 5, [12] * 5] and nxt == 13
    pos, nxt = comparison_positions(start=10, extent=3, num=5, mode="sequential")
    assert pos.tolist() == [[13, 14, 15, 16, 17]] * 3 and nxt == 18


@pytest.mark.parametrize("mode", ["diagonal", "start", "last", "shared", "sequential"])
def test_rope_index_places_tokens_after_each_image(tiny, images, mode):
    model, processor = tiny
    model.config.compare_position = mode
    try:
        inputs = _inputs(processor, images)
        ids = inputs["input_ids"][0]
        pos, delta = model.model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"],
                                                inputs["image_grid_thw"])
    finally:
        model.config.compare_position = "diagonal"
    img = (ids == model.config.image_token_id).nonzero().flatten().tolist()
    first = img[:12]  # image 0: 4 base tokens, then 8 comparison tokens
    start = int(pos[0, 0, first[0]])
    base = pos[:, 0, first[:4]]
    assert base[0].tolist() == [start] * 4 and base[1].tolist() == [start, start, start + 1, start + 1]
    comp = pos[:, 0, first[4:]]
    expected, nxt = comparison_positions(start, 2, 8, mode, (2, 2))
    assert comp.tolist() == expected.tolist()
    # The <|vision_end|> after the image takes the next free position.
    assert int(pos[0, 0, first[-1] + 1]) == nxt
    assert int(delta[0]) == int(pos.max()) + 1 - ids.shape[0]


def test_query_placement_and_pairing_within_samples(images):
    from adcopilot.full.tiny import tiny_processor, tiny_tokenizer

    tok = tiny_tokenizer()
    torch.manual_seed(0)
    model = ADCopilotVLForConditionalGeneration(tiny_config(tok, compare_placement="query")).eval()
    processor = tiny_processor(tok, 8, "query")
    inputs = _inputs(processor, images, n_samples=2)
    runs = [(row == model.config.image_token_id).sum().item() for row in inputs["input_ids"]]
    assert runs == [4 + 4 + 8, 4 + 4 + 8]  # only each sample's query has comparison tokens
    has, prev = model.model.comparison_layout(inputs["input_ids"], inputs["image_grid_thw"])
    assert has == [False, True, False, True]
    assert prev == [0, 0, 2, 2]  # each sample's first image is paired with itself
    model.config.compare_pairing = "batch"
    assert model.model.comparison_layout(inputs["input_ids"], inputs["image_grid_thw"])[1] == [0, 0, 1, 2]
    with torch.no_grad():
        assert torch.isfinite(model(**inputs).logits).all()


def test_wrong_placeholder_count_is_reported(tiny, images):
    model, processor = tiny
    inputs = _inputs(processor, images)
    ids = inputs["input_ids"].clone()
    first = int((ids[0] == model.config.image_token_id).nonzero()[0])
    ids[0, first] = processor.tokenizer.convert_tokens_to_ids("<|vision_end|>")  # one placeholder fewer
    with pytest.raises(ValueError, match="placeholder tokens"):
        model.model.comparison_layout(ids, inputs["image_grid_thw"])


def test_without_comparison_it_is_plain_qwen(tiny, images):
    """sequence_compare=False: no comparison tokens; the model then equals the Qwen2.5-VL it wraps."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from adcopilot.full.tiny import tiny_processor

    model, processor = tiny
    plain_proc = tiny_processor(processor.tokenizer, compare_token_size=0)
    inputs = _inputs(plain_proc, images)
    model.config.sequence_compare = False
    try:
        with torch.no_grad():
            ours = model(**inputs).logits
    finally:
        model.config.sequence_compare = True
    qwen = Qwen2_5_VLForConditionalGeneration(model.config)
    state = {k: v for k, v in model.state_dict().items() if "compare_visual_encoder" not in k}
    qwen.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(qwen.eval()(**inputs).logits, ours)


def test_comparison_encoder_is_the_shared_class(tiny):
    model, _ = tiny
    enc = model.comparison_encoder
    assert type(enc) is ComparisonEncoder
    assert enc.cfg == ComparisonConfig(width=32, num_heads=2, mlp_hidden=64, num_queries=8, out_width=64)


def test_encoder_rmsnorm_is_qwens_in_bf16():
    """Float32 statistics, cast back, then the weight: bit for bit transformers' Qwen2 RMSNorm."""
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm

    from adcopilot.model.compare import QwenRMSNorm

    torch.manual_seed(0)
    x = (torch.randn(4, 7, 64) * 3).to(torch.bfloat16)
    weight = torch.rand(64) * 2
    ours, qwen, plain = QwenRMSNorm(64, eps=1e-6), Qwen2RMSNorm(64, eps=1e-6), torch.nn.RMSNorm(64, eps=1e-6)
    for norm in (ours, qwen, plain):
        norm.to(torch.bfloat16).weight.data.copy_(weight)
    assert torch.equal(ours(x), qwen(x))
    assert not torch.equal(plain(x), qwen(x))  # the order of cast and weight matters in bf16
