"""Calibration pages: the built-in synthetic set is deterministic and varied; user files load."""
import numpy as np
import pymupdf
import pytest
from PIL import Image

from dsocr.calibration.pages import PAGE_KINDS, calibration_pages, load_pages, page_set_hash, synthetic_page, synthetic_pages
from dsocr.runtime.errors import InputError


def test_same_seed_same_pixels_other_seed_other_pixels():
    a, b = synthetic_pages(3, seed=7), synthetic_pages(3, seed=7)
    assert [p.tobytes() for p in a] == [p.tobytes() for p in b]
    assert page_set_hash(a) == page_set_hash(b)
    assert page_set_hash(a) != page_set_hash(synthetic_pages(3, seed=8))
    assert synthetic_page(2, seed=7).tobytes() == a[2].tobytes()  # any page can be made on its own


def test_every_kind_draws_something_different():
    pages = synthetic_pages(len(PAGE_KINDS), seed=0)
    assert all(p.mode == "RGB" and min(p.size) >= 300 for p in pages)
    assert len({page_set_hash([p]) for p in pages}) == len(PAGE_KINDS)
    for kind, page in zip(PAGE_KINDS, pages):
        ink = np.asarray(page.convert("L")) < 128
        assert ink.mean() > 0.01, f"{kind} page is (nearly) blank"
    photo = np.asarray(pages[PAGE_KINDS.index("photo")], np.float32)
    assert photo.std(axis=(0, 1)).min() > 20  # colourful noise/gradient blocks, not only black text


def test_cjk_page_uses_the_builtin_cjk_font():
    assert pymupdf.Font("china-s").name  # PyPI's pymupdf (a core dependency) ships it: never a skip
    page = synthetic_page(PAGE_KINDS.index("cjk"), seed=0)
    ink = np.asarray(page.convert("L")) < 128
    assert ink.mean() > 0.03  # dense ideographs, not a fallback of empty boxes


def test_load_pages_reads_images_pdfs_and_directories(tmp_path):
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (40, 30), "white").save(tmp_path / "sub" / "a.png")
    doc = pymupdf.open()
    for _ in range(2):
        doc.new_page(width=200, height=100).insert_text((20, 50), "hello")
    doc.save(tmp_path / "b.pdf")
    pages = load_pages([tmp_path], dpi=72)
    assert [p.size for p in pages] == [(200, 100), (200, 100)]  # the one directory rule: sub/ is not searched
    pages = load_pages([tmp_path, tmp_path / "sub"], dpi=72)
    assert [p.size for p in pages] == [(200, 100), (200, 100), (40, 30)]
    assert len(load_pages([tmp_path], dpi=72, limit=1)) == 1
    pages, label = calibration_pages([tmp_path / "sub" / "a.png"])
    assert len(pages) == 1 and "a.png" in label
    with pytest.raises(InputError):
        load_pages([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no calibration pages"):
        load_pages([tmp_path / "empty"])
