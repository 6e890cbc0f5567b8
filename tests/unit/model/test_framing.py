"""References framed unlike the query: a wider view of the part is cut to the query's framing, a stretched one is
squeezed as it is (chosen by content, alike on both inspection paths and the language model's inputs), each
named in the notes; a framed input loads, keys, names and peeks as its centred box."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from adcopilot.imaging import FULL_SIZE, Framed, load_image, peek_jpeg_quality, peek_size
from adcopilot.inputs import cache_key, reference_names, source_name
from adcopilot.model.framing import ASPECT_TOLERANCE, aspect_gap, elongated, keep_for


def _view(seed: int = 0, w: int = 128, h: int = 96) -> np.ndarray:
    """A wide view with large structures (what registration and the layout correlation read)."""
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.random((h, w, 3)).astype(np.float32), (0, 0), 5)
    return (255 * (img - img.min()) / (img.max() - img.min())).astype(np.uint8)


def test_the_rules_of_the_framing():
    assert aspect_gap((100, 100), (100, 100)) == 1.0
    assert aspect_gap((128, 96), (96, 96)) == pytest.approx(aspect_gap((96, 96), (128, 96))) == pytest.approx(4 / 3)
    assert aspect_gap((62, 64), (64, 64)) < ASPECT_TOLERANCE <= aspect_gap((60, 64), (64, 64))
    assert keep_for((96, 96), (128, 96)) == (0.75, 1.0)  # a wider reference loses its sides
    assert keep_for((96, 96), (96, 128)) == (1.0, 0.75)  # a taller one its top and bottom
    assert keep_for((128, 96), (96, 96)) == pytest.approx((1.0, 0.75))  # a square one, for a wide query
    assert elongated((384, 64)) and elongated((64, 128)) and not elongated((127, 64))


def test_a_framed_input_is_its_centred_box(tmp_path):
    view = _view()
    path = tmp_path / "view.png"
    Image.fromarray(view).save(path)
    for src in (path, str(path), path.read_bytes(), view, Image.fromarray(view)):
        f = Framed(src, (0.75, 1.0))
        assert np.array_equal(np.asarray(load_image(f)), view[:, 16:112])
        assert peek_size(f) == (96, 96) and peek_size(src) == (128, 96)
    assert source_name(Framed(path, (0.75, 1.0)), "reference 1") == str(path)
    assert reference_names([Framed(view, (0.75, 1.0))]) == ["reference 1"]
    keys = {cache_key(path, 64), cache_key(Framed(path, (0.75, 1.0)), 64), cache_key(Framed(path, (1.0, 0.75)), 64)}
    assert len(keys) == 3 and cache_key(Framed(path, (0.75, 1.0)), 64).startswith(cache_key(path, 64))
    assert cache_key(Framed(Image.fromarray(view), (0.75, 1.0)), 64) is None  # never cached, as its source
    # A large JPEG: decoded at a reduced scale that still gives its box enough pixels, its quality peeked.
    big = tmp_path / "big.jpg"
    Image.fromarray(cv2.resize(view, (2048, 1536))).save(big, quality=50)
    framed = load_image(Framed(big, (0.75, 1.0)), draft=256)
    assert min(framed.size) >= 256 and framed.info[FULL_SIZE] == (1536, 1536)
    assert peek_jpeg_quality(Framed(big, (0.75, 1.0))) == 50 and peek_size(Framed(big, (0.75, 1.0))) == (1536, 1536)


def test_peek_size_reads_the_exif_orientation():
    img = Image.fromarray(_view())
    exif = Image.Exif()
    exif[0x0112] = 6  # turned a quarter: load_image gives it 96 x 128
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif)
    assert peek_size(buf.getvalue()) == load_image(buf.getvalue()).size == (96, 128)
    assert peek_size(b"not an image") is None


def test_a_wider_view_is_cut_and_a_stretched_one_squeezed_on_both_paths(nano_copilot, tmp_path):
    view = _view(3)
    query = view[:, 16:112].copy()  # 96 x 96: the centre of the view
    wide = tmp_path / "wide.png"
    Image.fromarray(view).save(wide)  # the same part with more around it
    stretched = tmp_path / "stretched.png"
    Image.fromarray(cv2.resize(query, (128, 96), interpolation=cv2.INTER_AREA)).save(stretched)  # resized, not cut
    cut = nano_copilot.inspect(query, [wide])
    assert cut.notes == [f"the reference {wide} is 128 x 96 where the query is 96 x 96: it was cut to the query's "
                         "framing (centred), which matched the query better than squeezing it; use references "
                         "framed as the queries are"]
    # It was compared as that box: the same score as the box given by hand, and the references keep their names.
    assert cut.score == pytest.approx(nano_copilot.inspect(query, [view[:, 16:112]]).score, abs=1e-6)
    assert cut.references == [str(wide)]
    squeezed = nano_copilot.inspect(query, [stretched])
    assert squeezed.notes == [f"the reference {stretched} is 128 x 96 where the query is 96 x 96: each is squeezed "
                              "into the model's square its own way, so the part looks stretched and good parts can be "
                              "flagged; use references framed as the queries are"]
    staged = nano_copilot.inspect_batch([(query, [wide]), (query, [stretched])])
    assert [r.notes for r in staged] == [cut.notes, squeezed.notes]
    assert [r.score for r in staged] == pytest.approx([cut.score, squeezed.score], abs=1e-5)
    # Same framing at another size, or 3 % off: nothing to choose.
    for ref in (cv2.resize(query, (192, 192)), query[:, 1:-2]):
        assert nano_copilot.inspect(query, [ref]).notes == []
    # Forgetting the reference drops its framed variant too.
    assert nano_copilot.forget_references([wide]) >= 1
    assert not any(k.startswith(cache_key(wide, 64)) for k in nano_copilot._cache)
