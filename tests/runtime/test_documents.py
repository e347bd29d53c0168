"""Documents (one markdown per PDF, official page-split marker, resumable), looped pages kept or
dropped, and layout images with the boxes drawn."""
import dataclasses
import json

import numpy as np
import pymupdf
import pytest
from PIL import Image

from dsocr.runtime.batch import WorkItem, iter_inputs, run_batch
from dsocr.runtime.documents import PAGE_SPLIT, apply_looped, check_names, join_pages, write_documents
from dsocr.runtime.errors import InputError
from dsocr.runtime.layouts import LayoutWriter, draw_layout, label_colour, layout_path
from dsocr.runtime.postprocess import Box, render_markdown


def make_pdf(path, pages):
    doc = pymupdf.open()
    for i in range(pages):
        doc.new_page(width=144, height=144 + 8 * i).insert_text((10, 40), f"p{i}")  # page i: its own height
    doc.save(path)
    doc.close()
    return path


class PageOCR:
    """ocr_fn double: the page's index read from its height; can fail pages; marks pages as looped."""

    def __init__(self, fail=(), looped=()):
        self.fail, self.looped, self.calls = set(fail), set(looped), []

    def __call__(self, image):
        i = (round(image.height * 72 / 144) - 144) // 8
        self.calls.append(i)
        if i in self.fail:
            raise RuntimeError(f"page {i} failed")
        raw = f"<|ref|>title<|/ref|><|det|>[[100, 100, 900, 300]]<|/det|>\n# Page {i}\n"
        result = render_markdown(raw, image)
        return dataclasses.replace(result, stop_reason="loop" if i in self.looped else "eos")


@pytest.fixture
def pdf(tmp_path):
    return make_pdf(tmp_path / "report.pdf", 3)


def test_join_pages_uses_the_official_marker():
    assert PAGE_SPLIT == "\n<--- Page Split --->"
    assert join_pages(["# A\n", "B"]) == "# A\n\n<--- Page Split --->\n" + "B\n\n<--- Page Split --->\n"


def test_a_pdf_gets_one_document_after_all_its_pages_resumably(pdf, tmp_path):
    out = tmp_path / "out"
    items = list(iter_inputs([pdf]))
    summary = run_batch(items, PageOCR(fail={1}), out, progress=False)
    assert (summary.done, summary.failed) == (2, 1)
    done, waiting = write_documents(items, out)
    assert done == [] and [d.name for d in waiting] == ["report"]
    assert not (out / "report.md").exists()  # never half a document

    ocr = PageOCR()
    run_batch(items, ocr, out, progress=False)  # the re-run completes only the missing page
    assert ocr.calls == [1]
    done, waiting = write_documents(items, out)
    assert done == [out / "report.md"] and waiting == []
    text = (out / "report.md").read_text(encoding="utf-8")
    assert text == "".join(f"# Page {i}\n\n<--- Page Split --->\n" for i in range(3))
    assert text == join_pages((out / f"report_p{i:04d}.md").read_text(encoding="utf-8") for i in range(3))


def test_document_name_colliding_with_a_page_is_refused(pdf, tmp_path):
    Image.new("RGB", (32, 32)).save(tmp_path / "report.png")
    with pytest.raises(InputError, match="report.md"):
        check_names(iter_inputs([pdf, tmp_path / "report.png"]))
    check_names(iter_inputs([pdf]))  # alone it is fine


@pytest.mark.parametrize("looped", ["keep", "drop"])
def test_looped_pages_are_recorded_and_kept_or_dropped(pdf, tmp_path, looped):
    out = tmp_path / "out"
    items = list(iter_inputs([pdf]))
    ocr = PageOCR(looped={1})
    run_batch(items, lambda page: apply_looped(ocr(page), looped), out, progress=False)
    records = [json.loads((out / f"report_p{i:04d}.json").read_text()) for i in range(3)]
    assert [r["looped"] for r in records] == [False, True, False]
    assert [r["dropped"] for r in records] == [False, looped == "drop", False]
    assert "# Page 1" in records[1]["raw"]  # the raw text is kept either way
    page1 = (out / "report_p0001.md").read_text()
    assert (page1 == "") == (looped == "drop")
    write_documents(items, out)
    doc = (out / "report.md").read_text()
    assert ("# Page 1" in doc) == (looped == "keep")
    assert doc.count("<--- Page Split --->") == (3 if looped == "keep" else 2)


def test_apply_looped_rejects_an_unknown_choice():
    result = render_markdown("x", None)
    with pytest.raises(InputError, match="looped='skip'"):
        apply_looped(result, "skip")


def test_layout_image_draws_each_box_in_its_label_colour():
    page = Image.new("RGB", (200, 100), "white")
    boxes = [Box("title", 20, 30, 120, 80), Box("text", 150, 40, 190, 90)]
    img = np.asarray(draw_layout(page, boxes))
    assert img.shape == (100, 200, 3)
    assert tuple(img[55, 20]) == label_colour("title")  # left edge of the title box
    assert tuple(img[65, 150]) == label_colour("text")
    inside = img[60, 70].astype(int)  # faint fill: close to white, tinted
    assert 200 < inside.min() and inside.max() <= 255 and tuple(inside) != (255, 255, 255)
    assert tuple(img[5, 195]) == (255, 255, 255)  # outside every box and label
    assert np.asarray(page).min() == 255  # the page itself is untouched


def test_layouts_are_written_per_page_and_caught_up_on_a_rerun(pdf, tmp_path):
    out = tmp_path / "out"
    items = list(iter_inputs([pdf]))
    run_batch(items[:2], PageOCR(), out, progress=False)  # a first run without --layouts
    writer = LayoutWriter(out)
    run_batch(items, PageOCR(), out, progress=False, on_page=writer)  # page 2 drawn as it is done
    assert layout_path(out, "report_p0002").is_file() and not layout_path(out, "report_p0000").is_file()
    assert writer.catch_up(items) == 2  # pages 0 and 1 from their JSON records
    for i in range(3):
        with Image.open(layout_path(out, f"report_p{i:04d}")) as im:
            assert im.size == (288, 288 + 16 * i)
            pixel = im.convert("RGB").getpixel((int(100 / 999 * 288), int(200 / 999 * im.height)))
        assert max(abs(a - b) for a, b in zip(pixel, label_colour("title"))) < 40  # the box's left edge (JPEG)
    assert writer.catch_up(items) == 0


def test_pdf_items_of_an_unreadable_pdf_make_no_document(tmp_path):
    bad = tmp_path / "bad.pdf"
    bad.write_bytes(b"%PDF-1.7 garbage")
    done, waiting = write_documents([WorkItem(bad)], tmp_path)
    assert done == [] and waiting == []
