"""Batches: input expansion, one atomic result per page, resume, errors recorded and skipped past."""
import json
from pathlib import Path

import pymupdf
import pytest
from PIL import Image

from dsocr.runtime.batch import WorkItem, iter_inputs, load_page, run_batch
from dsocr.runtime.errors import InputError
from dsocr.runtime.postprocess import render_markdown

RAW = ("<|ref|>title<|/ref|><|det|>[[0, 0, 500, 100]]<|/det|>\n# Page\n\n"
       "<|ref|>image<|/ref|><|det|>[[0, 0, 499, 499]]<|/det|>\n")


def make_pdf(path, pages):
    doc = pymupdf.open()
    for i in range(pages):
        doc.new_page(width=144, height=144).insert_text((10, 40), f"p{i}")
    doc.save(path)
    doc.close()
    return path


@pytest.fixture
def inputs(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    make_pdf(src / "doc.pdf", 4)
    Image.new("RGB", (64, 48), "white").save(src / "b_scan.png")
    Image.new("RGB", (32, 32), "gray").save(src / "a_photo.JPG")
    (src / "notes.txt").write_text("not an input")
    (src / ".hidden.png").write_bytes(b"junk")
    (src / "broken.pdf").write_bytes(b"%PDF-1.7 garbage")
    return src


class CountingOCR:
    """ocr_fn double: raw grounded text per page, records page sizes, can fail or interrupt on call k."""

    def __init__(self, fail_on=(), interrupt_on=None):
        self.calls, self.fail_on, self.interrupt_on = [], set(fail_on), interrupt_on

    def __call__(self, image):
        k = len(self.calls)
        self.calls.append(image.size)
        if k == self.interrupt_on:
            raise KeyboardInterrupt
        if k in self.fail_on:
            raise RuntimeError(f"model blew up on call {k}")
        return render_markdown(RAW, image)


def outputs(out_dir):
    return sorted(p.name for p in Path(out_dir).glob("*.md"))


def test_iter_inputs_expands_sorted_images_and_pdf_pages(inputs, monkeypatch):
    listing = Path.iterdir
    monkeypatch.setattr(Path, "iterdir", lambda self: iter(sorted(listing(self), reverse=True)))
    items = list(iter_inputs([inputs]))
    assert [i.stem for i in items] == ["a_photo", "b_scan", "broken",
                                       "doc_p0000", "doc_p0001", "doc_p0002", "doc_p0003"]
    assert items[3] == WorkItem(inputs / "doc.pdf", 0) and items[2].page is None
    assert [i.stem for i in iter_inputs([inputs / "doc.pdf", inputs / "b_scan.png"])][-1] == "b_scan"


def test_iter_inputs_rejects_missing_and_unsupported(inputs):
    with pytest.raises(InputError, match="no such file"):
        list(iter_inputs([inputs / "missing.png"]))
    with pytest.raises(InputError, match="not a PDF or an image"):
        list(iter_inputs([inputs / "notes.txt"]))


def test_batch_writes_every_page_and_records_failures(inputs, tmp_path):
    out = tmp_path / "out"
    ocr = CountingOCR(fail_on={1})  # the second page OCR'd (b_scan) fails
    summary = run_batch(iter_inputs([inputs]), ocr, out, progress=False)
    assert (summary.done, summary.skipped, summary.failed) == (5, 0, 2)  # b_scan and broken.pdf fail
    assert outputs(out) == ["a_photo.md", "doc_p0000.md", "doc_p0001.md", "doc_p0002.md", "doc_p0003.md"]
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert [(e["stem"], e["error"]) for e in errors] == [("b_scan", "RuntimeError"), ("broken", "PDFError")]
    assert "model blew up" in errors[0]["message"] and "not a PDF or corrupt" in errors[1]["message"]
    assert ocr.calls[2] == (288, 288)  # PDF pages rendered at 144 dpi: 144 pt -> 288 px
    md = (out / "doc_p0002.md").read_text()
    assert md == "# Page\n\n![](images/doc_p0002_0.jpg)\n"
    assert (out / "images" / "doc_p0002_0.jpg").is_file()
    data = json.loads((out / "doc_p0002.json").read_text())
    assert data["source"].endswith("doc.pdf") and data["page"] == 2
    assert data["boxes"][0] == {"label": "title", "bbox": [0, 0, 144, 28]}  # int(500/999*288), int(100/999*288)
    assert not list(out.rglob("*.tmp"))


def test_interrupted_batch_resumes_without_redoing_pages(inputs, tmp_path):
    out = tmp_path / "out"
    items = [i for i in iter_inputs([inputs]) if i.stem != "broken"]
    first = CountingOCR(interrupt_on=3)
    with pytest.raises(KeyboardInterrupt):
        run_batch(items, first, out, progress=False)
    assert outputs(out) == ["a_photo.md", "b_scan.md", "doc_p0000.md"]
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.md")}
    second = CountingOCR()
    summary = run_batch(items, second, out, progress=False)
    assert (summary.done, summary.skipped, summary.failed) == (3, 3, 0)
    assert len(second.calls) == 3  # only doc pages 1..3
    assert {p: (out / p).stat().st_mtime_ns for p in before} == before
    assert len(outputs(out)) == 6 and not (out / "errors.jsonl").exists()


def test_crash_while_saving_leaves_no_partial_files(inputs, tmp_path, monkeypatch):
    out = tmp_path / "out"
    items = [WorkItem(inputs / "b_scan.png"), WorkItem(inputs / "a_photo.JPG")]
    import dsocr.runtime.postprocess as pp

    real_replace = pp.os.replace

    def flaky_replace(src, dst):
        if str(dst).endswith("b_scan.md"):
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(pp.os, "replace", flaky_replace)
    summary = run_batch(items, CountingOCR(), out, progress=False)
    assert (summary.done, summary.failed) == (1, 1)
    assert outputs(out) == ["a_photo.md"]  # b_scan has no .md, so the next run redoes it
    assert not list(out.rglob("*.tmp"))
    monkeypatch.setattr(pp.os, "replace", real_replace)
    assert run_batch(items, CountingOCR(), out, progress=False).done == 1


def test_stale_temp_files_are_removed(inputs, tmp_path):
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    (out / ".dsocr-0123456789ab.tmp").write_text("half")  # temp names of ours
    (out / "images" / ".dsocr-ba9876543210.tmp").write_text("half")
    (out / ".x.md.abc123.tmp").write_text("the user's")  # not ours: kept
    run_batch([WorkItem(inputs / "b_scan.png")], CountingOCR(), out, progress=False)
    assert [p.name for p in out.rglob("*.tmp")] == [".x.md.abc123.tmp"] and outputs(out) == ["b_scan.md"]


def test_raw_text_results_are_post_processed(inputs, tmp_path):
    out = tmp_path / "out"
    run_batch([WorkItem(inputs / "b_scan.png")], lambda im: RAW + "<｜end▁of▁sentence｜>", out, progress=False)
    assert (out / "b_scan.md").read_text() == "# Page\n\n![](images/b_scan_0.jpg)\n"


def test_wrong_result_type_is_a_recorded_error(inputs, tmp_path):
    summary = run_batch([WorkItem(inputs / "b_scan.png")], lambda im: 42, tmp_path / "out", progress=False)
    assert summary.failed == 1 and "expected a PageResult" in summary.errors[0]["message"]


def test_duplicate_stems_are_refused_and_repeats_dropped(inputs, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    Image.new("RGB", (8, 8)).save(other / "b_scan.png")
    with pytest.raises(InputError, match="both write b_scan.md"):
        run_batch([WorkItem(inputs / "b_scan.png"), WorkItem(other / "b_scan.png")], CountingOCR(), tmp_path / "o")
    ocr = CountingOCR()
    run_batch([WorkItem(inputs / "b_scan.png")] * 2, ocr, tmp_path / "o2", progress=False)
    assert len(ocr.calls) == 1


def test_load_page_applies_exif_orientation(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    Image.new("RGB", (40, 20)).save(path, exif=exif)
    image = load_page(WorkItem(path))
    assert image.size == (20, 40) and image.mode == "RGB"


def test_progress_bar_shows(inputs, tmp_path, capsys):
    run_batch([WorkItem(inputs / "b_scan.png")], CountingOCR(), tmp_path / "out", progress=True)
    assert "1/1" in capsys.readouterr().err
