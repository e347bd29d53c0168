"""Regenerate the sample page and PDF shipped in runtime/data (deterministic; run from the repo root)."""
from pathlib import Path

import pymupdf

OUT = Path(__file__).resolve().parents[1] / "runtime" / "data"

BODY = (
    "DeepSeek-OCR reads a page image and writes markdown. Its vision encoder compresses a page into a few "
    "hundred vision tokens, and a small mixture-of-experts decoder turns them back into text, tables and "
    "formulas. This sample page exists so that the toolkit can be tried on a fresh machine."
)


def page(doc: pymupdf.Document, title: str, n: int) -> None:
    p = doc.new_page(width=595, height=842)  # A4 in points
    p.insert_text((56, 80), title, fontsize=22, fontname="helv")
    p.insert_textbox(pymupdf.Rect(56, 110, 539, 300), BODY, fontsize=11, fontname="helv")
    y = 320
    for r, row in enumerate([("Mode", "Side", "Tokens"), ("Tiny", "512", "64"), ("Small", "640", "100"),
                             ("Base", "1024", "256"), ("Large", "1280", "400")]):
        for c, cell in enumerate(row):
            rect = pymupdf.Rect(56 + 140 * c, y + 22 * r, 196 + 140 * c, y + 22 * (r + 1))
            p.draw_rect(rect, width=0.6)
            p.insert_textbox(rect + (6, 4, 0, 0), cell, fontsize=10, fontname="helv")
    p.insert_text((56, 460), f"Page {n}: E = mc^2, sum_i x_i = 1.", fontsize=11, fontname="helv")


def main() -> None:
    doc = pymupdf.open()
    page(doc, "dsocr sample document", 1)
    page(doc, "Second page", 2)
    doc.save(OUT / "sample.pdf", garbage=4, deflate=True)
    pix = doc[0].get_pixmap(dpi=96, alpha=False)
    pix.save(OUT / "sample_page.png")


if __name__ == "__main__":
    main()
