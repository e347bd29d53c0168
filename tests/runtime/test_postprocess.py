"""Grounded output -> markdown, boxes in page pixels, figure crops, atomic files."""
import json

import numpy as np
import pytest
from PIL import Image

from dsocr.runtime.postprocess import (EOS_TEXT, Box, PageResult, atomic_write_bytes, parse_coords, render_markdown,
                                       save_page, to_box)

W, H = 1000, 2000


def make_page():
    """A page whose pixel (x, y) encodes its position: R = x % 256, G = y % 256."""
    arr = np.zeros((H, W, 3), dtype=np.uint8)  # [H, W, C]
    arr[..., 0] = np.arange(W)[None, :] % 256
    arr[..., 1] = np.arange(H)[:, None] % 256
    return Image.fromarray(arr, "RGB")


@pytest.fixture(scope="module")
def page():
    return make_page()


RAW = (
    "<|ref|>title<|/ref|><|det|>[[10, 20, 500, 40]]<|/det|>\n# Report\n\n"
    "<|ref|>image<|/ref|><|det|>[[100, 100, 300, 200], [500, 500, 999, 999]]<|/det|>\n\n\n\n"
    "<|ref|>image_caption<|/ref|><|det|>[[100, 210, 300, 220]]<|/det|>\nFigure 1: a \\coloneqq b \\eqqcolon c\n\n"
    "<|ref|>image<|/ref|><|det|>[[0, 0, 0, 50]]<|/det|>\n"
    "<|ref|>image<|/ref|><|det|>[[600, 100, 700, 150]]<|/det|>\nend\n\n" + EOS_TEXT
)


def test_pixel_boxes_truncate_and_clamp():
    assert to_box("t", (500, 500, 999, 999), (W, H)) == Box("t", 500, 1001, 1000, 2000)  # int(500/999*2000)=1001
    assert to_box("t", (1, 1, 2, 2), (W, H)) == Box("t", 1, 2, 2, 4)  # 1/999*1000 = 1.001 -> 1
    assert to_box("t", (-5, 10, 1200, 20), (W, H)) == Box("t", 0, 20, 1000, 40)  # clamped
    assert to_box("t", (300, 40, 100, 20), (W, H)) == Box("t", 100, 40, 300, 80)  # corners ordered
    assert to_box("t", (12.7, 3, 999, 5), None) == Box("t", 12, 3, 999, 5)  # no page: bins


def test_render_markdown_text_and_boxes(page):
    out = render_markdown(RAW, page)
    assert out.markdown == (
        "# Report\n\n![](images/0.jpg)\n![](images/1.jpg)\n\nFigure 1: a := b =: c\n\n"
        "![](images/2.jpg)\n\nend\n"
    )
    assert "<|" not in out.markdown and EOS_TEXT not in out.markdown and "\n\n\n" not in out.markdown
    assert out.raw == RAW
    assert [b.label for b in out.boxes] == ["title", "image", "image", "image_caption", "image", "image"]
    assert out.boxes[1] == Box("image", 100, 200, 300, 400)
    assert (out.width, out.height) == (W, H)


def test_one_figure_file_per_box_with_one_counter(page):
    out = render_markdown(RAW, page, image_dir_name="figs", prefix="p3_")
    names = [name for name, _ in out.figures]
    assert names == ["p3_0.jpg", "p3_1.jpg", "p3_2.jpg"]  # the empty [0,0,0,50] box is skipped
    assert all(f"![](figs/{n})" in out.markdown for n in names)
    assert out.markdown.count("![](") == len(names)
    crop = out.figures[0][1]
    assert crop.size == (200, 200)  # (100..300) x (200..400)
    assert crop.getpixel((0, 0))[:2] == (100, 200) and crop.getpixel((199, 199))[:2] == ((299) % 256, 399 % 256)
    assert out.figures[2][1].size == (100, 100)  # 600..700 x int(100/999*2000)=200 .. int(150/999*2000)=300


def test_malformed_lists_are_skipped_never_evaluated(page, tmp_path):
    marker = tmp_path / "pwned"
    raw = (f"<|ref|>image<|/ref|><|det|>__import__('pathlib').Path({str(marker)!r}).touch()<|/det|>\nA\n"
           "<|ref|>text<|/ref|><|det|>[[1, 2, 3<|/det|>\nB\n"
           "<|ref|>text<|/ref|><|det|>[[1, 2, 3], [1, 2, 3, 4], ['a', 1, 2, 3], [True, 1, 2, 3]]<|/det|>\nC\n"
           "<|ref|>text<|/ref|><|det|>[10, 20, 30, 40]<|/det|>\nD")
    out = render_markdown(raw, page)
    assert not marker.exists()
    assert out.markdown == "A\n\nB\n\nC\n\nD\n"  # tags deleted, the text around them kept
    assert [b.label for b in out.boxes] == ["text", "text"]  # the one good box of list 3, and the bare box
    assert out.boxes[1] == to_box("text", (10, 20, 30, 40), (W, H))
    assert parse_coords("{'a': 1}") == [] and parse_coords("[[1,2,3,4]]") == [(1.0, 2.0, 3.0, 4.0)]


def test_without_a_page_boxes_stay_in_bins_and_no_figure_is_referenced():
    out = render_markdown(RAW, None)
    assert out.figures == [] and "![](" not in out.markdown
    assert out.boxes[1] == Box("image", 100, 100, 300, 200)
    assert out.width is None


def test_eos_only_stripped_at_the_end():
    assert render_markdown("a" + EOS_TEXT + "\n", None).markdown == "a\n"
    assert EOS_TEXT in render_markdown("a" + EOS_TEXT + " b", None).markdown


def test_to_json_gives_labelled_pixel_boxes(page):
    out = render_markdown(RAW, page)
    data = json.loads(out.to_json())
    assert data["boxes"][0] == {"label": "title", "bbox": [10, 40, 500, 80]}
    assert data["figures"] == ["images/0.jpg", "images/1.jpg", "images/2.jpg"]
    assert (data["width"], data["height"]) == (W, H)


def test_with_figure_prefix_renames_files_and_references(page):
    out = render_markdown(RAW, page).with_figure_prefix("doc_p0001_")
    assert [n for n, _ in out.figures] == ["doc_p0001_0.jpg", "doc_p0001_1.jpg", "doc_p0001_2.jpg"]
    assert "![](images/doc_p0001_1.jpg)" in out.markdown and "![](images/0.jpg)" not in out.markdown


def test_with_generation_records_the_stop_reason():
    class G:
        ids, stop_reason = [1, 2, 3], "loop"
    out = render_markdown("x", None).with_generation(G())
    assert (out.stop_reason, out.n_generated) == ("loop", 3)
    assert json.loads(out.to_json())["stop_reason"] == "loop"


def test_save_page_writes_every_file_atomically(page, tmp_path):
    out = render_markdown(RAW, page)
    md = save_page(out, tmp_path, "page1", extra={"source": "x.pdf"})
    assert md == tmp_path / "page1.md" and md.read_text(encoding="utf-8") == out.markdown
    data = json.loads((tmp_path / "page1.json").read_text(encoding="utf-8"))
    assert data["source"] == "x.pdf" and len(data["boxes"]) == 6
    files = sorted(p.name for p in (tmp_path / "images").iterdir())
    assert files == ["0.jpg", "1.jpg", "2.jpg"]
    with Image.open(tmp_path / "images" / "1.jpg") as im:
        assert im.size == (500, 999) and im.format == "JPEG"
    assert not list(tmp_path.rglob("*.tmp"))


def test_atomic_write_leaves_old_file_and_no_temp_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "a.md"
    target.write_text("old")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("dsocr.runtime.postprocess.os.replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(target, b"new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.md"]


def test_page_result_is_a_plain_record():
    r = PageResult(markdown="m", raw="r", boxes=[], figures=[])
    assert r.with_figure_prefix("x_") is r and r.image_dir == "images"
