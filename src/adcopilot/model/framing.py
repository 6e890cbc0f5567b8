"""References framed unlike the query: compared squeezed as they are, or cut to the query's framing first.

Every image is resized to the model's square, so a reference whose aspect ratio differs from the query's shows
the part stretched against it, and good parts get flagged. Two readings of such a reference: it was resized to
another aspect ratio (the whole view, stretched: squeezing it as any image undoes that), or it is another crop
of the same view (cut its excess side, centred, to the query's aspect ratio: what is left differs from the
query by a scale the registration can take). The content tells them apart: the query, registered onto each
candidate as the inspection registers it, correlates better with the right one. A wider view cut down came
back to the as-stored false alarms; a stretched one stays squeezed (``benchmarks/RESULTS.md``, "References
framed unlike the query"). Elongated references (``ELONGATED``) are left as they are: their own note names them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from adcopilot.imaging import Framed, ImageInput
from adcopilot.model.reference_check import reference_label
from adcopilot.registration import grey_correlation, onto_reference, register

#: From this ratio of its sides on, an image squeezed into the model's square loses detail along its long side
#: (a strip of six cells, 6:1, lost most of its defects: ``benchmarks/RESULTS.md``, "Elongated images").
ELONGATED = 2.0
#: From this ratio of a query's and a reference's aspect ratios on, the two are squeezed unlike each other (a
#: photo reference cut to 90 % of its width: 28 -> 39 % false alarms): the reference's framing is chosen and said.
ASPECT_TOLERANCE = 1.05


def elongated(size: tuple[int, int]) -> bool:
    """Whether a (w, h) image is at least ``ELONGATED`` times as long as it is wide (either way)."""
    return max(size) >= ELONGATED * max(1, min(size))


def aspect_gap(a: tuple[int, int], b: tuple[int, int]) -> float:
    """How far apart two (w, h) sizes' aspect ratios are, as a ratio >= 1."""
    r = (a[0] / max(1, a[1])) / (max(1, b[0]) / max(1, b[1]))
    return max(r, 1.0 / r) if r > 0 else float("inf")


def keep_for(query: tuple[int, int], reference: tuple[int, int]) -> tuple[float, float]:
    """The share of the reference's (width, height) that a centred box of the query's aspect ratio keeps."""
    aq, ar = query[0] / query[1], reference[0] / reference[1]
    return (aq / ar, 1.0) if ar > aq else (1.0, ar / aq)


def fit(query: np.ndarray, reference: np.ndarray, registration: bool) -> float:
    """How well the (S, S, 3) query, registered onto the reference as the inspection does, matches its layout."""
    if registration:
        reg = register(query, reference)
        if reg.method != "identity":
            query = onto_reference(query, reference, reg.matrix)
    return grey_correlation(query, reference)


def frame_references(
    query: np.ndarray,
    query_size: tuple[int, int],
    references: Sequence[ImageInput],
    names: Sequence[str],
    size_of: Callable[[ImageInput], tuple[int, int] | None],
    array_of: Callable[[ImageInput, str], np.ndarray],
    registration: bool = True,
) -> tuple[list[ImageInput], list[str]]:
    """The references as they are to be compared with the (S, S, 3) ``query`` of (w, h) ``query_size``: each one
    framed unlike it either as it is or :class:`Framed` to the query's aspect ratio, whichever the query fits
    better; and a note on each. ``size_of``: a reference's stored (w, h) (None: unknown, left as it is);
    ``array_of(reference, name)``: its (S, S, 3) array as compared. Deterministic: both inspection paths and the
    language model's inputs choose alike."""
    if elongated(query_size):
        return list(references), []  # the query's own note says to inspect it in square parts
    framed: list[ImageInput] = []
    notes: list[str] = []
    for src, name in zip(references, names, strict=True):
        stored = size_of(src)
        if stored is None or min(stored) < 1 or elongated(stored) or aspect_gap(query_size, stored) < ASPECT_TOLERANCE:
            framed.append(src)
            continue
        cut = Framed(src, keep_for(query_size, stored))
        shape = f"{reference_label(name)} is {stored[0]} x {stored[1]} where the query is {query_size[0]} x {query_size[1]}"
        if fit(query, array_of(cut, name), registration) > fit(query, array_of(src, name), registration):
            framed.append(cut)
            notes.append(f"{shape}: it was cut to the query's framing (centred), which matched the query better than "
                         "squeezing it; use references framed as the queries are")
        else:
            framed.append(src)
            notes.append(f"{shape}: each is squeezed into the model's square its own way, so the part looks "
                         "stretched and good parts can be flagged; use references framed as the queries are")
    return framed, notes
