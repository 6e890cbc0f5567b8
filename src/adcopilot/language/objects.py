"""What the object is, without product context: the vision tower's own ImageNet classifier.

The frozen tower was trained on ImageNet; its classifier says, for every image it encodes, how
likely each of 1,000 ImageNet classes is (``imagenet_classes.tsv``: WordNet lemmas and glosses). An
object question whose options are names or uses ("Gravel." / "Holds and serves a hot drink.") is
answered by the option whose text is most similar to the likely classes' names, with each option's
similarity to *every* class subtracted first: a generic word ("Tile.", "A food product.") is a
little similar to many classes and would otherwise win whenever the image is unclear.

The probabilities are the mean over the query and its references (the same product, so more views
of it). This knows what ImageNet knows: everyday objects, animals, materials; an industrial part it
never saw is matched by what it resembles, which may be wrong. Product context given by the user
(``--product``) always comes first.

Usage::

    probs = class_probabilities(tower, visual.glob)           # (1000,), glob: (n, D) pooled features
    letter = choose_object(probs, {"A": "Gravel.", "B": "Screw."}, matcher)
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from adcopilot.language.knowledge_match import TextMatcher
from adcopilot.model.backbone import Backbone

CLASSES_FILE = Path(__file__).with_name("imagenet_classes.tsv")
#: Most likely classes an option is compared with (chosen on the object questions of
#: ``benchmarks/object_questions.py``, built on training photos only).
TOP_CLASSES = 5


@lru_cache(maxsize=1)
def class_names() -> tuple[str, ...]:
    """The 1,000 classes' lemmas ("espresso", "coffee mug", ...) in classifier order."""
    names = []
    for line in CLASSES_FILE.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            _, _, lemmas, _ = line.split("\t")
            names.append(lemmas)
    return tuple(names)


@torch.no_grad()
def class_probabilities(tower: Backbone, glob: torch.Tensor) -> np.ndarray:
    """(n, D) pooled features of n views of the product -> (1000,) mean ImageNet class probabilities."""
    logits = tower.classify(glob.float())  # (n, 1000)
    return logits.softmax(dim=-1).mean(dim=0).numpy()


def option_scores(
    probs: np.ndarray, options: Mapping[str, str], matcher: TextMatcher, top: int = TOP_CLASSES
) -> dict[str, float]:
    """{letter: score}: each option's similarity to the ``top`` likely classes (weighted by their
    renormalised probability) less its mean similarity to all classes."""
    names = class_names()
    if probs.shape != (len(names),):
        raise ValueError(f"expected {len(names)} class probabilities, got shape {probs.shape}")
    letters = list(options)
    sim = matcher.similarity([options[k] for k in letters], list(names))  # (O, 1000)
    idx = np.argsort(-probs, kind="stable")[:top]
    w = probs[idx] / max(float(probs[idx].sum()), 1e-12)
    score = sim[:, idx] @ w - sim.mean(axis=1)  # (O,)
    return {k: float(s) for k, s in zip(letters, score, strict=True)}


def choose_object(
    probs: np.ndarray, options: Mapping[str, str], matcher: TextMatcher, top: int = TOP_CLASSES
) -> str | None:
    """The letter of the option the image's likely classes fit best (ties: the earlier letter), or
    None when no option fits them better than it fits an average class."""
    if not options:
        return None
    scores = option_scores(probs, options, matcher, top)
    letters = list(scores)
    best = max(letters, key=lambda k: (scores[k], -letters.index(k)))
    return best if scores[best] > 0.0 else None
