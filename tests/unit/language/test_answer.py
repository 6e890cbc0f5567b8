"""Answering: cached option scores equal full-sequence scores, modes agree once trained, boxes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from adcopilot.errors import AdcopilotError
from adcopilot.language import answer as answers
from adcopilot.language.model import IGNORE
from adcopilot.language.prompt import mcq_answer, mcq_question
from adcopilot.language.visual import VisualInputs

OPTIONS = {"A": "Yes.", "B": "No."}
QUESTION = "Is there any defect in the object?"


def full_sequence_score(model, turns, visual, text):
    """Mean log-probability of ``text`` + end-of-turn, from one pass over the whole conversation."""
    enc = model.encode_turns([*turns, {"role": "assistant", "content": text}], visual)
    hid = model.hidden_states(enc.embeds[None]).last_hidden_state[0]
    logp = F.log_softmax(model.logits(hid[:-1]).float(), dim=-1)
    target = enc.labels[1:]
    sel = target != IGNORE
    return float(logp[sel].gather(1, target[sel][:, None]).mean())


def train(model, batch, steps=40, lr=1e-2):
    model.enable_lora()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        loss, _ = model.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


@torch.no_grad()
def test_cached_scores_equal_full_sequence_scores(model, visual):
    turns = [{"role": "user", "content": mcq_question(QUESTION, {"A": "Yes.", "B": "No.", "C": "A crack at the top."})}]
    texts = ["Yes.", "No.", "A crack at the top."]
    cached = answers.score_continuations(model, turns, visual, texts)
    for text, got in zip(texts, cached, strict=True):
        assert got == pytest.approx(full_sequence_score(model, turns, visual, text), abs=1e-4)


def test_trained_answer_is_chosen_by_every_mode(model, visual):
    mcq = [{"role": "user", "content": mcq_question(QUESTION, OPTIONS)},
           {"role": "assistant", "content": mcq_answer("B", OPTIONS)}]
    label = [{"role": "user", "content": answers.label_question("top left")}, {"role": "assistant", "content": "stain."}]
    train(model, [(mcq, visual), (label, visual)])
    assert answers.answer_choice(model, visual, QUESTION, OPTIONS) == "B"
    assert answers.answer_choice(model, visual, QUESTION, OPTIONS, mode="letter") == "B"
    assert answers.generate(model, visual, mcq[:1], max_new_tokens=12) == "No."
    assert answers.label_boxes(model, visual, [[0, 0, 20, 20]], (64, 64)) == ["stain"]


@torch.no_grad()
def test_generation_is_deterministic_and_bounded(model, visual):
    turns = [{"role": "user", "content": "Describe the defect."}]
    a = answers.generate(model, visual, turns, max_new_tokens=5)
    assert a == answers.generate(model, visual, turns, max_new_tokens=5)
    # The bound, whatever random weights would say next: with the answer's first words forced and
    # max_new_tokens exactly their length, nothing follows them. (Re-tokenising a free random reply
    # is no measure: its bytes need not decode and re-encode to the same tokens.)
    start = "Yes. There is a crack"
    n = len(model._ids(start))
    assert answers.generate(model, visual, turns, max_new_tokens=n, start=start) == start
    with pytest.raises(AdcopilotError):
        answers.generate(model, visual, turns, max_new_tokens=0)
    with pytest.raises(AdcopilotError, match="mode"):
        answers.answer_choice(model, visual, QUESTION, OPTIONS, mode="vote")  # type: ignore[arg-type]
    with pytest.raises(AdcopilotError):
        answers.answer_choice(model, visual, QUESTION, {})


def test_match_option():
    opts = {"A": "Top left.", "B": "Top.", "C": "Center and right.", "D": "Bottom."}
    assert answers.match_option("B. Top.", opts) == "B"
    assert answers.match_option("(C)", opts) == "C"
    assert answers.match_option("top left", opts) == "A"
    assert answers.match_option("Centre and the right", opts) == "C"
    assert answers.match_option("A round hole at the top.", opts) in "AB"  # not the article "A"


def test_boxes_from_reply_rescales_to_the_query():
    reply = '[{"bbox_2d": [64, 32, 128, 96], "label": "Crack"}, {"bbox_2d": [200, 200, 300, 300], "label": "Hole"}]'
    boxes = answers.boxes_from_reply(reply, (512, 256), frame=256)
    assert boxes == [{"bbox_2d": [128, 32, 256, 96], "label": "Crack"}, {"bbox_2d": [400, 200, 512, 256], "label": "Hole"}]
    assert answers.boxes_from_reply("I cannot tell.", (100, 100), 256) == []
    assert answers.boxes_from_reply("[]", (100, 100), 256) == []


@torch.no_grad()
def test_reused_prefix_gives_the_same_answers(model, visual):
    turns = [{"role": "user", "content": mcq_question(QUESTION, OPTIONS)}]
    store: dict = {}
    plain = answers.score_continuations(model, turns, visual, ["Yes.", "No."])
    for _ in range(2):  # the second time the stored prefix is used
        reused = answers.score_continuations(model, turns, visual, ["Yes.", "No."], prefix=(store, "pair"))
        assert reused == pytest.approx(plain, abs=1e-4)
    pairs = [k for k in store if not k.startswith("\0")]
    # The pair's prefix, the text before its first image and that text with the reference images.
    assert pairs == ["pair"] and len(store) == 3
    other = [{"role": "user", "content": "Describe the defect."}]
    assert answers.generate(model, visual, other, 6, prefix=(store, "pair")) == answers.generate(model, visual, other, 6)
    # Another query against the same references reuses the start of the prompt: one more entry.
    again = answers.score_continuations(model, turns, visual, ["Yes.", "No."], prefix=(store, "pair 2"))
    assert again == pytest.approx(plain, abs=1e-4) and len(store) == 4


@torch.no_grad()
def test_kept_prompt_starts_are_bounded(model, visual, monkeypatch):
    monkeypatch.setattr(answers, "SHARED_PREFIXES", 3)
    turns = [{"role": "user", "content": "Describe the defect."}]
    store: dict = {}
    for i in range(5):  # five reference sets: each a new start
        other = VisualInputs(base=visual.base + i, glob=visual.glob, compare=visual.compare, cells=visual.cells,
                             score=visual.score)
        answers.generate(model, other, turns, 2, prefix=(store, f"pair {i}"))
    starts = [k for k in store if k.startswith("\0")]
    assert len(starts) == 3 and len(store) == 3 + 5


@torch.no_grad()
def test_calibrated_choice_subtracts_the_content_free_scores(model, visual):
    options = {"A": "Yes.", "B": "No.", "C": "A crack at the top."}
    turns = [{"role": "user", "content": mcq_question(QUESTION, options)}]
    texts = list(options.values())
    raw = answers.score_continuations(model, turns, visual, texts)
    # Calibrating against the very pair asked about takes every preference away: a tie, the first letter
    # (both scored through a prompt-prefix cache, as the copilot does, so that they agree to the last bit).
    same = answers.Prior(visual)
    assert answers.answer_choice(model, visual, QUESTION, options, prior=same, prior_weight=1.0, prefix=({}, "pair")) == "A"
    # Against another pair: the option with the highest raw - weight * content-free score.
    other = visual.rescored(0.9, 0.1)  # a different image score: different model inputs
    prior = answers.Prior(other)
    base = answers.score_continuations(model, turns, other, texts)
    for w in (0.0, 0.5, 1.0):
        expected = max(range(3), key=lambda i: (raw[i] - w * base[i], -i))
        assert answers.answer_choice(model, visual, QUESTION, options, prior=prior, prior_weight=w) == "ABC"[expected]
    assert prior.scores(model, turns, texts) == pytest.approx(base, abs=1e-4)  # computed once, then reused
    assert len(prior._scores) == 1


@torch.no_grad()
def test_forced_start_and_banned_first_token(model, visual):
    turns = [{"role": "user", "content": QUESTION}]
    free = answers.generate(model, visual, turns, max_new_tokens=6, start="Yes.")
    assert free.startswith("Yes.")
    start_ids = model._ids("Yes.")
    full = model._ids(free)
    assert full[: len(start_ids)] == start_ids and len(full) > len(start_ids)
    first = full[len(start_ids)]  # the model's own first token after the forced start
    banned = answers.generate(model, visual, turns, max_new_tokens=6, start="Yes.", ban_after_start=[first])
    ids = model._ids(banned)
    assert banned.startswith("Yes.") and (len(ids) == len(start_ids) or ids[len(start_ids)] != first)


def test_text_pieces_one_per_token_joined_the_stripped_text(tok):
    text = "  Défaut: 日本 stain  "
    ids = tok(text, add_special_tokens=False)["input_ids"]
    pieces = list(answers.text_pieces(tok, ids))
    assert len(pieces) == len(ids) and "".join(pieces) == tok.decode(ids).strip() == text.strip()
    assert "" in pieces  # a multi-byte letter over two tokens, the leading spaces: their text waits
    assert all("\ufffd" not in p for p in pieces)
    cut = ids[: next(i for i in range(1, len(ids)) if tok.decode(ids[:i]).endswith("\ufffd"))]
    assert "".join(answers.text_pieces(tok, cut)) == tok.decode(cut)[:-1].strip()  # a split letter at the end: left out


def test_streamed_answer_is_the_generated_answer(model, visual):
    turns = [{"role": "user", "content": "Is there any defect in the object?"}]
    pieces = list(answers.generate_stream(model, visual, turns, max_new_tokens=9, start="Yes."))
    assert "".join(pieces) == answers.generate(model, visual, turns, max_new_tokens=9, start="Yes.")
    assert len(pieces) <= 9 and "".join(pieces).startswith("Yes.")
