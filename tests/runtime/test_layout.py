"""Token layout: golden input_ids / images_seq_mask in every mode, embedding order, scatter."""
import numpy as np
import pytest

from dsocr.runtime.errors import InputError
from dsocr.runtime.layout import assemble_prompt, layout_image_embeds, scatter_image_embeds
from dsocr.runtime.modes import get_mode, mode_names

V1_MODES = mode_names("ocr1")  # the tiny fixture is OCR-1
from dsocr.runtime.prompts import get_prompt, split_prompt

FIXTURE_IMAGE_ID, FIXTURE_BOS = 1023, 0
FIXTURE_PROMPT = "<image>\n<|grounding|>Convert the document to markdown. "  # README text, trailing space


def stand_in_ids(text: str) -> list[int]:
    """The fixture's stand-in tokenizer: one id per character."""
    return [2 + ord(c) % 97 for c in text]


@pytest.fixture(scope="module")
def golden(fixture_dir):
    return dict(np.load(fixture_dir / "golden.npz"))


@pytest.mark.parametrize("mode", V1_MODES)
def test_golden_prompt_ids(golden, mode):
    crop = tuple(int(c) for c in golden[f"{mode}.images_spatial_crop"][0])
    n = get_mode(mode).n_image_tokens(*crop)
    before, after = split_prompt(FIXTURE_PROMPT)
    ids, mask = assemble_prompt(stand_in_ids(before), stand_in_ids(after), n, FIXTURE_IMAGE_ID, FIXTURE_BOS)
    assert ids.dtype == np.int64 and mask.dtype == bool
    np.testing.assert_array_equal(ids, golden[f"{mode}.input_ids"])
    np.testing.assert_array_equal(mask, golden[f"{mode}.images_seq_mask"])
    assert int(mask.sum()) == n == len(golden[f"{mode}.image_embeds"])


def test_official_document_prompt_is_the_fixture_prompt():
    assert split_prompt(get_prompt("document")) == split_prompt(FIXTURE_PROMPT)


def test_assemble_prompt_order():
    ids, mask = assemble_prompt([5, 6], [7], 3, 9, 0)
    assert ids.tolist() == [0, 5, 6, 9, 9, 9, 7]
    assert mask.tolist() == [False, False, False, True, True, True, False]
    with pytest.raises(InputError):
        assemble_prompt([], [], -1, 9, 0)


def _synthetic(g, l, w, h, d=4):
    """Features whose values say where they came from: global 1000+k, tile t token k -> 10000*(t+1)+k."""
    glob = np.repeat(1000.0 + np.arange(g * g), d).reshape(g * g, d).astype(np.float32)
    tiles = None
    if w * h > 1:
        t = 10000.0 * (np.arange(w * h)[:, None] + 1) + np.arange(l * l)[None]
        tiles = np.repeat(t[..., None], d, axis=-1).astype(np.float32)
    return glob, tiles, np.full(d, -1.0, np.float32), np.full(d, -2.0, np.float32)


def test_layout_without_tiles():
    glob, _, nl, sep = _synthetic(3, 2, 1, 1)
    out = layout_image_embeds(glob, None, (1, 1), nl, sep)
    assert out[:, 0].tolist() == [1000, 1001, 1002, -1, 1003, 1004, 1005, -1, 1006, 1007, 1008, -1, -2]


def test_layout_with_tiles_stitches_one_big_grid():
    g, l, w, h = 2, 2, 3, 2
    glob, tiles, nl, sep = _synthetic(g, l, w, h)
    out = layout_image_embeds(glob, tiles, (w, h), nl, sep)[:, 0]
    assert len(out) == (l * w + 1) * (l * h) + g * (g + 1) + 1 == 35
    t = lambda tile, k: 10000 * (tile + 1) + k  # noqa: E731
    first_row = [t(0, 0), t(0, 1), t(1, 0), t(1, 1), t(2, 0), t(2, 1), -1]  # top token row of tiles 0, 1, 2
    second_row = [t(0, 2), t(0, 3), t(1, 2), t(1, 3), t(2, 2), t(2, 3), -1]
    third_row = [t(3, 0), t(3, 1), t(4, 0), t(4, 1), t(5, 0), t(5, 1), -1]  # tiles 3..5 are the second tile row
    assert out[:21].tolist() == first_row + second_row + third_row
    assert out[28:].tolist() == [1000, 1001, -1, 1002, 1003, -1, -2]  # global grid after the tiles, then separator


def test_layout_matches_golden_structure(golden):
    """Newline slots of our layout hold one repeated vector in the golden embeddings; the last row is distinct."""
    for mode in V1_MODES:
        ref = golden[f"{mode}.image_embeds"]
        w, h = (int(c) for c in golden[f"{mode}.images_spatial_crop"][0])
        m = get_mode(mode)
        g, l = m.global_grid, m.tile_grid
        d = ref.shape[1]
        glob = np.zeros((g * g, d), np.float32)
        tiles = np.zeros((w * h, l * l, d), np.float32) if w * h > 1 else None
        slots = layout_image_embeds(glob, tiles, (w, h), np.ones(d), np.full(d, 2.0))[:, 0]
        assert len(slots) == len(ref)
        newlines = ref[slots == 1]
        assert len(newlines) == (l * h if tiles is not None else 0) + g
        np.testing.assert_array_equal(newlines, np.broadcast_to(newlines[0], newlines.shape))
        assert not np.isclose(ref[slots == 0], newlines[0]).all(axis=1).any()
        assert not np.allclose(ref[-1], newlines[0])


def test_layout_errors():
    glob, tiles, nl, sep = _synthetic(2, 2, 2, 1)
    with pytest.raises(InputError, match="tile grid"):
        layout_image_embeds(glob, tiles, (3, 1), nl, sep)
    with pytest.raises(InputError, match="no tile features"):
        layout_image_embeds(glob, None, (2, 1), nl, sep)
    with pytest.raises(InputError, match="square"):
        layout_image_embeds(glob[:3], None, (1, 1), nl, sep)
    with pytest.raises(InputError, match="separator"):
        layout_image_embeds(glob, None, (1, 1), nl, sep[:2])


def test_scatter_places_embeddings_in_order():
    text = np.zeros((6, 2), np.float32)
    mask = np.array([0, 1, 1, 0, 1, 0], bool)
    img = np.array([[1, 1], [2, 2], [3, 3]], np.float32)
    out = scatter_image_embeds(text, mask, img)
    assert out[:, 0].tolist() == [0, 1, 2, 0, 3, 0]
    assert (text == 0).all()  # input untouched
    with pytest.raises(InputError, match="3 image positions"):
        scatter_image_embeds(text, mask, img[:2])
    with pytest.raises(InputError, match="prompt length"):
        scatter_image_embeds(text, mask[:5], img)
