"""Are the references fit to compare with? Each reference checked against the other references.

Every verdict rests on the references being normal images of one product. A blank frame, an over- or
under-exposed or blurred shot, or a picture of another product among them would otherwise pass silently:
queries are compared with it, and the query's own check (:mod:`adcopilot.model.sanity`), which reads the
references' median, hides one bad member of a set. So each reference is checked as a query is checked
(:func:`sanity.check_image`, its product test on the detector's nearest-reference-patch distances) against the
others, compared as they were taken. Those distances come straight from the encoded references' patch features
where the detector exposes them (:meth:`Detector.reference_tokens`: no tower pass; the nearest-patch search looks
everywhere, so registration hardly moves it), else from an inspection of the reference against the others. With
one reference only the absolute test applies: a frame without contrast. The findings are notes for the user;
verdicts are not changed by them.

The image statistics (contrast, exposure, sharpness) are read against the median of the whole set, the
reference itself included, so one bad frame among three cannot move it. A frame blamed for such a fault is
left out and the others are checked again among themselves (a blank frame would make every other reference
"not the reference product"). Of two references that fail against each other, which one is wrong cannot be
told (a sharp noise frame makes the good one look blurred), and one note names both.

Usage::

    reasons = reference_reasons(detector, plain, profiles, rules, registration=True)  # one per reference
    notes = reference_notes(names, reasons)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from adcopilot.model.detector import Detector
from adcopilot.model.inspection import inspect_arrays
from adcopilot.model.sanity import BLANK, NOT_PRODUCT, PATCH_QUANTILE, CheckRules, ImageProfile, check_image


def reference_reasons(
    detector: Detector,
    references: Sequence[tuple[np.ndarray, Any]],
    profiles: Sequence[ImageProfile],
    rules: CheckRules,
    registration: bool = True,
) -> list[str | None]:
    """Per reference [(array (S, S, 3), encoding), ...] as taken, the reason it is unlike the other references
    (``sanity.check_image``'s reasons), or None; with one reference, "blank image" for a frame without contrast."""
    k = len(references)
    if k == 1:
        return [BLANK if profiles[0].std < rules.blank_std else None]
    tokens = [detector.reference_tokens(enc) for _, enc in references]

    def distance(i: int, among: Sequence[int]) -> float:
        """Reference i's product-test distance to the references ``among`` (not i)."""
        theirs = [tokens[j] for j in among]
        mine = tokens[i]
        if mine is not None and all(t is not None for t in theirs):
            sim = mine @ torch.cat([t for t in theirs if t is not None]).T  # (N, len(among) * N), unit vectors
            return float(torch.quantile((1.0 - sim.max(dim=1).values).clamp_min(0), PATCH_QUANTILE))
        return inspect_arrays(detector, references[i][0], [references[j] for j in among],
                              registration=registration).patch_dist

    # The image statistics are read against the median of the whole set, the reference itself included: one bad
    # frame among three cannot move it (against the two others alone it would be their mean).
    everyone = range(k)

    def check(i: int, among: Sequence[int]) -> str | None:
        """Reference i against the references ``among`` (not i): the statistics against the median of them and i."""
        brightest = max(profiles[j].mean for j in among)  # the overexposure test: brighter than all *others*
        return check_image(profiles[i], [profiles[j] for j in (i, *among)], rules, distance(i, among), brightest)

    out = [check(i, [j for j in everyone if j != i]) for i in everyone]
    # A frame without contrast beside one with some is blank, however many blank frames the set holds (their
    # median would hide them); a set without contrast anywhere is a plain product, as the query's check holds.
    lit = [p.std >= 4 * rules.blank_std for p in profiles]
    for i in everyone:
        if profiles[i].std < rules.blank_std and any(lit[j] for j in everyone if j != i):
            out[i] = BLANK
    faulty = {i for i, r in enumerate(out) if r not in (None, NOT_PRODUCT)}
    if faulty:  # a blank, exposed or blurred frame spoils the product test of the others: again without it
        clean = [i for i in everyone if i not in faulty]
        for i in clean:
            rest = [j for j in clean if j != i]
            out[i] = check(i, rest) if rest else None
    return out


def reference_label(name: str) -> str:
    """How a note calls a reference: "the reference good.png", or "reference 2" where it has no file name."""
    return name if re.fullmatch(r"reference \d+", name) else f"the reference {name}"


def reference_notes(names: Sequence[str], reasons: Sequence[str | None]) -> list[str]:
    """The user's notes on the references (empty when every one passed)."""
    bad = [(n, r) for n, r in zip(names, reasons, strict=True) if r is not None]
    if len(names) == 2 and len(bad) == 2:  # each unlike the other: which one is wrong cannot be told
        return [f"{reference_label(names[0])} ({reasons[0]}) and {reference_label(names[1])} ({reasons[1]}) do not look like one "
                "product: verdicts compared with them cannot be trusted; use normal images of the product"]
    if len(names) == 1 and bad:
        return [f"{reference_label(names[0])} is a {bad[0][1]} (no contrast): every query is compared with an empty frame; "
                "use a normal image of the product"]
    return [f"{reference_label(n)} is unlike the other references ({r}): remove it, or verdicts compared with it may be wrong"
            for n, r in bad]
