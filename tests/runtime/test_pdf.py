"""PDF pages -> RGB images, and a PDFError with a clear message for every bad PDF."""
import pymupdf
import pytest

from dsocr.runtime.errors import InputError, PDFError
from dsocr.runtime.pdf import pdf_page_count, render_pdf


def make_pdf(path, pages=1, size=(595, 842), **save_kwargs):
    doc = pymupdf.open()
    for i in range(pages):
        page = doc.new_page(width=size[0], height=size[1])
        page.insert_text((72, 72), f"Page {i + 1}: hello", fontsize=24)
        page.draw_rect(pymupdf.Rect(72, 100, 272, 200), color=(1, 0, 0), fill=(1, 0, 0))
    doc.save(path, **save_kwargs)
    doc.close()
    return path


@pytest.fixture
def a4(tmp_path):
    return make_pdf(tmp_path / "a4.pdf", pages=3)


def test_renders_a4_at_144_dpi(a4):
    pages = list(render_pdf(a4))
    assert [i for i, _ in pages] == [0, 1, 2]
    image = pages[0][1]
    assert image.mode == "RGB"
    assert abs(image.width - 1191) <= 1 and abs(image.height - 1684) <= 1
    assert image.getpixel((5, 5)) == (255, 255, 255)
    r, g, b = image.getpixel((2 * 172, 2 * 150))  # inside the red rectangle (points x2)
    assert r > 200 and g < 50 and b < 50


def test_dpi_and_page_selection(a4):
    ((i, image),) = list(render_pdf(a4, dpi=72, pages=[2]))
    assert i == 2 and image.size == (595, 842)
    assert [i for i, _ in render_pdf(a4, dpi=36, pages=[1, 0])] == [1, 0]
    assert pdf_page_count(a4) == 3


def test_missing_file(tmp_path):
    with pytest.raises(PDFError, match="no such file"):
        render_pdf(tmp_path / "nope.pdf")
    with pytest.raises(PDFError, match="no such file"):
        pdf_page_count(tmp_path / "nope.pdf")


@pytest.mark.parametrize("content", [b"", b"this is not a PDF\n" * 20, "truncated"])
def test_garbage_and_truncated_files(tmp_path, content):
    path = tmp_path / "bad.pdf"
    if content == "truncated":
        data = make_pdf(tmp_path / "ok.pdf").read_bytes()
        content = data[: len(data) // 3]
    path.write_bytes(content)
    with pytest.raises(PDFError, match="not a PDF or corrupt"):
        pdf_page_count(path)


def test_an_image_named_pdf_is_not_a_pdf(tmp_path):
    from PIL import Image

    path = tmp_path / "scan.pdf"
    Image.new("RGB", (10, 10)).save(path, format="PNG")
    with pytest.raises(PDFError, match="not a PDF"):
        render_pdf(path)


def test_encrypted_pdf(tmp_path):
    path = make_pdf(tmp_path / "secret.pdf", encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw="user", owner_pw="owner")
    with pytest.raises(PDFError, match="encrypted.*password"):
        render_pdf(path)


def test_page_out_of_range_is_checked_at_the_call(a4):
    with pytest.raises(PDFError, match=r"page index 3 out of range.*3 page"):
        render_pdf(a4, pages=[0, 3])
    with pytest.raises(PDFError, match="page index -1"):
        render_pdf(a4, pages=[-1])
    with pytest.raises(PDFError, match="not an integer"):
        render_pdf(a4, pages=["1"])


def test_pixel_guard(tmp_path):
    path = make_pdf(tmp_path / "poster.pdf", size=(2000, 2000))  # 4000 x 4000 px at 144 dpi
    it = render_pdf(path, max_pixels=10_000_000)
    with pytest.raises(PDFError, match="4000x4000 pixels.*lower dpi"):
        next(it)
    ((_, image),) = list(render_pdf(path, dpi=72, max_pixels=10_000_000))
    assert image.size == (2000, 2000)


def test_bad_dpi(a4):
    with pytest.raises(InputError, match="dpi=0"):
        render_pdf(a4, dpi=0)


def test_errors_are_input_errors():
    assert issubclass(PDFError, InputError) and issubclass(PDFError, ValueError)
