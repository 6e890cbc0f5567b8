"""The decision threshold of least expected cost, from scores of labelled normal and defective images.

On a line, a missed defect (a bad part shipped) and a false alarm (overkill: a good part rejected
or re-inspected) have different prices. For a threshold ``t`` (anomalous when ``score >= t``) the
expected cost per inspected part is

    cost(t) = miss_cost * p * miss_rate(t) + false_alarm_cost * (1 - p) * overkill_rate(t)

where ``p`` is the share of defective parts on the line (``prevalence``; by default the share in
the labelled set). Candidates are the midpoints between consecutive distinct scores (and one value
below / above all), so every achievable split is tried once. With ``target_miss_rate`` instead,
the threshold is the highest one whose miss rate does not exceed it (the fewest false alarms).

With ``target_false_alarm_rate`` the threshold is the lowest one whose false-alarm rate on the
normal images does not exceed it (the most sensitive allowed). This needs no defective images: a
line that has only good parts so far can set its threshold from them (misses are then unknown).
The metrics give the 95 % upper bound of the false-alarm rate (Clopper-Pearson), because with n
normals a rate below about 3/n cannot be shown: with 20 normals and none flagged it is 14 %.

Usage::

    cal = choose_threshold(scores, labels, miss_cost=20, false_alarm_cost=1)
    cal.threshold, cal.metrics["confusion"], cal.metrics["overkill"], cal.metrics["miss"]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from adcopilot.errors import AdcopilotError
from adcopilot.metrics import auroc


@dataclass
class Curves:
    """Per-candidate-threshold rates and costs, thresholds ascending."""

    thresholds: np.ndarray
    overkill: np.ndarray  # false-alarm rate among normals (FPR)
    miss: np.ndarray  # miss rate among defectives (FNR)
    cost: np.ndarray


@dataclass
class ThresholdChoice:
    threshold: float
    expected_cost: float
    metrics: dict[str, Any]
    curves: Curves = field(repr=False)
    settings: dict[str, Any] = field(default_factory=dict)


def candidate_thresholds(scores: np.ndarray) -> np.ndarray:
    u = np.unique(scores.astype(np.float64))
    span = max(float(u[-1] - u[0]), 1e-6)
    mids = (u[:-1] + u[1:]) / 2.0
    return np.concatenate([[u[0] - 0.05 * span], mids, [u[-1] + 0.05 * span]])


def rates(scores: np.ndarray, labels: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(overkill rate, miss rate) at each threshold; labels 1 = defective."""
    neg = np.sort(scores[labels == 0])
    pos = np.sort(scores[labels == 1])
    # Anomalous when score >= t: normals at or above t are false alarms, defectives below t are misses.
    overkill = 1.0 - np.searchsorted(neg, thresholds, side="left") / len(neg)
    if len(pos) == 0:  # normals only: misses unknown
        return overkill, np.full(len(thresholds), np.nan)
    miss = np.searchsorted(pos, thresholds, side="left") / len(pos)
    return overkill, miss


def overkill_upper_bound(false_alarms: int, n_normal: int, confidence: float = 0.95) -> float:
    """One-sided Clopper-Pearson upper bound of the false-alarm rate seen as ``false_alarms`` of ``n_normal``."""
    from scipy.stats import beta

    if false_alarms >= n_normal:
        return 1.0
    return float(beta.ppf(confidence, false_alarms + 1, n_normal - false_alarms))


def confusion(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, int]:
    pred = scores >= threshold
    return {
        "tp": int((pred & (labels == 1)).sum()),
        "fn": int((~pred & (labels == 1)).sum()),
        "fp": int((pred & (labels == 0)).sum()),
        "tn": int((~pred & (labels == 0)).sum()),
    }


def check_choice_settings(
    *,
    miss_cost: float = 1.0,
    false_alarm_cost: float = 1.0,
    target_miss_rate: float | None = None,
    target_false_alarm_rate: float | None = None,
    prevalence: float | None = None,
) -> None:
    """Refuse settings no labels can make valid, in one line naming the flag (callers check them before
    scoring anything, so a typo costs no scoring time)."""
    if target_miss_rate is not None and target_false_alarm_rate is not None:
        raise AdcopilotError("give --target-miss-rate or --target-false-alarm-rate, not both")
    for flag, rate in (("--target-miss-rate", target_miss_rate), ("--target-false-alarm-rate", target_false_alarm_rate)):
        if rate is not None and not 0.0 <= rate < 1.0:
            raise AdcopilotError(f"{flag} must be in [0, 1), got {rate}")
    if miss_cost < 0 or false_alarm_cost < 0 or miss_cost + false_alarm_cost == 0:
        raise AdcopilotError("--miss-cost and --false-alarm-cost must be >= 0 and not both 0")
    if prevalence is not None and not 0.0 < prevalence < 1.0:
        raise AdcopilotError(f"--prevalence must be between 0 and 1 (exclusive), got {prevalence}")


def choose_threshold(
    scores: np.ndarray | list[float],
    labels: np.ndarray | list[int],
    *,
    miss_cost: float = 1.0,
    false_alarm_cost: float = 1.0,
    target_miss_rate: float | None = None,
    target_false_alarm_rate: float | None = None,
    prevalence: float | None = None,
) -> ThresholdChoice:
    """Pick the threshold; ``labels``: 1 defective, 0 normal (all 0 with ``target_false_alarm_rate``)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if s.shape != y.shape or s.ndim != 1:
        raise AdcopilotError(f"scores and labels must be two equal-length lists (got {s.shape} and {y.shape})")
    if not np.isfinite(s).all():
        raise AdcopilotError("some scores are not finite numbers")
    n1, n0 = int((y == 1).sum()), int((y == 0).sum())
    check_choice_settings(miss_cost=miss_cost, false_alarm_cost=false_alarm_cost, target_miss_rate=target_miss_rate,
                          target_false_alarm_rate=target_false_alarm_rate, prevalence=prevalence)
    if target_false_alarm_rate is not None:
        if n0 == 0:
            raise AdcopilotError("--target-false-alarm-rate needs normal images (got none)")
    elif n0 == 0 or n1 == 0:
        raise AdcopilotError(
            f"calibration needs both normal and defective images (got {n0} normal, {n1} defective); "
            "with normal images only, give --target-false-alarm-rate"
        )
    p = n1 / (n0 + n1) if prevalence is None else float(prevalence)  # with no defects and none given: 0

    t = candidate_thresholds(s)
    overkill, miss = rates(s, y, t)
    cost = (miss_cost * p * miss if n1 else 0.0) + false_alarm_cost * (1.0 - p) * overkill
    if target_false_alarm_rate is not None:
        ok = np.nonzero(overkill <= target_false_alarm_rate + 1e-12)[0]
        i = int(ok[0])  # overkill falls as t grows: the lowest allowed threshold
    elif target_miss_rate is not None:
        ok = np.nonzero(miss <= target_miss_rate + 1e-12)[0]
        i = int(ok[-1])  # miss rate grows with t: the highest allowed threshold
    else:
        best = np.nonzero(np.isclose(cost, cost.min(), rtol=0, atol=1e-12))[0]
        i = int(best[len(best) // 2])  # ties: the middle one, away from both classes
    thr = float(t[i])
    conf = confusion(s, y, thr)
    metrics = {
        "confusion": conf,
        "overkill": conf["fp"] / n0,
        "overkill_upper95": overkill_upper_bound(conf["fp"], n0),
        "miss": conf["fn"] / n1 if n1 else None,
        "accuracy": (conf["tp"] + conf["tn"]) / (n0 + n1),
        "auroc": auroc(s, y),
        "n_normal": n0,
        "n_defective": n1,
    }
    settings = {
        "miss_cost": float(miss_cost),
        "false_alarm_cost": float(false_alarm_cost),
        "target_miss_rate": target_miss_rate,
        "target_false_alarm_rate": target_false_alarm_rate,
        "prevalence": p,
    }
    return ThresholdChoice(thr, float(cost[i]), metrics, Curves(t, overkill, miss, cost), settings)
