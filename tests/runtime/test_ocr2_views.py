"""OCR-2 on the runtime side: the mode's data, its views (pad colour 127, 768 tiles only past 768 px,
2..6 tiles), its token layout (tiles, global, separator; no newlines), generation checks."""
import numpy as np
import pytest
from PIL import Image

from dsocr.runtime.errors import InputError, ModeError
from dsocr.runtime.layout import layout_flat_embeds, layout_views
from dsocr.runtime.modes import check_generation, get_mode, mode_names
from dsocr.runtime.preprocess import find_tile_grid, load_image, preprocess

OCR2 = get_mode("ocr2")


@pytest.fixture(scope="module")
def gold(ocr2_fixture_dir):
    return dict(np.load(ocr2_fixture_dir / "golden.npz"))


def test_mode_data():
    assert (OCR2.base_size, OCR2.image_size, OCR2.crop, OCR2.pad, OCR2.newlines) == (1024, 768, True, True, False)
    assert (OCR2.min_tiles, OCR2.max_tiles, OCR2.vision_sizes) == (2, 6, (768, 1024))
    assert OCR2.n_image_tokens() == 257 and OCR2.n_image_tokens(3, 2) == 257 + 6 * 144
    assert mode_names("ocr2") == ("ocr2",) and "ocr2" not in mode_names("ocr1")
    assert get_mode("gundam").n_image_tokens(2, 3) == 273 + (10 * 2 + 1) * 30  # v1 unchanged


@pytest.mark.parametrize("case, page", [("tiles", "page_tiles.png"), ("single", "page_single.png")])
def test_views_match_the_fixture(gold, ocr2_fixture_dir, case, page):
    views = preprocess(load_image(ocr2_fixture_dir / page), OCR2)
    assert np.abs(views.global_view[:, :, ::8, ::8] - gold[f"{case}.global_view"]).max() <= 1e-5
    assert np.array_equal(np.array([views.crop]), gold[f"{case}.images_spatial_crop"])
    if case == "tiles":
        assert np.abs(views.tiles[:, :, ::8, ::8] - gold["tiles.local_views"]).max() <= 1e-5
    else:
        assert views.tiles.shape == (0, 3, 768, 768)


def test_pad_colour_is_127():
    views = preprocess(Image.new("RGB", (200, 100), (255, 255, 255)), OCR2)
    assert np.isclose(views.global_view[0, :, 0, 0], (127 / 255 - 0.5) / 0.5).all()  # -0.00392, not 0
    assert np.isclose(views.global_view[0, :, 512, 512], 1.0).all()


@pytest.mark.parametrize("size, grid", [
    ((768, 768), (1, 1)), ((769, 385), (2, 1)), ((385, 769), (1, 2)), ((769, 500), (3, 2)), ((1500, 1000), (3, 2)),
    ((4000, 500), (6, 1)), ((700, 500), (1, 1)),
])
def test_tiling_rule(size, grid):
    assert find_tile_grid(*size, OCR2.min_tiles, OCR2.max_tiles, OCR2.image_size) == grid
    views = preprocess(Image.new("RGB", size, (10, 20, 30)), OCR2)
    assert views.crop == grid and views.n_tiles == (0 if grid == (1, 1) else grid[0] * grid[1])
    assert views.n_tiles <= 6  # gundam's 2..9 would give a 7x1 or 8x1 grid here


def test_flat_layout_order():
    d = 4
    glob = np.full((256, d), 1.0, np.float32)
    tiles = np.stack([np.full((144, d), 10.0 + t, np.float32) for t in range(6)])
    tiles[:, :, 1] = np.arange(144)  # query order kept inside a tile
    sep = np.full(d, 7.0, np.float32)
    out = layout_flat_embeds(glob, tiles, (3, 2), sep)
    assert out.shape == (6 * 144 + 256 + 1, d)
    assert [out[t * 144, 0] for t in range(6)] == [10, 11, 12, 13, 14, 15]  # tile by tile, row-major
    assert (out[:144, 1] == np.arange(144)).all()
    assert (out[864:1120, 0] == 1).all() and (out[-1] == 7).all()
    assert np.array_equal(layout_views(False, glob, None, (1, 1), None, sep), np.concatenate([glob, sep[None]]))


def test_flat_layout_errors():
    glob, sep = np.zeros((256, 4), np.float32), np.zeros(4, np.float32)
    with pytest.raises(InputError, match="tile grid"):
        layout_flat_embeds(glob, np.zeros((5, 144, 4), np.float32), (3, 2), sep)
    with pytest.raises(InputError, match="announces tiles"):
        layout_flat_embeds(glob, None, (2, 1), sep)
    with pytest.raises(InputError, match="image_newline"):
        layout_views(True, glob, None, (1, 1), None, sep)


def test_generations_refuse_each_other():
    check_generation(OCR2, "ocr2")
    check_generation(get_mode("small"), "ocr1")
    with pytest.raises(ModeError, match="'small' is a DeepSeek-OCR mode.*OCR-2.*ocr2"):
        check_generation(get_mode("small"), "ocr2")
    with pytest.raises(ModeError, match="'ocr2' is a DeepSeek-OCR-2 mode.*tiny, small"):
        check_generation(OCR2, "ocr1")
