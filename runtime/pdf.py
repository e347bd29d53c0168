"""PDF pages -> RGB PIL images with pymupdf (imported lazily), every failure a PDFError.

Page indices are 0-based. A page of w x h points renders to about (w*dpi/72) x (h*dpi/72) pixels:
A4 (595 x 842 pt) at 144 dpi gives 1190 x 1684.
"""
from __future__ import annotations

import operator
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from PIL import Image

from .errors import BackendUnavailableError, InputError, PDFError

DEFAULT_DPI = 144  # the official PDF script's resolution
MAX_PIXELS = 100_000_000  # per rendered page (~300 MB RGB); a poster-sized page needs a lower dpi


def _pymupdf():
    try:
        import pymupdf
    except ImportError as e:  # a core dependency, but say so plainly if it is missing
        raise BackendUnavailableError("reading PDFs needs pymupdf: pip install pymupdf") from e
    return pymupdf


@contextmanager
def open_pdf(path: str | Path):
    """Open and check a PDF (exists, parses as PDF, not password protected, has pages); closes on exit."""
    path = Path(path)
    if not path.exists():
        raise PDFError(f"{path}: no such file")
    if not path.is_file():
        raise PDFError(f"{path}: not a file")
    pymupdf = _pymupdf()
    try:
        doc = pymupdf.open(path, filetype="pdf")
    except Exception as e:  # FileDataError, EmptyFileError, RuntimeError from MuPDF
        raise PDFError(f"{path}: not a PDF or corrupt ({type(e).__name__}: {e})") from e
    try:
        if not doc.is_pdf:
            raise PDFError(f"{path}: not a PDF (its content reads as {doc.metadata.get('format') or 'another format'})")
        if doc.needs_pass:
            raise PDFError(f"{path}: the PDF is encrypted and needs a password; decrypt it first "
                           f"(e.g. `qpdf --decrypt --password=... in.pdf out.pdf`)")
        try:
            count = doc.page_count
        except Exception as e:  # MuPDF: "Invalid number of pages" for a lying /Count or /Kids tree
            raise PDFError(f"{path}: the page tree is corrupt ({type(e).__name__}: {e})") from e
        if count < 1:
            raise PDFError(f"{path}: the PDF has no pages (corrupt or empty)")
        yield doc
    finally:
        doc.close()


def pdf_page_count(path: str | Path) -> int:
    with open_pdf(path) as doc:
        return doc.page_count


def _check_pages(path: Path, pages: Iterable[int] | None, count: int) -> list[int]:
    if pages is None:
        return list(range(count))
    out = []
    for p in pages:
        try:
            if isinstance(p, bool):
                raise TypeError
            p = operator.index(p)
        except TypeError:
            raise PDFError(f"{path}: page index {p!r} is not an integer") from None
        if not 0 <= p < count:
            raise PDFError(f"{path}: page index {p} out of range; the PDF has {count} page(s), indices 0..{count - 1}")
        out.append(p)
    return out


def _render_page(doc, index: int, zoom: float, max_pixels: int, path: Path) -> Image.Image:
    pymupdf = _pymupdf()
    page = doc[index]
    matrix = pymupdf.Matrix(zoom, zoom)
    box = (page.rect * matrix).irect  # the pixmap's integer bounds
    if box.width * box.height > max_pixels:
        raise PDFError(f"{path}: page {index} would render to {box.width}x{box.height} pixels, over the "
                       f"limit of {max_pixels}; use a lower dpi")
    try:
        pix = page.get_pixmap(matrix=matrix, alpha=False, colorspace=pymupdf.csRGB)
    except Exception as e:
        raise PDFError(f"{path}: page {index} cannot be rendered ({type(e).__name__}: {e})") from e
    # samples: [H, stride] bytes, RGB interleaved
    return Image.frombytes("RGB", (pix.width, pix.height), pix.samples, "raw", "RGB", pix.stride)


def render_pdf(path: str | Path, dpi: float = DEFAULT_DPI, pages: Iterable[int] | None = None,
               max_pixels: int = MAX_PIXELS) -> Iterator[tuple[int, Image.Image]]:
    """-> iterator of (page index, RGB page image) for `pages` (default all), in the order given.

    The file and every index are checked now (PDFError at the call, not at the first next()); pages
    are rendered one at a time as the iterator is consumed.
    """
    if not 0 < dpi <= 2400:  # NaN fails this too
        raise InputError(f"dpi={dpi} must lie in (0, 2400]")
    path = Path(path)
    with open_pdf(path) as doc:
        indices = _check_pages(path, pages, doc.page_count)
    return _iter_pages(path, indices, dpi / 72.0, max_pixels)


def _iter_pages(path: Path, indices: list[int], zoom: float, max_pixels: int) -> Iterator[tuple[int, Image.Image]]:
    with open_pdf(path) as doc:
        for i in indices:
            yield i, _render_page(doc, i, zoom, max_pixels, path)
