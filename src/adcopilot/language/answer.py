"""Answering with NanoCopilot: multiple choice, free answers, and two kinds of localization answers.

Multiple choice (``answer_choice``), two modes:

- ``"likelihood"`` (default): the prompt (images, question with its lettered options) is run once
  and its key/value cache reused for every option; each option is scored by the log-likelihood
  of its text as the answer (the trained answer format, e.g. ``"Top left."``) followed by the
  end-of-turn token, **divided by its number of tokens** (the mean log-probability per token;
  without it long options lose by length alone, and the end-of-turn token stops a prefix such
  as "Top" from beating "Top left"). The highest score wins; ties go to the earlier letter.
  With a ``prior`` (calibrated answers: ``Copilot.answer_choice(..., prior_weight=0.5)``), each
  score first loses ``prior_weight`` times the option's score given a *content-free* pair (two
  flat grey images) and the same question: what the model would say without seeing anything.
  This removes its preference for some option texts whatever the images ("contextual
  calibration", Zhao et al. 2021; PMI scoring, Holtzman et al. 2021). Off by default (weight 0):
  with the shipped model it helped on the training data's held-out questions but not on the
  bundled benchmark's held-out photos, and a question asked for the first time costs a second
  scoring (``benchmarks/calibrated_answers.py``; figures in ``benchmarks/RESULTS.md``).
- ``"letter"``: the model generates its answer greedily and the letter is read from it: a
  leading letter if it writes one, else the option whose text it wrote (exact after
  normalising, else the most similar, :func:`match_option`).

Free answers (``generate``): greedy decoding with the cache, stopped at the end-of-turn token or
``max_new_tokens``; ``generate_stream`` yields the same answer in pieces as its tokens are chosen.

Localization: ``label_boxes`` names each box of the dense anomaly head (from ``Copilot.inspect``)
by asking the language model "What type of defect is at the <region> of the image?" and scoring
the defect labels it was trained on (same length normalisation); ``text_boxes`` lets the language
model write the ``bbox_2d`` JSON itself, in the model's S x S input frame, rescaled to the query.

Usage::

    letter = answer_choice(model, visual, "Is there any defect?", {"A": "Yes.", "B": "No."})
    text = generate(model, visual, [{"role": "user", "content": "Describe the defect."}])
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F

from adcopilot.errors import AdcopilotError
from adcopilot.geometry import GRID_NAMES, region_name
from adcopilot.language.model import NanoCopilot
from adcopilot.language.prompt import mcq_answer, mcq_question
from adcopilot.language.visual import CELL_STATS, VisualInputs
from adcopilot.model.box_text import parse_box_text

ChoiceMode = Literal["likelihood", "letter"]
#: The question asked for the language model's own boxes (one of the trained phrasings).
TEXT_BOX_QUESTION = "Output the bounding boxes of all defects in the query image as JSON."


def label_question(region: str) -> str:
    return f"What type of defect is at the {region} of the image?"


#: A store of prompt-prefix caches and the key of this pair in it (see :func:`prefill`).
Prefix = tuple[dict[str, Any], str]
#: How much of the content-free score is taken off each option's by default (see the module docstring).
PRIOR_WEIGHT = 0.0


class Prior:
    """Option scores given a content-free pair, cached per (conversation, options): they do not
    depend on the images asked about, so a line asking the same questions pays for them once."""

    def __init__(self, visual: VisualInputs | None, size: int = 512) -> None:
        self.visual = visual
        self._prefixes: dict[str, Any] = {}
        self._scores: dict[str, list[float]] = {}
        self._size = size

    def scores(self, model: NanoCopilot, turns: Sequence[dict[str, str]], texts: Sequence[str]) -> list[float]:
        key = repr(([(t["role"], t["content"]) for t in turns], list(texts)))
        if key not in self._scores:
            if len(self._scores) >= self._size:
                self._scores.pop(next(iter(self._scores)))
            self._scores[key] = score_continuations(model, turns, self.visual, texts, (self._prefixes, "content-free"))
        return self._scores[key]


#: Prompt starts (system text and reference images) kept per store, the first added out first.
SHARED_PREFIXES = 16


def _start_key(embeds: torch.Tensor) -> str:
    """The store key of a prompt start (T, H), by its content; no pair key starts with "\\0"."""
    return "\0start:" + hashlib.sha1(embeds.float().cpu().numpy().tobytes()).hexdigest()


def _keep(store: dict[str, Any], key: str, cache: Any) -> None:
    """Keep a prompt start's cache, the oldest of more than :data:`SHARED_PREFIXES` dropped."""
    starts = [k for k in store if k.startswith("\0start:")]
    for old in starts[: max(0, len(starts) - SHARED_PREFIXES + 1)]:
        del store[old]
    store[key] = cache


def _pair_prefix(model: NanoCopilot, store: dict[str, Any], lead: torch.Tensor, refs: torch.Tensor,
                 rest: torch.Tensor) -> Any:
    """The cache of a pair's prompt up to its last image token: ``lead`` (T1, H: the text before the
    first image), ``refs`` (T2, H: the reference images up to the query's) and ``rest`` (T3, H).
    The start (lead and references) of a query against references seen before is not run again;
    for new references, only they and ``rest`` are run (in one pass, after the kept lead) and
    their start kept."""
    start = _start_key(torch.cat([lead, refs]))
    if start in store:
        return model.hidden_states(rest[None], cache=copy.deepcopy(store[start]), use_cache=True).cache
    first = _start_key(lead)
    if first not in store:
        _keep(store, first, model.hidden_states(lead[None], use_cache=True).cache)
    cache = model.hidden_states(torch.cat([refs, rest])[None], cache=copy.deepcopy(store[first]), use_cache=True).cache
    kept = copy.deepcopy(cache)
    kept.crop(-rest.shape[0])  # transformers' crop: a negative count of tokens taken off the end
    _keep(store, start, kept)
    return cache


@torch.inference_mode()
def prefill(
    model: NanoCopilot, turns: Sequence[dict[str, str]], visual: VisualInputs | None, prefix: Prefix | None = None
) -> tuple[torch.Tensor, Any]:
    """Run the prompt (ending with the assistant header): (next-token log-probs (V,), cache).

    With ``prefix`` = (store, key), the part of the prompt up to the last image token (system
    text and every image block: the same for every question about one pair) is computed once per
    key and its cache reused; only the question is run again. The part before the query's image
    (system text and the reference images: the same for every query against these references) is
    kept too, by its content, so a new query against known references runs only its own image
    blocks and the question."""
    n = visual.n_refs if visual is not None else 1
    segs = model.segments(turns, n, add_generation_prompt=True)
    images = [i for i, (kind, _) in enumerate(segs) if kind == "image"]
    if prefix is None or not images:
        enc = model.encode(segs, visual if model.cfg.use_images else None)
        out = model.hidden_states(enc.embeds[None], use_cache=True)
    else:
        store, key = prefix
        cut = images[-1] + 1
        if key not in store:
            at = next((i for i in images if segs[i] == ("image", "query")), images[0])
            lead, rest = model.encode(segs[: images[0]], None).embeds, model.encode(segs[at:cut], visual).embeds
            refs = model.encode(segs[images[0] : at], visual).embeds if at > images[0] else lead[:0]
            store[key] = _pair_prefix(model, store, lead, refs, rest)
        tail = model.encode(segs[cut:], None)
        out = model.hidden_states(tail.embeds[None], cache=copy.deepcopy(store[key]), use_cache=True)
    logp = F.log_softmax(model.logits(out.last_hidden_state[0, -1]).float(), dim=-1)
    return logp, out.cache


@torch.inference_mode()
def score_continuations(
    model: NanoCopilot, turns: Sequence[dict[str, str]], visual: VisualInputs | None, texts: Sequence[str],
    prefix: Prefix | None = None,
) -> list[float]:
    """Mean log-probability per token of each ``text`` + end-of-turn as the assistant's answer."""
    if not texts:
        raise AdcopilotError("nothing to score: no options")
    first, cache = prefill(model, turns, visual, prefix)
    seqs = [model._ids(t) + [model.eot_id] for t in texts]
    n, longest = len(seqs), max(len(s) for s in seqs)
    scores = [float(first[s[0]]) for s in seqs]
    if longest > 1:
        ids = torch.full((n, longest - 1), model.eot_id, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s) - 1] = torch.tensor(s[:-1])
        cache.batch_repeat_interleave(n)
        emb = model.llm.get_input_embeddings()(ids.to(model.device))  # (n, T-1, H)
        # Right padding needs no mask: a causal position never sees the padding after it.
        hid = model.hidden_states(emb, cache=cache, use_cache=True).last_hidden_state
        logp = F.log_softmax(model.logits(hid).float(), dim=-1)  # (n, T-1, V)
        for i, s in enumerate(seqs):
            for j in range(1, len(s)):
                scores[i] += float(logp[i, j - 1, s[j]])
    return [sc / len(s) for sc, s in zip(scores, seqs, strict=True)]


def match_option(reply: str, options: dict[str, str]) -> str:
    """The option a free reply names: a leading letter ("B", "B."), else the option whose text it
    is (normalised), else the option sharing the most words with it (then the most similar text)."""
    import difflib
    import re

    text = reply.strip()
    m = re.match(r"^\(?([A-Z])(?:[.):]|$)", text)  # "B", "B.", "(B)"; not the article in "A round hole"
    if m and m.group(1) in options:
        return m.group(1)

    def norm(t: str) -> str:
        return " ".join(re.findall(r"[a-z0-9]+", t.lower()))

    r = norm(text)
    for k, v in options.items():
        if norm(v) == r:
            return k
    words = set(r.split())

    def similarity(k: str) -> tuple[float, float, int]:
        o = norm(options[k])
        ow = set(o.split())
        jaccard = len(ow & words) / max(1, len(ow | words))  # shared words first, then characters
        return jaccard, difflib.SequenceMatcher(None, o, r).ratio(), -list(options).index(k)

    return max(options, key=similarity)


@torch.inference_mode()
def answer_choice(
    model: NanoCopilot,
    visual: VisualInputs | None,
    question: str,
    options: dict[str, str],
    *,
    mode: ChoiceMode = "likelihood",
    history: Sequence[dict[str, str]] | None = None,
    prefix: Prefix | None = None,
    prior: Prior | None = None,
    prior_weight: float = PRIOR_WEIGHT,
) -> str:
    """The letter of the chosen option (see the module docstring for the two modes and ``prior``)."""
    if not options:
        raise AdcopilotError("a multiple-choice question needs options")
    turns = [*(history or []), {"role": "user", "content": mcq_question(question, options)}]
    letters = list(options)
    if mode == "letter":
        longest = max(len(model._ids(v)) for v in options.values())
        return match_option(generate(model, visual, turns, max_new_tokens=longest + 4, prefix=prefix), options)
    if mode != "likelihood":
        raise AdcopilotError(f"unknown answer mode {mode!r}; use 'likelihood' or 'letter'")
    texts = [mcq_answer(k, options) for k in letters]
    scores = score_continuations(model, turns, visual, texts, prefix)
    if prior is not None and prior_weight:
        base = prior.scores(model, turns, texts)
        scores = [s - prior_weight * b for s, b in zip(scores, base, strict=True)]
    return letters[max(range(len(letters)), key=lambda i: (scores[i], -i))]


@torch.inference_mode()
def type_probs(model: NanoCopilot, visual: VisualInputs | None, region: str | None = None) -> dict[str, float]:
    """{defect label: probability} by the defect-type head in the query's most anomalous grid
    cell (or in ``region``, a 3x3 cell name); empty without a type head."""
    proj = model.projectors
    if visual is None or not getattr(proj, "anchored", False) or not model.cfg.defect_labels:
        return {}
    cells = visual.cells.to(model.device)
    names = [n for row in GRID_NAMES for n in row]
    i = names.index(region) if region in names and cells.shape[0] == len(names) else int(cells[:, 0].argmax())
    hottest = cells[i, CELL_STATS:]  # (2C,)
    prob = proj.type_head(hottest).softmax(-1)  # (K,)
    return {label: float(p) for label, p in zip(model.cfg.defect_labels, prob.tolist(), strict=True)}


def type_choice(
    model: NanoCopilot, visual: VisualInputs | None, choices: dict[str, int], region: str | None = None
) -> str | None:
    """The letter whose defect label (``choices``: letter -> index into ``cfg.defect_labels``) the
    defect-type head finds likeliest (see :func:`type_probs`); None without a type head."""
    probs = list(type_probs(model, visual, region).values())
    if not probs:
        return None
    return max(choices, key=lambda k: (probs[choices[k]], -list(choices).index(k)))


def type_label(model: NanoCopilot, visual: VisualInputs | None, region: str | None = None) -> str | None:
    """The type head's likeliest label (see :func:`type_probs`), or None without a type head."""
    probs = type_probs(model, visual, region)
    return max(probs, key=lambda k: probs[k]) if probs else None


@torch.inference_mode()
def generate_ids(
    model: NanoCopilot,
    visual: VisualInputs | None,
    turns: Sequence[dict[str, str]],
    max_new_tokens: int = 64,
    min_new_tokens: int = 0,
    prefix: Prefix | None = None,
    start: str = "",
    ban_after_start: Sequence[int] = (),
) -> Iterator[int]:
    """Greedy answer to the last user turn of ``turns``, each token id yielded as soon as it is
    chosen (no stop before ``min_new_tokens``); the answer begins with ``start`` (e.g. a grounded
    "Yes."), whose tokens come first and which the model then continues, its first own token not
    one of ``ban_after_start`` (e.g. a second, contradicting "No")."""
    if max_new_tokens < 1:
        raise AdcopilotError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    given = [int(t) for t in model.tokenizer(start, add_special_tokens=False)["input_ids"]] if start else []
    yield from given  # known before the model runs: said at once
    if len(given) >= max_new_tokens:
        return
    logp, cache = prefill(model, turns, visual, prefix)
    stop = {model.eot_id, int(model.tokenizer.eos_token_id)}
    n = len(given)
    emb_layer = model.llm.get_input_embeddings()
    for tok in given:  # teacher-forced: the model reads its given first words
        res = model.hidden_states(emb_layer(torch.tensor([[tok]], device=model.device)), cache=cache, use_cache=True)
        cache = res.cache
        logp = F.log_softmax(model.logits(res.last_hidden_state[0, -1]).float(), dim=-1)
    if n and ban_after_start:
        logp = logp.clone()
        logp[list(ban_after_start)] = float("-inf")
    for step in range(n, max_new_tokens):
        if step < min_new_tokens:
            logp = logp.clone()
            logp[list(stop)] = float("-inf")
        nxt = int(logp.argmax())
        if nxt in stop:
            break
        yield nxt
        if step == max_new_tokens - 1:
            break
        emb = emb_layer(torch.tensor([[nxt]], device=model.device))
        res = model.hidden_states(emb, cache=cache, use_cache=True)
        cache = res.cache
        logp = F.log_softmax(model.logits(res.last_hidden_state[0, -1]).float(), dim=-1)


def text_pieces(tokenizer: Any, ids: Iterable[int]) -> Iterator[str]:
    """For each token of a growing sequence, the text it adds, yielded as it arrives; joined, the
    pieces are the sequence's text, stripped. Trailing whitespace and an incomplete character (a
    multi-byte letter split over tokens) wait for the token that follows them (their pieces are
    empty meanwhile); a character the sequence ends inside is left out."""
    seq: list[int] = []
    sent = ""
    for tok in ids:
        seq.append(tok)
        text = tokenizer.decode(seq, skip_special_tokens=True)
        ready = "" if text.endswith("\ufffd") else text.strip()
        if len(ready) > len(sent):
            yield ready[len(sent):]  # a byte-level tokenizer's text only grows at its end
            sent = ready
        else:
            yield ""


def generate_stream(model: NanoCopilot, visual: VisualInputs | None, turns: Sequence[dict[str, str]],
                    **options: Any) -> Iterator[str]:
    """:func:`generate`'s answer as it is written: for each token chosen, the text it adds (see
    :func:`text_pieces`; same ``options``)."""
    return text_pieces(model.tokenizer, generate_ids(model, visual, turns, **options))


def generate(model: NanoCopilot, visual: VisualInputs | None, turns: Sequence[dict[str, str]],
             max_new_tokens: int = 64, **options: Any) -> str:
    """The greedy answer of :func:`generate_ids` (same ``options``) as text, stripped."""
    return "".join(generate_stream(model, visual, turns, max_new_tokens=max_new_tokens, **options))


@torch.inference_mode()
def label_boxes(
    model: NanoCopilot, visual: VisualInputs | None, boxes: Sequence[Sequence[int]], size: tuple[int, int],
    labels: Sequence[str] | None = None, prefix: Prefix | None = None,
) -> list[str]:
    """A defect label for each box (query pixels, image ``size`` (w, h)), chosen by the language
    model among ``labels`` (default: the labels it was trained on)."""
    cands = list(labels or model.cfg.defect_labels)
    if not cands:
        return ["defect"] * len(boxes)
    out = []
    for b in boxes:
        turns = [{"role": "user", "content": label_question(region_name(b, *size))}]
        scores = score_continuations(model, turns, visual, [f"{c}." for c in cands], prefix)
        out.append(cands[max(range(len(cands)), key=lambda i: (scores[i], -i))])
    return out


def boxes_from_reply(reply: str, size: tuple[int, int], frame: int) -> list[dict[str, Any]]:
    """Boxes written by the language model in its ``frame`` x ``frame`` input frame ->
    [{"bbox_2d", "label"}] in query pixels (``size`` (w, h)), clipped; empty boxes dropped."""
    import json

    raw = parse_box_text(reply) or []
    labels: list[str] = []
    start = reply.find("[")
    if start >= 0:
        try:
            obj, _ = json.JSONDecoder().raw_decode(reply[start:])
        except ValueError:
            obj = None
        if isinstance(obj, list) and len(obj) == len(raw):
            labels = [str(o.get("label", "defect")) if isinstance(o, dict) else "defect" for o in obj]
    w, h = size
    sx, sy = w / float(frame), h / float(frame)
    out = []
    for i, b in enumerate(raw):
        x1, y1, x2, y2 = (max(0.0, float(v)) for v in b)
        box = [int(round(min(x1 * sx, w))), int(round(min(y1 * sy, h))), int(round(min(x2 * sx, w))),
               int(round(min(y2 * sy, h)))]
        if box[2] > box[0] and box[3] > box[1]:
            out.append({"bbox_2d": box, "label": labels[i] if i < len(labels) else "defect"})
    return out


def text_boxes(
    model: NanoCopilot, visual: VisualInputs | None, size: tuple[int, int], frame: int, max_new_tokens: int = 96,
    prefix: Prefix | None = None,
) -> tuple[str, list[dict[str, Any]]]:
    """The language model's own boxes: (raw reply, [{"bbox_2d", "label"}] in query pixels).

    The model answers in its ``frame`` x ``frame`` input frame (see :func:`boxes_from_reply`);
    an unparsable reply gives no boxes."""
    reply = generate(model, visual, [{"role": "user", "content": TEXT_BOX_QUESTION}], max_new_tokens, prefix=prefix)
    return reply, boxes_from_reply(reply, size, frame)
