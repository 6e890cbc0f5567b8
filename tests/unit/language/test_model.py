"""NanoCopilot: sequences, loss on answers only, training moves the loss, persistence."""

from __future__ import annotations

import json

import pytest
import torch

from adcopilot.errors import CheckpointError
from adcopilot.language.model import IGNORE, NanoCopilot

CONV = [{"role": "user", "content": "Is there any defect?"}, {"role": "assistant", "content": "A. Yes."}]


def test_sequence_layout_and_labels(model, visual):
    enc = model.encode_turns(CONV, visual)
    n_image = 2 * (1 + 9) + 4 + 9 + 2  # ref and query (global + 3x3 base), 4 comparison, 9 map, verdict, type
    segs = model.segments(CONV, 1)
    assert ("image", "evidence") in segs  # the detector line follows the comparison tokens
    text_ids = sum(len(model._ids(v)) for k, v in segs if k != "image") + len(model._ids(model.evidence_text(visual)))
    assert enc.embeds.shape == (n_image + text_ids, 32)
    labelled = enc.labels[enc.labels != IGNORE].tolist()
    # Loss on the answer and on the end-of-turn token after it, nowhere else.
    assert labelled == model._ids("A. Yes.") + [model.eot_id]


def test_ablation_sequences_drop_their_tokens(model, visual):
    full = model.encode_turns(CONV, visual).embeds.shape[0]
    model.cfg.use_compare = False
    no_cmp = model.encode_turns(CONV, visual).embeds.shape[0]
    assert no_cmp <= full - 15  # 15 comparison, map, verdict and type tokens and the line introducing them
    assert [v for k, v in model.segments(CONV, 1) if k == "image"] == ["ref0", "query"]
    model.cfg.use_images = False
    text_only = model.encode_turns(CONV, None)
    assert text_only.embeds.shape[0] <= no_cmp - 20
    assert not [v for k, v in model.segments(CONV, 1) if k == "image"]


def test_training_lowers_the_loss_and_reaches_the_projectors(model, visual):
    torch.manual_seed(0)
    batch = [(CONV, visual), ([{"role": "user", "content": "Where?"}, {"role": "assistant", "content": "crack."}],
                              visual)]
    assert all(not p.requires_grad for n, p in model.named_parameters() if n.startswith("llm."))
    model.enable_lora()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    first = float(model(batch)[0].detach())  # forward = the training loss
    for _ in range(12):
        loss, metrics = model.loss(batch)
        opt.zero_grad()
        loss.backward()
        grads = [p.grad for p in model.projectors.parameters()]
        opt.step()
    assert float(loss.detach()) < 0.5 * first
    assert metrics["tokens"] == len(model._ids("A. Yes.")) + len(model._ids("crack.")) + 2
    assert all(g is not None for g in grads) and any(float(g.abs().sum()) > 0 for g in grads)


def test_anchored_tokens_read_like_words(model, visual):
    import dataclasses

    import torch.nn.functional as F

    cells = visual.cells.clone()
    cells[:, 0] = 0.0
    cells[2, 0] = 1.0  # only the top-right cell is hot
    hot = dataclasses.replace(visual, cells=cells, score=0.95)
    with torch.no_grad():
        block = model.projectors(hot)["compare"]  # (4 + 9 + 2, H)
    anchors = model.projectors.region_anchor
    sims = F.cosine_similarity(block[4:13], anchors, dim=-1)
    assert int(sims.argmax()) == 2 and float(sims[2]) > 0.8
    verdict = block[13]
    defect_like = F.cosine_similarity(verdict, model.projectors.verdict_anchor[1], dim=0)
    normal_like = F.cosine_similarity(verdict, model.projectors.verdict_anchor[0], dim=0)
    assert float(defect_like) > float(normal_like)
    model.cfg.evidence_threshold = 0.5
    line = model.evidence_text(hot)
    assert line.startswith("Detector: defective (score 0.95); strongest difference at the top right; it looks like a")
    assert model.evidence_text(dataclasses.replace(hot, score=0.1)).startswith("Detector: normal (score 0.10)")
    loss, metrics = model.loss([(CONV, hot, 1), (CONV, hot, -1)])
    assert "type" in metrics and metrics["type"] > 0


def test_state_dict_holds_only_trained_parts(model):
    keys = set(model.state_dict())
    assert keys and all(k.startswith("projectors.") for k in keys)
    model.enable_lora()
    keys = set(model.state_dict())
    assert any("lora_A" in k for k in keys)
    assert not any(k.startswith("llm.") and "lora_" not in k for k in keys)
    with pytest.raises(CheckpointError):
        model.load_state_dict({"projectors.nope": torch.zeros(1)})


def test_save_load_round_trip(model, visual, llm, tok, tmp_path):
    from .tiny import tiny_llm

    model.enable_lora()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)  # non-zero adapters, so the round trip is tested for real
    model.eval()
    before = model.loss([(CONV, visual)])[0]
    model.save(tmp_path / "language")
    assert {p.name for p in (tmp_path / "language").iterdir()} == {
        "config.json", "projectors.safetensors", "adapter_model.safetensors"}
    fresh = NanoCopilot.load(tmp_path / "language", tiny_llm(len(tok)), tok)
    assert fresh.cfg.lora and fresh.cfg.defect_labels == ["crack", "stain", "hole"]
    after = fresh.loss([(CONV, visual)])[0]
    assert torch.allclose(before, after, atol=1e-5)


def test_broken_checkpoints(model, tmp_path, llm, tok):
    folder = model.save(tmp_path / "language")
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text("{nope")
    with pytest.raises(CheckpointError, match="malformed JSON"):
        NanoCopilot.load(folder, llm, tok)
    (folder / "config.json").write_text(json.dumps({**cfg, "architecture": "other"}))
    with pytest.raises(CheckpointError, match="not an"):
        NanoCopilot.load(folder, llm, tok)
    (folder / "config.json").write_text(json.dumps({**cfg, "lora": True}))
    with pytest.raises(CheckpointError, match="adapter_model.safetensors"):
        NanoCopilot.load(folder, llm, tok)
    (folder / "config.json").write_text(json.dumps({**cfg, "grid": 4}))
    with pytest.raises(CheckpointError, match="does not match"):
        NanoCopilot.load(folder, llm, tok)


def test_checkpoints_from_before_anchored_tokens_still_load(llm, tok, tmp_path):
    from adcopilot.language.model import NanoCopilotConfig

    old = NanoCopilot.build(NanoCopilotConfig(hidden=32, compare_width=24, num_compare=4, anchored=False), llm, tok)
    folder = old.save(tmp_path / "language")
    cfg = json.loads((folder / "config.json").read_text())
    del cfg["anchored"], cfg["type_loss"]
    (folder / "config.json").write_text(json.dumps(cfg))
    assert not NanoCopilot.load(folder, llm, tok).cfg.anchored


def test_merged_adapters_answer_the_same(model, visual, tmp_path):
    """Folding the LoRA adapters into the weights changes no answer; a merged model refuses to be
    saved or trained again."""
    import pytest
    import torch

    from adcopilot.language import answer as answers

    model.enable_lora()
    with torch.no_grad():  # non-zero adapters, so that merging has something to fold
        for n, p in model.llm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(0))
    reply = answers.generate(model, visual, CONV[:1], max_new_tokens=6)
    enc = model.encode_turns(CONV, visual)
    with torch.no_grad():
        logits = model.causal_lm(inputs_embeds=enc.embeds[None]).logits
    model.merge_adapters()
    with torch.no_grad():
        merged = model.causal_lm(inputs_embeds=model.encode_turns(CONV, visual).embeds[None]).logits
    assert torch.allclose(logits, merged, atol=1e-4)
    assert answers.generate(model, visual, CONV[:1], max_new_tokens=6) == reply
    with pytest.raises(ValueError, match="merged"):
        model.save(tmp_path / "m")
    with pytest.raises(ValueError, match="merged"):
        model.enable_lora()
