"""A threshold that needs no labels: the references' own normal spread.

How high a normal image scores depends on the product: a plain photo's normal queries score near 0.1, a
polycrystalline solar cell's near 0.5, so one fixed threshold flags almost none of one and a third of
the other. With two or more references the product shows its own normal variation: each reference is
scored against the others (leave-one-out), and the threshold is placed ``MARGIN`` logits above their
mean logit:

    threshold = sigmoid(mean_i logit(score(ref_i | other refs)) + MARGIN)

so the same margin means about the same false-alarm rate on every product
(``benchmarks/bench_threshold.py``; figures in ``benchmarks/RESULTS.md``). The leave-one-out scores
are computed once per reference set and cached by the caller.

With one reference there is nothing to leave out. Scoring light augmentations of the reference against
itself was measured and carries no information about the product (a normal level near 0.06 on every
product, whatever its real spread), so with one reference the model's fixed threshold stays.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MARGIN = 2.0  # logits above the references' mean leave-one-out score
_EPS = 1e-4  # scores are probabilities; keep their logits finite


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1.0 - _EPS)
    return np.log(p / (1.0 - p))


def spread_threshold(normal_scores: Sequence[float], margin: float = MARGIN) -> float:
    """The threshold ``margin`` logits above the mean logit of the references' leave-one-out scores."""
    if len(normal_scores) == 0:
        raise ValueError("the normal spread needs at least one leave-one-out score")
    level = float(_logit(np.asarray(normal_scores, dtype=np.float64)).mean()) + margin
    return float(1.0 / (1.0 + np.exp(-level)))
