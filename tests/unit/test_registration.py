"""Registration recovers a known shift and rotation, and falls back to identity when it cannot help."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from adcopilot.registration import onto_reference, phase_shift, register, warp


def _structured(rng) -> np.ndarray:
    img = np.zeros((256, 256, 3), np.float32)
    for _ in range(25):
        x, y = rng.integers(30, 226, 2)
        r = int(rng.integers(5, 20))
        cv2.circle(img, (int(x), int(y)), r, tuple(float(v) for v in rng.random(3)), -1)
    return cv2.GaussianBlur(img, (0, 0), 1.0)


def test_recovers_shift_and_rotation(rng):
    ref = _structured(rng)
    m = cv2.getRotationMatrix2D((128, 128), 4.0, 1.0)
    m[:, 2] += (6, -5)
    query = cv2.warpAffine(ref, m, (256, 256), borderMode=cv2.BORDER_REPLICATE)
    reg = register(query, ref)
    assert reg.method in ("ecc", "phase")
    aligned = warp(query, reg.matrix)
    inner = (slice(40, 216), slice(40, 216))
    err_before = np.abs(query[inner] - ref[inner]).mean()
    err_after = np.abs(aligned[inner] - ref[inner]).mean()
    assert err_after < 0.3 * err_before


def test_identity_for_identical_images(rng):
    ref = _structured(rng)
    reg = register(ref, ref)
    assert np.allclose(reg.matrix, np.eye(2, 3), atol=0.05)


def test_fallback_on_unrelated_images(rng):
    a = _structured(rng)
    b = rng.random((256, 256, 3)).astype(np.float32)
    reg = register(a, b)
    # Either identity, or a bounded transform; never a wild jump.
    assert abs(reg.matrix[0, 2]) < 64 and abs(reg.matrix[1, 2]) < 64


def test_recovers_a_camera_at_a_slightly_different_distance(rng):
    # The query seen 6 % closer (scaled about the centre) and turned 3 degrees: a similarity transform.
    ref = _structured(rng)
    m = cv2.getRotationMatrix2D((128, 128), 3.0, 1.06)
    query = cv2.warpAffine(ref, m, (256, 256), borderMode=cv2.BORDER_REPLICATE)
    reg = register(query, ref)
    assert reg.method == "ecc"
    # query -> reference undoes the scale: the linear part is a rotation scaled by 1 / 1.06
    lin = reg.matrix[:, :2].astype(np.float64)
    assert np.sqrt(abs(np.linalg.det(lin))) == pytest.approx(1 / 1.06, abs=0.01)
    assert lin[0, 0] == pytest.approx(lin[1, 1], abs=1e-6) and lin[0, 1] == pytest.approx(-lin[1, 0], abs=1e-6)
    aligned = warp(query, reg.matrix)
    inner = (slice(40, 216), slice(40, 216))
    err_before = np.abs(query[inner] - ref[inner]).mean()
    err_after = np.abs(aligned[inner] - ref[inner]).mean()
    assert err_after < 0.3 * err_before



def test_the_similarity_must_beat_the_rigid_fit_by_the_margin(rng):
    """With an unreachable margin the rigid fit is kept (scale 1); the default keeps the scale it finds."""
    ref = _structured(rng)
    query = cv2.warpAffine(ref, cv2.getRotationMatrix2D((128, 128), 3.0, 1.06), (256, 256),
                           borderMode=cv2.BORDER_REPLICATE)
    scale = {m: float(np.sqrt(abs(np.linalg.det(register(query, ref, similarity_margin=m).matrix[:, :2]))))
             for m in (0.0, float("inf"))}
    assert scale[0.0] == pytest.approx(1 / 1.06, abs=0.01)
    assert scale[float("inf")] == pytest.approx(1.0, abs=1e-4)

@pytest.mark.parametrize("factor", [1.3, 1.4, 1.6])
def test_a_large_scale_change_is_not_taken_for_a_pose(factor):
    # Beyond the small scale a line's camera allows (1.25), registration keeps the identity. At 1.3x
    # and 1.4x the fit itself finds the scale (about 1 / 0.78 and 1 / 0.73), so only the bound refuses it.
    rng = np.random.default_rng(1)
    ref = _structured(rng)
    m = cv2.getRotationMatrix2D((128, 128), 0.0, factor)
    query = cv2.warpAffine(ref, m, (256, 256), borderMode=cv2.BORDER_REPLICATE)
    reg = register(query, ref)
    lin = reg.matrix[:, :2].astype(np.float64)
    assert 0.8 <= np.sqrt(abs(np.linalg.det(lin))) <= 1.25


def test_phase_correlation_leaves_its_inputs_as_they_were(rng):
    a, b = rng.random((64, 64)).astype(np.float32), rng.random((64, 64)).astype(np.float32)
    a0, b0 = a.copy(), b.copy()
    phase_shift(a, b, cv2.createHanningWindow((64, 64), cv2.CV_32F))
    assert np.array_equal(a, a0) and np.array_equal(b, b0)  # OpenCV 5.0 windows them in place


def test_the_border_a_moved_part_leaves_is_filled_from_the_reference(rng):
    """A good part shifted by 12 px: warped back into the reference's frame, the strip it does not cover
    is the reference's own (alike: nothing there to flag), not the query's edge repeated (a smeared strip
    the comparison took for a defect on every moved good part); the covered part is the warped query."""
    ref = cv2.GaussianBlur(rng.random((256, 256, 3), dtype=np.float32), (0, 0), 2.0)  # a surface to the edges
    m = np.float32([[1, 0, 12], [0, 1, 0]])  # the camera saw the part 12 px to the right
    query = cv2.warpAffine(ref, m, (256, 256), borderMode=cv2.BORDER_REPLICATE)
    back = np.float32([[1, 0, -12], [0, 1, 0]])  # query -> reference
    out = onto_reference(query, ref, back)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert np.abs(out[:, 245:] - ref[:, 245:]).max() < 1e-6  # not seen by the camera: the reference's
    assert np.abs(out[:, :243] - warp(query, back)[:, :243]).max() < 1e-6  # seen: the query's
    assert np.abs(warp(query, back)[:, 245:] - ref[:, 245:]).mean() > 0.01  # the repeated edge is not alike
    assert np.array_equal(onto_reference(query, ref, np.eye(2, 3, dtype=np.float32)), query)  # nothing left out


def test_reported_correlations_are_measured_alike(rng):
    """Both reported correlations are of the images as they are: a recovered shift correlates well after the fit,
    and noise against a product does not, however the fit went (windowed, any two bright images correlate near 1)."""
    ref = _structured(rng) * 0.6 + 0.3
    m = np.float32([[1, 0, 7], [0, 1, -6]])
    reg = register(cv2.warpAffine(ref, m, (256, 256), borderMode=cv2.BORDER_REPLICATE), ref)
    assert reg.method != "identity"
    assert reg.correlation_after > 0.95 > reg.correlation_before
    noise = cv2.resize(rng.random((24, 24, 3)).astype(np.float32), (256, 256)) * 0.4 + 0.5
    reg = register(noise, ref)
    assert abs(reg.correlation_before) < 0.3 and abs(reg.correlation_after) < 0.3


def test_a_fit_that_does_not_beat_the_unaligned_images_windowed_is_not_kept(rng):
    """Two different surfaces of one kind (smooth random grain, as two solar cells) need no alignment. The guard
    compares like with like, the fit and the unaligned images both windowed; measured against the unaligned images
    as they are, the window's envelope alone let every such fit pass. A shifted part is still aligned."""
    grain = np.random.default_rng(0)
    for _ in range(5):
        a, b = (cv2.GaussianBlur(grain.random((256, 256, 3)).astype(np.float32), (0, 0), 6) * 0.5 + 0.4 for _ in "ab")
        assert register(a, b).method == "identity"
    ref = _structured(rng) * 0.6 + 0.3
    moved = cv2.warpAffine(ref, np.float32([[1, 0, 5], [0, 1, 4]]), (256, 256), borderMode=cv2.BORDER_REPLICATE)
    assert register(moved, ref).method == "ecc"
