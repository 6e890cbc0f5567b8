"""Answer options matched to retrieved domain knowledge: text similarity, sentence by sentence.

A question about what a defect looks like, what causes it or what it does ("What is the most
likely cause of this defect?") has no answer in the pixels alone; it has one in the knowledge
about the defect's *type*. The type head gives a probability per trained label; for each label,
:meth:`adcopilot.data.knowledge.Knowledge.passages` retrieves what is known about it (the
taxonomy's description, causes and effects, and MMAD-format texts, those about the product
first). Each option is compared with every sentence retrieved for every label and assigned to
the label whose knowledge it fits best; it scores that label's probability:

    score(option) = p(label(option)),  label(option) = argmax over l of  max_sentence sim(option, sentence of l)

so the answer is the option describing the type the head finds likeliest among those the options
describe, as a type question's answer is (the similarity breaks ties; an option fitting nothing
scores 0). Similarity: cosine of all-MiniLM-L6-v2 sentence embeddings (asset
``minilm-l6``, loaded from its package, no hub) when installed, else a lexical score (the share
of the option's content words, crudely stemmed, found in the sentence).

Usage::

    matcher = default_matcher()
    letter = choose_by_knowledge({"Stain": 0.7, "Hole": 0.3}, options, Knowledge.load(), matcher)
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from adcopilot import assets
from adcopilot.data.knowledge import Knowledge
from adcopilot.errors import AdcopilotError
from adcopilot.language.llm import LOAD_LOCK

log = logging.getLogger(__name__)

#: Below this similarity (cosine or lexical, both in [0, 1]) an option describes no label.
MIN_SIMILARITY = 0.3
#: How much the similarity itself counts: only to break ties between options of one label.
TIE_WEIGHT = 1e-3
EMBEDDING_ASSET = "minilm-l6"
_STOP = {
    "a", "an", "the", "of", "or", "and", "in", "on", "to", "by", "with", "from", "for", "is", "are", "be",
    "it", "its", "as", "at", "can", "that", "this", "which", "into", "than", "usually", "often", "may",
}
_SENTENCE = re.compile(r"(?<=[.;!?])\s+|\n+|\s+-\s+")


class TextMatcher(Protocol):
    """Similarity of texts: ``similarity(a, b)`` -> (len(a), len(b)) array in [0, 1]."""

    name: str

    def similarity(self, a: Sequence[str], b: Sequence[str]) -> np.ndarray: ...


def _stem(word: str) -> str:
    for suffix in ("ing", "ed", "es", "s", "ly"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def content_words(text: str) -> set[str]:
    """Lower-cased, crudely stemmed words of a text without function words."""
    return {_stem(w) for w in re.findall(r"[a-z]+", text.lower()) if w not in _STOP}


class LexicalMatcher:
    """Share of ``a``'s content words found in ``b`` (no model needed)."""

    name = "lexical"

    def similarity(self, a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        wa, wb = [content_words(t) for t in a], [content_words(t) for t in b]
        out = np.zeros((len(a), len(b)), dtype=np.float32)
        for i, x in enumerate(wa):
            for j, y in enumerate(wb):
                out[i, j] = len(x & y) / len(x) if x else 0.0
        return out


class EmbeddingMatcher:
    """Cosine similarity of mean-pooled all-MiniLM-L6-v2 embeddings (the model loads on first use)."""

    name = "minilm-l6"

    def __init__(self, path: str) -> None:
        self.path = path
        self._model = None
        self._tokenizer = None
        self._cache: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    def _load(self) -> None:
        with LOAD_LOCK:  # the language model may be loading in another thread
            from transformers import AutoModel, AutoTokenizer  # heavy: only when the matcher is used
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
            self._tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
            self._model = AutoModel.from_pretrained(self.path, local_files_only=True).eval()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(N, 384) unit vectors; each text embedded once per process."""
        import torch

        with self._lock:
            if self._model is None:
                self._load()
            todo = [t for t in dict.fromkeys(texts) if t not in self._cache]
            for i in range(0, len(todo), 64):
                batch = todo[i : i + 64]
                enc = self._tokenizer(batch, padding=True, truncation=True, max_length=128, return_tensors="pt")
                with torch.inference_mode():
                    hidden = self._model(**enc).last_hidden_state  # (B, T, 384)
                mask = enc["attention_mask"][..., None].float()
                vec = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
                for t, v in zip(batch, vec.numpy(), strict=True):
                    self._cache[t] = v
            return np.stack([self._cache[t] for t in texts])

    def similarity(self, a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        return np.clip(self.embed(a) @ self.embed(b).T, 0.0, 1.0)


_DEFAULT: dict[str, TextMatcher] = {}


def make_matcher(name: str = "auto") -> TextMatcher:
    """``"minilm-l6"`` (the embedding asset; an error naming the fetch command when missing),
    ``"lexical"``, or ``"auto"``: the embeddings when installed, else lexical."""
    if name not in ("auto", "lexical", EMBEDDING_ASSET):
        raise AdcopilotError(f"unknown text matcher {name!r}; use auto, lexical or {EMBEDDING_ASSET}")
    if name == "lexical":
        return LexicalMatcher()
    if name == "auto" and assets.get(EMBEDDING_ASSET).path() is None:
        log.info("no sentence-embedding model installed (%s): lexical matching", assets.fetch_command(EMBEDDING_ASSET))
        return LexicalMatcher()
    return EmbeddingMatcher(str(assets.require(EMBEDDING_ASSET)))


def default_matcher() -> TextMatcher:
    """The process-wide matcher (the embedding model is loaded once): ``$ADCOPILOT_TEXT_MATCHER``
    (auto, lexical or minilm-l6), default auto."""
    name = os.environ.get("ADCOPILOT_TEXT_MATCHER", "auto").strip() or "auto"
    if name not in _DEFAULT:
        _DEFAULT[name] = make_matcher(name)
    return _DEFAULT[name]


def sentences(text: str) -> list[str]:
    """A passage cut into sentences and list items (a header such as "<Large Breakage>" dropped)."""
    text = re.sub(r"<[^>]*>", " ", text).replace("Description:", " ")
    return [s.strip(" -:") for s in _SENTENCE.split(text) if len(s.strip(" -:")) > 2]


def label_sentences(kb: Knowledge, label: str, product: str | None = None) -> list[str]:
    """Every sentence known about a defect label (see :meth:`Knowledge.passages`)."""
    return [s for p in kb.passages(label, product) for s in sentences(p.text)]


def option_votes(
    probs: Mapping[str, float], known: Mapping[str, Sequence[str]], options: Mapping[str, str], matcher: TextMatcher
) -> dict[str, float]:
    """{letter: score} (see the module docstring) from each label's probability and sentences
    (``known``); all zero when no label has a sentence."""
    letters = list(options)
    labels = [label for label in probs if known.get(label)]
    if not labels:
        return dict.fromkeys(letters, 0.0)
    texts = [options[k] for k in letters]
    sim = np.stack([matcher.similarity(texts, list(known[label])).max(axis=1) for label in labels], axis=1)  # (O, L)
    own = sim.argmax(axis=1)  # (O,): the label each option describes
    best = sim.max(axis=1)
    # An option that fits no knowledge (below MIN_SIMILARITY) gets no label's probability.
    score = [probs[labels[j]] * (b >= MIN_SIMILARITY) + TIE_WEIGHT * b for j, b in zip(own, best, strict=True)]
    return {k: float(v) for k, v in zip(letters, score, strict=True)}


def choose_option(
    probs: Mapping[str, float], known: Mapping[str, Sequence[str]], options: Mapping[str, str], matcher: TextMatcher
) -> str | None:
    """The option letter with the most votes (ties: the earlier letter), or None without a vote."""
    votes = option_votes(probs, known, options, matcher)
    if not any(votes.values()):
        return None
    letters = list(votes)
    return max(letters, key=lambda k: (votes[k], -letters.index(k)))


def choose_by_knowledge(
    probs: Mapping[str, float], options: Mapping[str, str], kb: Knowledge, matcher: TextMatcher,
    product: str | None = None,
) -> str | None:
    """The option letter the knowledge of the likely defect types (``probs``: label ->
    probability) fits best, or None when none of them has knowledge (the question then stays
    with the language model)."""
    known = {label: label_sentences(kb, label, product) for label in probs}
    return choose_option(probs, known, options, matcher)


def best_sentences(query: str, candidates: Sequence[str], matcher: TextMatcher, k: int = 1) -> list[str]:
    """The ``k`` candidate sentences most similar to ``query`` (retrieval for a free answer)."""
    if not candidates:
        return []
    sim = matcher.similarity([query], list(candidates))[0]
    order = sorted(range(len(candidates)), key=lambda i: (-float(sim[i]), i))
    return [candidates[i] for i in order[:k]]
