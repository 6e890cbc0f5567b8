"""Registration of the query onto the reference (rotation, translation, small scale).

Parts on a line are rarely placed exactly alike; comparing patch features of misaligned images
turns pose into false defects, and a camera at a slightly different distance changes the scale.
We estimate a similarity transform query -> reference (rotation, uniform scale, translation):
OpenCV's ECC maximisation (Evangelidis & Psarakis 2008) on smoothed grey images at low resolution,
initialised by phase correlation: a rigid fit, then an affine one started from it and projected onto
the nearest similarity (ECC has no similarity model; the projection drops shear and unequal scales,
which a rigid part under a camera does not produce); the better correlating of the two wins. Fallback: if ECC fails to converge, the scale leaves
[1 / MAX_SCALE, MAX_SCALE], or the aligned images correlate less than the unaligned ones, the
identity is used, and the result says so. ECC and the guards' correlations work on the grey images
multiplied by a Hanning window (centre-weighted; see ``ECC_WINDOWED``), the unaligned images' too
(``GUARD_LIKE_FOR_LIKE``). The two correlations the result reports are both of the images as they are, so
they compare: the window's shared envelope alone lifts any two bright images' correlation near 1 (random
noise against a solar cell: 0.98 windowed).

Usage::

    reg = register(query_rgb, ref_rgb)     # (H, W, 3) float arrays of the same size
    aligned = onto_reference(query_rgb, ref_rgb, reg.matrix)  # query in the reference's frame
    back = warp(map_in_ref_frame, reg.inverse)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from adcopilot.imaging import grey_level

WORK_SIZE = 128
MAX_SCALE = 1.25  # a larger scale change is a different set-up, not a pose to correct
SIMILARITY_MARGIN = 0.0  # correlation the similarity fit must gain over the rigid one to be kept
# ECC on Hann-windowed images. Until 2026-12-06 this came about unseen: OpenCV 5.0's ``phaseCorrelate``
# multiplies its inputs by its window in place, and ECC ran on them after it. Measured against ECC on the
# images as they are (benchmarks/bench_rotation.py): the same rankings within the noise on ELPV cells,
# photos and placed parts, and 2.4x faster on ELPV cells; so it is kept, now on purpose and on copies.
ECC_WINDOWED = True
# The guard "better than unaligned" compares the fit's windowed correlation with the unaligned images' measured
# windowed too, like for like. Until 2026-12-07 it compared with the unaligned images as they are (False), and the
# window's envelope let nearly every fit pass: 398 of 400 pairs of different ELPV cells, which need no alignment,
# were warped (173 now; rankings level or a little better, benchmarks/RESULTS.md).
GUARD_LIKE_FOR_LIKE = True


@dataclass
class Registration:
    matrix: np.ndarray = field(default_factory=lambda: np.eye(2, 3, dtype=np.float32))  # query -> ref
    method: str = "identity"
    correlation_before: float = 0.0
    correlation_after: float = 0.0

    @property
    def inverse(self) -> np.ndarray:
        return cv2.invertAffineTransform(self.matrix).astype(np.float32)

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "matrix": [[round(float(v), 5) for v in row] for row in self.matrix],
            "correlation_before": round(self.correlation_before, 4),
            "correlation_after": round(self.correlation_after, 4),
        }


def _gray(img: np.ndarray, size: int) -> np.ndarray:
    g = grey_level(img) if img.ndim == 3 else img
    g = cv2.resize(g.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
    return cv2.GaussianBlur(g, (0, 0), 1.5)


def _ncc(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    if mask is not None:
        a, b = a[mask], b[mask]
    a = a - a.mean()
    b = b - b.mean()
    d = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / d) if d > 1e-9 else 0.0


def grey_correlation(a: np.ndarray, b: np.ndarray, size: int = 64) -> float:
    """Correlation of two images' smoothed grey levels at ``size`` x ``size`` (how alike their layouts are)."""
    return _ncc(_gray(a, size), _gray(b, size))


def nearest_similarity(m: np.ndarray) -> np.ndarray:
    """The similarity [[a, -b, tx], [b, a, ty]] closest (Frobenius) to the 2x3 affine ``m``."""
    a = (m[0, 0] + m[1, 1]) / 2.0
    b = (m[1, 0] - m[0, 1]) / 2.0
    return np.array([[a, -b, m[0, 2]], [b, a, m[1, 2]]], dtype=np.float32)


def similarity_scale(m: np.ndarray) -> float:
    """The uniform scale of a similarity's linear part."""
    return float(np.hypot(m[0, 0], m[1, 0]))


def warp(img: np.ndarray, matrix: np.ndarray, border: str = "replicate") -> np.ndarray:
    """Apply a 2x3 matrix (in the image's own pixel units) to an (H, W[, C]) array."""
    h, w = img.shape[:2]
    mode = cv2.BORDER_REPLICATE if border == "replicate" else cv2.BORDER_CONSTANT
    return cv2.warpAffine(img, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=mode)


def onto_reference(query: np.ndarray, reference: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """The (H, W, C) float ``query`` warped by ``matrix`` into the frame of ``reference`` (same shape), with the
    reference's own pixels where the warp leaves the query's frame. A shifted or turned part leaves a border
    the camera did not see; filled by repeating the query's edge (``warp``), it is a smeared strip the
    comparison flags as a defect on every good part that moved; filled from the reference, it is alike."""
    h, w = query.shape[:2]
    moved = warp(query, matrix)
    cover = cv2.warpAffine(np.ones((h, w), np.float32), matrix, (w, h), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)  # (H, W) 1 where the query reaches
    if cover.min() >= 1.0:
        return moved
    cover = cover[..., None] if moved.ndim == 3 else cover
    return (moved * cover + reference * (1.0 - cover)).astype(moved.dtype, copy=False)


def phase_shift(a: np.ndarray, b: np.ndarray, window: np.ndarray) -> tuple[float, float]:
    """The shift of ``b`` against ``a`` by windowed phase correlation; (0, 0) where OpenCV cannot tell.
    On copies: OpenCV 5.0 multiplies the inputs by the window in place."""
    try:
        (dx, dy), _ = cv2.phaseCorrelate(a.copy(), b.copy(), window)
    except cv2.error:
        return 0.0, 0.0
    return float(dx), float(dy)


def _aligned_correlation(q: np.ndarray, r: np.ndarray, q_to_r: np.ndarray) -> float:
    """Correlation of ``r`` with ``q`` warped by ``q_to_r`` (both (WORK_SIZE, WORK_SIZE)), where the warp keeps the query."""
    aligned = cv2.warpAffine(q, q_to_r, (WORK_SIZE, WORK_SIZE), borderMode=cv2.BORDER_REPLICATE)
    valid = cv2.warpAffine(np.ones_like(q), q_to_r, (WORK_SIZE, WORK_SIZE)) > 0.99
    return _ncc(aligned, r, valid if valid.sum() > 100 else None)


def register(query: np.ndarray, reference: np.ndarray, max_iter: int = 60,
             similarity_margin: float | None = None) -> Registration:
    """Similarity transform mapping the query onto the reference (both (H, W, 3), same size)."""
    similarity_margin = SIMILARITY_MARGIN if similarity_margin is None else similarity_margin
    h, w = query.shape[:2]
    q = plain_q = _gray(query, WORK_SIZE)
    r = plain_r = _gray(reference, WORK_SIZE)
    before = _ncc(q, r)
    init = np.eye(2, 3, dtype=np.float32)
    hann = cv2.createHanningWindow((WORK_SIZE, WORK_SIZE), cv2.CV_32F)
    init[0, 2], init[1, 2] = phase_shift(r, q, hann)
    if ECC_WINDOWED:
        q, r = q * hann, r * hann
    floor = _ncc(q, r) if GUARD_LIKE_FOR_LIKE else before  # what the fit must beat
    # Two ECC fits, kept only if they help: a rigid (Euclidean) one, which converges reliably, and an
    # affine one started from it and projected onto the nearest similarity (the scale). The best
    # correlating candidate that passes the guards wins.
    candidates: list[tuple[str, np.ndarray]] = []
    start = init
    # The affine fit starts from the converged rigid one: a few iterations refine the scale.
    for motion, iters in ((cv2.MOTION_EUCLIDEAN, max_iter), (cv2.MOTION_AFFINE, max(1, max_iter // 4))):
        criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, iters, 1e-5)
        try:
            # findTransformECC finds W with template(x) ~ input(W x): template = reference, input = query,
            # so W maps reference pixels to query pixels; we keep its inverse (query -> reference).
            _, m = cv2.findTransformECC(r, q, start.copy(), motion, criteria, None, 5)
        except cv2.error:
            continue
        candidates.append(("ecc", nearest_similarity(m)))
        start = m.astype(np.float32)
    if not candidates:
        candidates = [("phase", init)]
    best: tuple[float, str, np.ndarray] | None = None
    for method, ref_to_query in candidates:
        q_to_r = cv2.invertAffineTransform(ref_to_query)
        after = _aligned_correlation(q, r, q_to_r)
        # Guard: keep the identity when alignment does not help, moves absurdly far or rescales too much.
        shift = float(np.hypot(q_to_r[0, 2], q_to_r[1, 2])) / WORK_SIZE
        scale_ok = 1.0 / MAX_SCALE <= similarity_scale(q_to_r) <= MAX_SCALE
        # The similarity (the second candidate) must beat the rigid fit by ``similarity_margin``.
        needed = floor + 1e-3 if best is None else best[0] + similarity_margin
        if after > needed and shift <= 0.25 and scale_ok:
            best = (after, method, q_to_r)
    if best is None:
        return Registration(method="identity", correlation_before=before, correlation_after=before)
    _, method, q_to_r = best
    after = _aligned_correlation(plain_q, plain_r, q_to_r)  # reported on the images as they are, as ``before``
    # Rescale the translation from the working size to the image size (rotation and scale are unchanged).
    scale = np.array([[1, 1, w / WORK_SIZE], [1, 1, h / WORK_SIZE]], dtype=np.float32)
    if w != h:
        # Non-square images: conjugate with the anisotropic scaling.
        s = np.diag([w / WORK_SIZE, h / WORK_SIZE, 1.0]).astype(np.float32)
        m3 = np.vstack([q_to_r, [0, 0, 1]]).astype(np.float32)
        full = (s @ m3 @ np.linalg.inv(s))[:2]
    else:
        full = q_to_r * scale
    return Registration(
        matrix=full.astype(np.float32), method=method, correlation_before=before, correlation_after=after
    )
