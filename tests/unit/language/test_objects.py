"""Object questions without product context: the tower's ImageNet classes matched to the options."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from adcopilot.language.knowledge_match import LexicalMatcher
from adcopilot.language.objects import choose_object, class_names, class_probabilities, option_scores
from adcopilot.model.backbone import load_backbone

ESPRESSO, HUSKY = 967, 248  # ImageNet-1k indices


def one_hot(*indices: int) -> np.ndarray:
    p = np.zeros(1000)
    p[list(indices)] = 1.0 / len(indices)
    return p


def test_the_classes_are_imagenets_in_classifier_order():
    names = class_names()
    assert len(names) == 1000  # "crane" twice: the bird and the machine
    assert names[0].startswith("tench") and names[ESPRESSO] == "espresso" and names[HUSKY].startswith("Eskimo dog")


def test_the_option_the_likely_class_names_wins():
    options = {"A": "Screw.", "B": "Espresso.", "C": "Zipper."}
    assert choose_object(one_hot(ESPRESSO), options, LexicalMatcher()) == "B"
    assert choose_object(one_hot(HUSKY), {"A": "Espresso.", "B": "Dog."}, LexicalMatcher()) == "B"


def test_a_word_that_fits_many_classes_pays_for_it():
    # Half espresso, half husky: both options fit one likely class fully, but "dog" is in many class
    # names, so its mean similarity to all classes is subtracted more.
    scores = option_scores(one_hot(ESPRESSO, HUSKY), {"A": "Dog.", "B": "Espresso."}, LexicalMatcher())
    dogs = sum("dog" in re.findall(r"[a-z]+", n.lower()) for n in class_names())
    assert dogs > 5
    assert scores["A"] == pytest.approx(0.5 - dogs / 1000, abs=1e-6)
    assert scores["B"] > scores["A"]


def test_no_answer_when_nothing_fits():
    assert choose_object(one_hot(ESPRESSO), {"A": "Quux.", "B": "Blarg."}, LexicalMatcher()) is None
    assert choose_object(one_hot(ESPRESSO), {}, LexicalMatcher()) is None
    with pytest.raises(ValueError, match="1000 class probabilities"):
        option_scores(np.ones(10) / 10, {"A": "Espresso."}, LexicalMatcher())


def test_probabilities_are_the_mean_over_views_of_the_classifier():
    tower = load_backbone(pretrained=False)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        _, glob = tower.features(x)
        expected = tower(x).softmax(dim=-1).mean(dim=0).numpy()
    p = class_probabilities(tower, glob)
    assert p.shape == (1000,) and p.sum() == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(p, expected, atol=1e-6)
