"""Ranking metrics shared by the detection evaluation and the threshold calibration.

Usage::

    auroc(np.array([0.1, 0.9]), np.array([False, True]))   # 1.0; None when one class is missing
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def auroc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve, P(score of a defect > score of a normal), ties counting one half
    (average ranks); ``labels`` true / 1 for defects. None when only one class is present."""
    y = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(np.asarray(scores, dtype=np.float64))
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
