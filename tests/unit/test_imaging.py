"""Image input: every supported mode loads; every bad file gives a one-line error naming it."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from adcopilot.errors import ImageError
from adcopilot.imaging import grey_level, load_image, scale_box, to_float_array


@pytest.mark.parametrize("fmt,ext", [("PNG", "png"), ("JPEG", "jpg"), ("BMP", "bmp"), ("TIFF", "tif"), ("WEBP", "webp")])
def test_formats_load_as_rgb(tmp_path, texture, fmt, ext):
    p = tmp_path / f"a.{ext}"
    Image.fromarray(texture).save(p, format=fmt)
    img = load_image(p)
    assert img.mode == "RGB" and img.size == (128, 128)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "LA", "1"])
def test_modes(tmp_path, texture, mode):
    base = Image.fromarray(texture)
    if mode == "I;16":
        arr = (texture[:, :, 0].astype(np.uint16) * 257)
        img = Image.fromarray(arr)
    else:
        img = base.convert(mode)
    p = tmp_path / "m.png"
    img.save(p)
    out = load_image(p)
    assert out.mode == "RGB"
    a = np.asarray(out)
    assert a.std() > 0 or mode == "1"


def test_a_12bit_sensor_image_in_a_16bit_file_is_read_at_12_bits(tmp_path):
    arr = np.linspace(0, 4095, 64 * 64).reshape(64, 64).astype(np.uint16)  # a 12-bit sensor
    p = tmp_path / "s.png"
    Image.fromarray(arr).save(p)
    a = np.asarray(load_image(p))
    assert a.max() == 255 and a.min() == 0


def test_16bit_data_keeps_its_brightness_it_is_not_stretched(tmp_path, texture):
    grey = texture[:, :, 0]
    dark = (grey // 2 + 20).astype(np.uint16)  # a part darker than its reference, no pixel at 0 or 255
    for name, arr in (("ref", grey.astype(np.uint16) * 257), ("dark", dark * 257)):
        Image.fromarray(arr).save(tmp_path / f"{name}.png")
    assert np.array_equal(np.asarray(load_image(tmp_path / "ref.png"))[:, :, 0], grey)  # 257 * v reads back as v
    assert np.array_equal(np.asarray(load_image(tmp_path / "dark.png"))[:, :, 0], dark)  # as dark as it was


@pytest.mark.parametrize(("peak", "full"), [(256, 1023), (1023, 1023), (1024, 4095), (4095, 4095), (4096, 16383),
                                            (16384, 65535), (65535, 65535), (65536, 2**18 - 1)])
def test_sensor_full_scale_is_the_standard_depth_holding_the_peak(peak, full):
    arr = np.zeros((4, 4), np.int32)
    arr[0, 0] = peak
    assert np.asarray(load_image(arr))[0, 0, 0] == round(255 * peak / full)


def test_exif_orientation(tmp_path):
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = 255  # left half white
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 CW on display
    p = tmp_path / "o.jpg"
    img.save(p, exif=exif.tobytes())
    out = load_image(p)
    assert out.size == (20, 40)  # width and height swapped
    top = np.asarray(out)[:5].mean()
    assert top > 200  # the white half is now on top


def test_missing(tmp_path):
    with pytest.raises(ImageError, match=r"nope\.png: no such file"):
        load_image(tmp_path / "nope.png")


def test_empty(tmp_path):
    p = tmp_path / "e.png"
    p.write_bytes(b"")
    with pytest.raises(ImageError, match=r"e\.png: empty file"):
        load_image(p)


def test_not_an_image(tmp_path):
    p = tmp_path / "t.png"
    p.write_text("hello, I am text")
    with pytest.raises(ImageError, match=r"t\.png: not an image"):
        load_image(p)


def test_truncated(tmp_path, texture):
    p = tmp_path / "full.png"
    Image.fromarray(texture).save(p)
    data = p.read_bytes()
    q = tmp_path / "trunc.png"
    q.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=r"trunc\.png: (truncated|corrupt)"):
        load_image(q)


def test_truncated_jpeg(tmp_path, texture):
    p = tmp_path / "full.jpg"
    Image.fromarray(texture).save(p, quality=95)
    q = tmp_path / "trunc.jpg"
    q.write_bytes(p.read_bytes()[:300])
    with pytest.raises(ImageError, match=r"trunc\.jpg"):
        load_image(q)


def test_corrupt_header(tmp_path, texture):
    p = tmp_path / "c.png"
    Image.fromarray(texture).save(p)
    data = bytearray(p.read_bytes())
    data[20:60] = b"\x00" * 40  # wreck the IHDR chunk
    p.write_bytes(bytes(data))
    with pytest.raises(ImageError, match=r"c\.png"):
        load_image(p)


def test_directory(tmp_path):
    with pytest.raises(ImageError, match="is a directory"):
        load_image(tmp_path)


def test_pixel_cap(tmp_path):
    p = tmp_path / "big.png"
    Image.new("L", (300, 300)).save(p)
    with pytest.raises(ImageError, match=r"big\.png: image too large"):
        load_image(p, max_pixels=10_000)


def test_unsupported_format(tmp_path, texture):
    p = tmp_path / "a.gif"
    Image.fromarray(texture).save(p, format="GIF")
    with pytest.raises(ImageError, match="unsupported image format GIF"):
        load_image(p)


def test_message_is_one_line(tmp_path):
    p = tmp_path / "t.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(ImageError) as ei:
        load_image(p)
    assert "\n" not in str(ei.value)


def test_arrays_and_bytes(texture, tmp_path):
    assert load_image(texture).size == (128, 128)
    assert load_image(texture[:, :, 0]).mode == "RGB"
    assert load_image(texture.astype(np.float32) / 255.0).size == (128, 128)
    with pytest.raises(ImageError, match="not an image"):
        load_image(np.zeros((4, 4, 7)))
    p = tmp_path / "b.png"
    Image.fromarray(texture).save(p)
    assert load_image(p.read_bytes()).size == (128, 128)
    with pytest.raises(ImageError, match="empty image data"):
        load_image(b"")


def test_to_float_array_and_scale_box(texture):
    a = to_float_array(load_image(texture), 64)
    assert a.shape == (64, 64, 3) and a.dtype == np.float32 and a.min() >= 0 and a.max() <= 1
    assert scale_box([10, 10, 20, 20], (100, 100), (200, 50)) == [20, 5, 40, 10]
    assert scale_box([0, 0, 100, 100], (100, 100), (10, 10)) == [0, 0, 10, 10]


def test_grey_level_is_the_channel_mean_bit_for_bit(texture):
    rng = np.random.default_rng(0)
    images = [
        to_float_array(load_image(texture), 96),  # float32 as the pipeline makes them
        rng.random((33, 17, 3), dtype=np.float32) * 1e3,  # large values: the order of the sum shows
        rng.normal(size=(8, 9, 3)),  # float64, negative values
        texture,  # uint8: through mean's float64 sum
    ]
    for image in images:
        got, want = grey_level(image), image.mean(axis=2)
        assert got.dtype == want.dtype and np.array_equal(got, want)


def test_float_tiff_in_unit_range_is_scaled_like_a_float_array(tmp_path, texture):
    """A float TIFF with values in [0, 1] (the usual float convention) is the picture, not a black frame,
    and reads exactly as the same values handed over as an array."""
    grey = texture[:, :, 0].astype(np.float32) / 255.0
    p = tmp_path / "f.tif"
    Image.fromarray(grey, mode="F").save(p)
    from_file = np.asarray(load_image(p))
    assert from_file.std() > 10
    assert np.array_equal(from_file, np.asarray(load_image(grey)))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_pixels_are_refused(tmp_path, bad):
    grey = np.full((16, 16), 0.5, np.float32)
    grey[3, 4] = bad
    p = tmp_path / "nan.tif"
    Image.fromarray(grey, mode="F").save(p)
    with pytest.raises(ImageError, match=r"nan\.tif: image has NaN or infinite pixel values"):
        load_image(p)
    with pytest.raises(ImageError, match=r"NaN or infinite"):
        load_image(grey)


def test_wide_integer_arrays_are_read_like_files(tmp_path):
    arr = np.linspace(1000, 5000, 64 * 64).reshape(64, 64).astype(np.uint16)
    p = tmp_path / "w.png"
    Image.fromarray(arr).save(p)
    a = np.asarray(load_image(arr))
    assert a.min() == round(1000 * 255 / 16383) and a.max() == round(5000 * 255 / 16383)  # 14-bit full scale
    assert np.array_equal(a, np.asarray(load_image(p)))


def test_negative_or_wide_float_data_is_stretched_by_its_range():
    assert np.asarray(load_image(np.linspace(-5, 5, 64).reshape(8, 8).astype(np.int32))).min() == 0
    wide = np.asarray(load_image(np.linspace(0, 1000, 64).reshape(8, 8).astype(np.float32)))
    assert wide.min() == 0 and wide.max() == 255


def test_pgm_files_from_opencv_are_read_8_and_16_bit(tmp_path, texture):
    grey = texture[:, :, 0]
    cv2.imwrite(str(tmp_path / "g8.pgm"), grey)  # Netpbm as machine-vision tools write it
    cv2.imwrite(str(tmp_path / "g16.pgm"), grey.astype(np.uint16) * 257)
    cv2.imwrite(str(tmp_path / "c.ppm"), texture)
    assert np.array_equal(np.asarray(load_image(tmp_path / "g8.pgm"))[:, :, 0], grey)
    assert np.array_equal(np.asarray(load_image(tmp_path / "g16.pgm"))[:, :, 0], grey)
    assert np.asarray(load_image(tmp_path / "c.ppm")).shape == texture.shape


def test_an_unsupported_format_names_the_ones_read(tmp_path, texture):
    Image.fromarray(texture).save(tmp_path / "a.gif")
    with pytest.raises(ImageError, match=r"a\.gif: unsupported image format GIF; use PNG, JPEG, BMP, TIFF, WebP or PGM / PPM"):
        load_image(tmp_path / "a.gif")


def _large_scene(w: int, h: int) -> np.ndarray:
    rng = np.random.default_rng(3)
    img = cv2.resize(rng.random((h // 40, w // 40, 3)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def test_a_large_jpeg_is_decoded_at_a_reduced_scale_when_only_a_small_size_is_needed(tmp_path):
    from adcopilot.imaging import FULL_SIZE, full_size

    path = tmp_path / "frame.jpg"
    Image.fromarray(_large_scene(2000, 1200)).save(path, quality=95)
    full = load_image(path)
    small = load_image(path, draft=512)
    assert full.size == full_size(full) == (2000, 1200) and FULL_SIZE not in full.info
    assert small.size == (1000, 600) and full_size(small) == (2000, 1200)  # 1/4 would leave 300 < 512 rows
    # What the model sees is the same picture, to JPEG's and resampling's rounding.
    assert np.abs(to_float_array(small, 256) - to_float_array(full, 256)).mean() < 0.01
    png = tmp_path / "frame.png"
    Image.fromarray(_large_scene(2000, 1200)).save(png)
    assert load_image(png, draft=512).size == (2000, 1200)  # only JPEG has reduced scales


def test_a_reduced_jpeg_with_an_exif_quarter_turn_reports_the_turned_size(tmp_path):
    from adcopilot.imaging import full_size

    img = Image.fromarray(_large_scene(2000, 1200))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "turned.jpg"
    img.save(path, quality=95, exif=exif)
    small = load_image(path, draft=512)
    assert small.size == (600, 1000) and full_size(small) == (1200, 2000) == load_image(path).size


def test_an_inspection_of_a_reduced_jpeg_is_in_the_files_pixels(tmp_path, nano_copilot):
    q, r = tmp_path / "q.jpg", tmp_path / "r.jpg"
    scene = _large_scene(2400, 1600)
    Image.fromarray(scene).save(r, quality=95)
    scene[600:800, 1000:1300] = 255
    Image.fromarray(scene).save(q, quality=95)
    res = nano_copilot.inspect(q, [r])
    assert res.image_size == (2400, 1600) and res.anomaly_map.shape == (1600, 2400)
    staged = nano_copilot.inspect_batch([(q, [r])])[0]  # the service's path
    assert staged.image_size == (2400, 1600) and staged.score == pytest.approx(res.score, abs=1e-5)
