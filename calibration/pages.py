"""Calibration pages: user files (PDFs, images, directories of them) or built-in synthetic pages.

Everything comes out as RGB PIL images. A directory is read by the runtime's one rule (files directly
in it, not subfolders: runtime.inputs.directory_pages). PDFs render through the runtime's own `render_pdf`, so a page
is calibrated exactly as `dsocr run` would see it. `synthetic_pages(n, seed)` draws varied pages
with pymupdf (prose, multi-column text, ruled tables, formulas, CJK, photo-like blocks); the same
(n, seed, dpi) gives the same pixels on every machine with the same pymupdf.
"""
from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from dsocr.runtime.errors import BackendUnavailableError, InputError
from dsocr.runtime.pdf import DEFAULT_DPI, render_pdf
from dsocr.runtime.inputs import IMAGE_SUFFIXES as _SUFFIXES
from dsocr.runtime.inputs import directory_pages
from dsocr.runtime.preprocess import image_frame_count, load_image

IMAGE_SUFFIXES = tuple(sorted(_SUFFIXES))
PAGE_KINDS = ("prose", "columns", "table", "formula", "cjk", "photo", "mixed")
SYNTHETIC_DPI = 96  # A4 -> 794 x 1123 px: above every mode's global view, cheap to render

# Page shapes in points (w, h): A4 portrait, US letter landscape, 16:9 slide, receipt strip.
_SHAPES = ((595, 842), (595, 842), (792, 612), (720, 405), (300, 780))
_WORDS = (
    "the model reads each page and writes markdown with tables formulas and figures in reading order "
    "results show that accuracy improves when the resolution grows while the number of vision tokens "
    "stays small compression ratio decoder encoder layout section table figure equation reference "
    "method data training evaluation baseline average total revenue quarter growth annual report "
    "invoice amount date customer address phone number item price quantity tax subtotal balance due "
    "abstract introduction related work conclusion appendix chapter paragraph footnote caption"
).split()
# Common simplified Chinese characters (frequency-list order), for CJK pages.
_HANZI = (
    "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面"
    "而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把"
    "性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质"
    "气第向道命此变条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总次品式活"
)
_FORMULAS = (
    ("E", "=", "mc", "2"), ("f(x)", "=", "ax", "2"), ("a", "+", "b", "n"), ("x", "\u2264", "y", "k"),
)
_GREEK = "\u03b1\u03b2\u03b3\u03b4\u03bb\u03bc\u03c0\u03c3\u03b8\u03c9"
_MATH = "\u2211\u222b\u221a\u221e\u2202\u2248\u2260\u00b1"


# -------------------------------------------------------------------------------- user pages


def _pymupdf():
    try:
        import pymupdf
    except ImportError as e:
        raise BackendUnavailableError("synthetic calibration pages need pymupdf: pip install pymupdf") from e
    return pymupdf


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        return directory_pages(path)  # the one rule of `dsocr run`: not recursive, hidden skipped, sorted
    if path.is_file():
        return [path]
    raise InputError(f"calibration pages: {path} does not exist")


def load_pages(sources: Iterable[str | Path], dpi: float = DEFAULT_DPI, limit: int | None = None) -> list[Image.Image]:
    """Files and directories -> RGB pages: every page of each PDF, every frame of each image file.
    A directory gives its page files as `dsocr run` does (runtime.inputs.directory_pages: the files
    directly in it, not subfolders, hidden ones skipped, sorted by name). `limit` keeps the first pages."""
    pages: list[Image.Image] = []
    for src in sources:
        for f in _files(Path(src)):
            if limit is not None and len(pages) >= limit:
                return pages
            if f.suffix.lower() == ".pdf":
                frames = (im for _, im in render_pdf(f, dpi=dpi))
            else:
                frames = (load_image(f, frame=i) for i in range(image_frame_count(f)))
            for im in frames:
                pages.append(im)
                if limit is not None and len(pages) >= limit:
                    return pages
    if not pages:
        raise InputError(f"no calibration pages (PDF or {', '.join(IMAGE_SUFFIXES)}) found in {list(sources)} "
                         "(directories are not searched recursively)")
    return pages


def page_set_hash(pages: Sequence[Image.Image]) -> str:
    """SHA-256 over the pages' sizes and pixels: the calibration cache's page-set key."""
    h = hashlib.sha256()
    for im in pages:
        im = im if im.mode == "RGB" else im.convert("RGB")
        h.update(f"{im.width}x{im.height};".encode())
        h.update(im.tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- synthetic pages


def _sentence(rng: random.Random, n: int) -> str:
    words = [rng.choice(_WORDS) for _ in range(n)]
    if rng.random() < 0.3:
        words.insert(rng.randrange(len(words)), f"{rng.randint(1, 9999)}.{rng.randint(0, 99):02d}")
    return " ".join(words).capitalize() + "."


def _paragraph(rng: random.Random, sentences: int) -> str:
    return " ".join(_sentence(rng, rng.randint(6, 16)) for _ in range(sentences))


class _Canvas:
    """One pymupdf page being drawn top to bottom; `y` is the next free line (points)."""

    def __init__(self, pymupdf, doc, width: int, height: int, rng: random.Random):
        self.fz, self.rng = pymupdf, rng
        self.page = doc.new_page(width=width, height=height)
        self.margin = max(18.0, width * 0.07)
        self.left, self.right = self.margin, width - self.margin
        self.y, self.bottom = self.margin, height - self.margin
        self.fonts = {n: pymupdf.Font(n) for n in ("helv", "hebo", "tiro", "cour", "symb")}

    def room(self, h: float) -> bool:
        return self.y + h <= self.bottom

    def text(self, rect, text, font: str = "tiro", size: float = 10.0, color=(0, 0, 0), align: int = 0) -> None:
        tw = self.fz.TextWriter(self.page.rect)
        font_obj = self.fonts[font] if isinstance(font, str) else font
        tw.fill_textbox(self.fz.Rect(rect), text, font=font_obj, fontsize=size, align=align)
        tw.write_text(self.page, color=color)

    def heading(self) -> None:
        size = self.rng.uniform(14, 22)
        self.text((self.left, self.y, self.right, self.y + size * 1.6), _sentence(self.rng, 5)[:-1], "hebo", size)
        self.y += size * 1.8

    def paragraph(self, left: float, right: float, lines: int, font: str = "tiro", size: float = 10.0) -> float:
        h = lines * size * 1.25
        self.text((left, self.y, right, self.y + h), _paragraph(self.rng, lines), font, size,
                  align=self.rng.choice((0, 3)))
        return h


def _prose(c: _Canvas) -> None:
    c.heading()
    while c.room(60):
        size = c.rng.uniform(8.5, 12)
        lines = c.rng.randint(3, 7)
        c.y += c.paragraph(c.left, c.right, lines, c.rng.choice(("tiro", "helv")), size) + size


def _columns(c: _Canvas) -> None:
    c.heading()
    n = c.rng.choice((2, 3))
    gap = 14
    width = (c.right - c.left - gap * (n - 1)) / n
    top = c.y
    for k in range(n):
        c.y = top
        x0 = c.left + k * (width + gap)
        while c.room(50):
            size = c.rng.uniform(7.5, 10)
            c.y += c.paragraph(x0, x0 + width, c.rng.randint(4, 9), "tiro", size) + size


def _table(c: _Canvas) -> None:
    c.heading()
    while c.room(80):
        rows, cols = c.rng.randint(3, 9), c.rng.randint(2, 6)
        row_h = c.rng.uniform(14, 22)
        h = min(rows * row_h, c.bottom - c.y)
        rows = max(2, int(h // row_h))
        shape = c.page.new_shape()
        xs = np.linspace(c.left, c.right, cols + 1)
        for r in range(rows + 1):
            shape.draw_line((c.left, c.y + r * row_h), (c.right, c.y + r * row_h))
        for x in xs:
            shape.draw_line((x, c.y), (x, c.y + rows * row_h))
        shape.finish(color=(0, 0, 0), width=c.rng.choice((0.5, 0.8, 1.2)))
        shape.commit()
        for r in range(rows):
            for k in range(cols):
                cell = (_sentence(c.rng, c.rng.randint(1, 2))[:-1] if r == 0 or k == 0
                        else f"{c.rng.uniform(-999, 9999):,.{c.rng.randint(0, 2)}f}")
                c.text((xs[k] + 3, c.y + r * row_h + 2, xs[k + 1] - 3, c.y + (r + 1) * row_h),
                       cell, "hebo" if r == 0 else "helv", row_h * 0.45)
        c.y += rows * row_h + 24
        if c.room(40):
            c.y += c.paragraph(c.left, c.right, 2, "tiro", 9) + 12


def _formula(c: _Canvas, x: float, size: float) -> None:
    """One display formula at (x, c.y): lhs = [sum] numerator/denominator + term^k, greek letters."""
    lhs, op, term, power = c.rng.choice(_FORMULAS)
    base = c.y + size * 1.4
    tw = c.fz.TextWriter(c.page.rect)
    fonts = c.fonts
    pos = tw.append((x, base), f"{lhs} {op} ", font=fonts["tiro"], fontsize=size)[1].x
    pos = tw.append((pos, base), c.rng.choice(_MATH[:2]), font=fonts["symb"], fontsize=size * 1.5)[1].x + 3
    num = f"{c.rng.choice(_GREEK)} + {c.rng.randint(1, 99)}"
    den = f"{c.rng.choice(_GREEK)}{c.rng.choice(_GREEK)} - 1"
    width = max(fonts["symb"].text_length(num, size), fonts["symb"].text_length(den, size)) + 4
    tw.append((pos + 2, base - size * 0.55), num, font=fonts["symb"], fontsize=size * 0.9)
    tw.append((pos + 2, base + size * 0.85), den, font=fonts["symb"], fontsize=size * 0.9)
    c.page.draw_line((pos, base - size * 0.3), (pos + width, base - size * 0.3), color=(0, 0, 0), width=0.7)
    pos += width + 4
    pos = tw.append((pos, base), f"+ {term}", font=fonts["tiro"], fontsize=size)[1].x
    tw.append((pos + 1, base - size * 0.45), power, font=fonts["tiro"], fontsize=size * 0.6)
    tw.write_text(c.page)


def _formulas(c: _Canvas) -> None:
    c.heading()
    while c.room(70):
        c.y += c.paragraph(c.left, c.right, c.rng.randint(2, 4), "tiro", 10) + 6
        size = c.rng.uniform(12, 18)
        _formula(c, c.left + c.rng.uniform(30, 120), size)
        c.y += size * 3.2


def _cjk_lines(rng: random.Random, chars_per_line: int, lines: int) -> list[str]:
    text = "".join(rng.choice(_HANZI) for _ in range(chars_per_line * lines))
    text = "".join(ch + ("\uff0c" if rng.random() < 0.06 else "") for ch in text)
    return [text[i:i + chars_per_line] for i in range(0, chars_per_line * lines, chars_per_line)]


def _cjk(c: _Canvas) -> None:
    try:
        font = c.fz.Font("china-s")  # MuPDF's built-in Droid Sans Fallback; absent from slim builds
    except Exception:  # no CJK font in this pymupdf build: draw prose instead
        return _prose(c)
    c.text((c.left, c.y, c.right, c.y + 30), "".join(c.rng.choice(_HANZI) for _ in range(10)), font, 18)
    c.y += 34
    while c.room(60):
        size = c.rng.uniform(9, 13)
        n_lines = c.rng.randint(3, 6)
        lines = _cjk_lines(c.rng, max(4, int((c.right - c.left) / (size * 1.05))), n_lines)
        c.text((c.left, c.y, c.right, c.y + n_lines * size * 1.5), lines, font, size)
        c.y += n_lines * size * 1.5 + size


def _photo_pixels(rng: random.Random, w: int, h: int) -> np.ndarray:
    """A photo-like RGB block [h, w, 3] uint8: a random colour gradient, soft blobs and sensor noise."""
    g = np.random.default_rng(rng.getrandbits(32))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c0, c1 = g.uniform(0, 255, 3), g.uniform(0, 255, 3)
    t = (xx / max(w - 1, 1) * g.uniform(0.2, 1) + yy / max(h - 1, 1) * g.uniform(0.2, 1))[..., None]
    img = c0 * (1 - t / t.max()) + c1 * (t / t.max())
    for _ in range(g.integers(2, 7)):
        cx, cy, r = g.uniform(0, w), g.uniform(0, h), g.uniform(0.05, 0.4) * max(w, h)
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))[..., None]
        img = img * (1 - 0.7 * blob) + g.uniform(0, 255, 3) * 0.7 * blob
    img = img + g.normal(0, g.uniform(2, 18), img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _photo(c: _Canvas, height: float | None = None) -> None:
    h = height or c.rng.uniform(120, 260)
    h = min(h, c.bottom - c.y - 20)
    if h < 40:
        return
    w = c.rng.uniform(0.5, 1.0) * (c.right - c.left)
    x0 = c.left + c.rng.uniform(0, c.right - c.left - w)
    pw, ph = max(8, int(w / 2)), max(8, int(h / 2))  # half resolution: upscaled like a JPEG figure
    pix = c.fz.Pixmap(c.fz.csRGB, pw, ph, _photo_pixels(c.rng, pw, ph).tobytes(), False)
    c.page.insert_image(c.fz.Rect(x0, c.y, x0 + w, c.y + h), pixmap=pix)
    c.y += h + 4
    c.text((x0, c.y, x0 + w, c.y + 14), "Figure " + str(c.rng.randint(1, 12)) + ": " + _sentence(c.rng, 6),
           "helv", 8)
    c.y += 20


def _photos(c: _Canvas) -> None:
    c.heading()
    while c.room(120):
        _photo(c)
        if c.room(50):
            c.y += c.paragraph(c.left, c.right, c.rng.randint(2, 4), "tiro", 10) + 10


def _mixed(c: _Canvas) -> None:
    c.heading()
    while c.room(90):
        part = c.rng.randrange(3)
        if part == 0:
            _photo(c, c.rng.uniform(90, 160))
        elif part == 1:
            _formula(c, c.left + 40, 14)
            c.y += 46
        else:
            c.y += c.paragraph(c.left, c.right, c.rng.randint(3, 6), "tiro", 10) + 10


_DRAW = {"prose": _prose, "columns": _columns, "table": _table, "formula": _formulas, "cjk": _cjk,
         "photo": _photos, "mixed": _mixed}


def synthetic_page(index: int, seed: int = 0, dpi: float = SYNTHETIC_DPI) -> Image.Image:
    """Page `index` of the synthetic set `seed`: its kind cycles through PAGE_KINDS, the rest is drawn
    from a generator seeded by (seed, index), so any page can be made on its own."""
    pymupdf = _pymupdf()
    rng = random.Random(seed * 1_000_003 + index)
    kind = PAGE_KINDS[index % len(PAGE_KINDS)]
    width, height = _SHAPES[rng.randrange(len(_SHAPES))] if kind != "columns" else _SHAPES[0]
    doc = pymupdf.open()
    try:
        _DRAW[kind](_Canvas(pymupdf, doc, width, height, rng))
        pix = doc[0].get_pixmap(dpi=int(dpi), alpha=False, colorspace=pymupdf.csRGB)
        return Image.frombytes("RGB", (pix.width, pix.height), pix.samples, "raw", "RGB", pix.stride)
    finally:
        doc.close()


def synthetic_pages(n: int = 8, seed: int = 0, dpi: float = SYNTHETIC_DPI) -> list[Image.Image]:
    """n deterministic synthetic pages covering every kind in PAGE_KINDS once n >= 7."""
    if n < 1:
        raise InputError(f"n={n} synthetic pages: need at least 1")
    return [synthetic_page(i, seed, dpi) for i in range(n)]


def calibration_pages(sources: Sequence[str | Path] = (), synthetic: int = 8, seed: int = 0,
                      limit: int | None = None) -> tuple[list[Image.Image], str]:
    """The user's pages if any are given, else `synthetic` built-in pages -> (pages, description)."""
    if sources:
        pages = load_pages(sources, limit=limit)
        return pages, f"{len(pages)} pages from {', '.join(str(s) for s in sources)}"
    pages = synthetic_pages(synthetic, seed)
    return pages, f"{len(pages)} synthetic pages (seed {seed})"
