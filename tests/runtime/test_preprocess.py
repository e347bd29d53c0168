"""Preprocessing: golden parity with the official code in every mode, tiling rules, loading and its errors."""
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from dsocr.runtime.errors import ImageError, InputError
from dsocr.runtime.modes import get_mode, mode_names

V1_MODES = mode_names("ocr1")  # the tiny fixture is OCR-1
from dsocr.runtime.preprocess import (
    Views, find_tile_grid, image_from_rgb, load_image, preprocess, tile_candidates, to_chw,
)

TOL = 1e-5


@pytest.fixture(scope="module")
def golden(fixture_dir):
    return dict(np.load(fixture_dir / "golden.npz"))


@pytest.fixture(scope="module")
def page(fixture_dir):
    return load_image(fixture_dir / "page.png")


def _png(image: Image.Image, **save) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", **save)
    return buf.getvalue()


@pytest.mark.parametrize("mode", V1_MODES)
def test_golden_views(golden, page, mode):
    views = preprocess(page, mode)
    s = get_mode(mode).base_size
    assert views.global_view.shape == (1, 3, s, s) and views.global_view.dtype == np.float32
    np.testing.assert_allclose(views.global_view[:, :, ::8, ::8], golden[f"{mode}.global_view"], rtol=0, atol=TOL)
    np.testing.assert_array_equal(np.array([views.crop]), golden[f"{mode}.images_spatial_crop"])
    if f"{mode}.local_views" in golden:
        assert views.tiles.shape == (views.crop[0] * views.crop[1], 3, 640, 640)
        np.testing.assert_allclose(views.tiles[:, :, ::8, ::8], golden[f"{mode}.local_views"], rtol=0, atol=TOL)
    else:
        assert views.tiles.shape == (0, 3, 640, 640) and views.crop == (1, 1)


def test_golden_token_count_matches_mode(golden, page):
    for mode in V1_MODES:
        views = preprocess(page, mode)
        assert get_mode(mode).n_image_tokens(*views.crop) == int(golden[f"{mode}.images_seq_mask"].sum())


def test_candidate_order_is_the_official_one():
    assert tile_candidates(2, 9) == [
        (1, 2), (2, 1), (3, 1), (1, 3), (2, 2), (4, 1), (1, 4), (5, 1), (1, 5), (1, 6), (6, 1), (3, 2), (2, 3),
        (7, 1), (1, 7), (4, 2), (2, 4), (1, 8), (8, 1), (1, 9), (3, 3), (9, 1)]
    assert tile_candidates(2, 6) == [
        (1, 2), (2, 1), (3, 1), (1, 3), (4, 1), (1, 4), (2, 2), (1, 5), (5, 1), (6, 1), (2, 3), (1, 6), (3, 2)]


@pytest.mark.parametrize("size, max_tiles, grid", [
    ((1000, 1000), 9, (2, 2)),  # tie with (3,3): area 1e6 <= 0.5*640²*9, so the first stays
    ((1500, 1500), 9, (3, 3)),  # area 2.25e6 > 1.84e6: the later (3,3) wins the tie
    ((1500, 1500), 6, (2, 2)),
    ((640, 640), 9, (1, 1)),
    ((300, 600), 9, (1, 1)),
    ((641, 100), 9, (6, 1)),
    ((900, 1300), 9, (2, 3)),  # the fixture page (portrait)
    ((1300, 900), 9, (3, 2)),
    ((1191, 1684), 6, (2, 3)),  # A4 at 144 dpi
])
def test_tile_grid(size, max_tiles, grid):
    assert find_tile_grid(*size, max_tiles=max_tiles) == grid


def test_tile_grid_validates_bounds():
    with pytest.raises(InputError, match="max_tiles"):
        find_tile_grid(1000, 1000, max_tiles=1)
    with pytest.raises(InputError, match="min_tiles"):
        find_tile_grid(1000, 1000, min_tiles=3, max_tiles=2)
    with pytest.raises(InputError):
        preprocess(Image.new("RGB", (50, 50)), "gundam", max_tiles=0)


def test_tiles_are_row_major():
    # left half red, right half blue, top third light, rest dark: tile t sits at column t%2, row t//2
    px = np.zeros((1920, 1280, 3), np.uint8)
    px[:, :640, 0], px[:, 640:, 2], px[:640, :, 1] = 200, 200, 255
    views = preprocess(Image.fromarray(px), "gundam")
    assert views.crop == (2, 3) and views.n_tiles == 6
    means = views.tiles.mean(axis=(2, 3))  # [n, 3]
    assert all(means[t, 0] > 0 for t in (0, 2, 4)) and all(means[t, 2] > 0 for t in (1, 3, 5))
    assert means[0, 1] > 0 and means[1, 1] > 0 and (means[2:, 1] < 0).all()


def test_small_gundam_page_has_no_tiles():
    views = preprocess(Image.new("RGB", (600, 400), (10, 20, 30)), "gundam")
    assert views.crop == (1, 1) and views.tiles.shape == (0, 3, 640, 640)
    assert views.global_view.shape == (1, 3, 1024, 1024)


def test_pad_fill_and_centering():
    views = preprocess(Image.new("RGB", (200, 100), (255, 255, 255)), "base")
    g = views.global_view[0]
    fill = (127 / 255 - 0.5) / 0.5
    assert np.allclose(g[:, 0, :], fill) and np.allclose(g[:, -1, :], fill)  # top/bottom bands
    assert np.allclose(g[:, 512, :], 1.0)  # the page fills the full width in the middle row
    assert np.allclose(g[:, 256:768, :], 1.0)  # 1024 x 512 centred at y = 256


def test_normalisation_range():
    x = to_chw(Image.fromarray(np.array([[[0, 255, 51]]], np.uint8)))
    np.testing.assert_allclose(x[:, 0, 0], [-1.0, 1.0, 51 / 127.5 - 1], atol=1e-7)
    assert x.dtype == np.float32 and x.shape == (3, 1, 1)


def test_views_accept_bytes_and_mode_objects(fixture_dir):
    data = (fixture_dir / "page.png").read_bytes()
    a = preprocess(data, get_mode("tiny"))
    b = preprocess(load_image(fixture_dir / "page.png"), "tiny")
    assert isinstance(a, Views)
    np.testing.assert_array_equal(a.global_view, b.global_view)


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 20, 20))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif.tobytes(), quality=95)
    out = load_image(buf.getvalue())
    assert out.size == (20, 40)
    r, g, b = out.getpixel((10, 5))  # the left (blue) half is now on top
    assert b > 200 and r < 60


def test_rgba_and_palette_become_rgb():
    rgba = Image.new("RGBA", (8, 8), (10, 20, 30, 0))
    out = load_image(_png(rgba))
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (10, 20, 30)  # alpha dropped, not composited
    assert load_image(rgba.convert("P")).mode == "RGB"
    assert load_image(Image.new("L", (4, 4), 7)).getpixel((1, 1)) == (7, 7, 7)


def test_load_from_path(tmp_path):
    p = tmp_path / "x.png"
    p.write_bytes(_png(Image.new("RGB", (3, 5), (1, 2, 3))))
    assert load_image(p).size == (3, 5) and load_image(str(p)).getpixel((0, 0)) == (1, 2, 3)


@pytest.mark.parametrize("src, match", [
    (b"", "empty"),
    (b"definitely not an image", "not a readable image"),
    (_png(Image.new("RGB", (64, 64)))[:60], "could not be decoded|not a readable"),
    (12345, "cannot read an image"),
])
def test_bad_image_data(src, match):
    with pytest.raises(ImageError, match=match):
        load_image(src)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="not a file"):
        load_image(tmp_path)


def _png_claiming(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header claims width x height (Pillow checks sizes before decoding)."""
    data = bytearray(_png(Image.new("L", (1, 1))))
    data[16:24] = struct.pack(">II", width, height)  # IHDR payload starts at byte 16
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def test_zero_size_and_too_large():
    with pytest.raises(ImageError, match="empty"):
        load_image(Image.new("RGB", (0, 10)))
    with pytest.raises(ImageError, match="more than the limit"):
        load_image(_png(Image.new("L", (200, 200))), max_pixels=100 * 100)
    with pytest.raises(ImageError, match="more than the limit"):
        load_image(_png_claiming(11_000, 11_000))  # 121 M pixels: above ours, below Pillow's bomb error


def test_decompression_bomb_is_an_image_error():
    with pytest.raises(ImageError, match="too large"):
        load_image(_png_claiming(30_000, 30_000), max_pixels=10**12)


def test_image_from_rgb_with_stride():
    w, h, stride = 3, 2, 12
    buf = bytearray(stride * h)
    for y in range(h):
        for x in range(w):
            buf[y * stride + 3 * x: y * stride + 3 * x + 3] = bytes((x, y, 7))
    img = image_from_rgb(buf, w, h, stride)
    assert img.size == (3, 2) and img.getpixel((2, 1)) == (2, 1, 7)
    arr = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    np.testing.assert_array_equal(np.asarray(image_from_rgb(arr, 3, 2)), arr)


@pytest.mark.parametrize("args, match", [
    ((b"\0" * 17, 3, 2), "needs 18"),
    ((b"\0" * 18, 3, 2, 8), "stride"),
    ((b"\0" * 18, 0, 2), "empty"),
    ((b"\0" * 18, 3.0, 2), "integer"),
    (("not bytes", 1, 1), "bytes-like"),
])
def test_image_from_rgb_errors(args, match):
    with pytest.raises(ImageError, match=match):
        image_from_rgb(*args)
