"""Layout images: each page with its grounding boxes and labels drawn (what the official scripts'
`_layouts.pdf` shows), so a person can judge a page at a glance rather than read box JSON.

Written as `layouts/<stem>.jpg` in the output directory, atomically. As in the official scripts: a
2-pixel outline (4 for titles) over a faint fill of the same colour, the label above the box's
top-left corner on a light backing. Colours are fixed per label (a hash), not random, so the same
label looks the same on every page and in every run.
"""
from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Iterable, Sequence

from PIL import Image, ImageDraw, ImageFont

from .batch import WorkItem, load_page
from .pdf import DEFAULT_DPI
from .postprocess import Box, PageResult, atomic_write_bytes, jpeg_bytes

LAYOUT_DIR = "layouts"
FILL_ALPHA = 20  # the official overlay's alpha
LABEL_HEIGHT = 15  # the label sits this far above the box (official)


def label_colour(label: str) -> tuple[int, int, int]:
    """A fixed colour per label, in the official ranges (r, g < 200, b < 256)."""
    h = zlib.crc32(label.encode("utf-8"))
    return h % 200, (h >> 8) % 200, (h >> 16) % 256


def draw_layout(page: Image.Image, boxes: Sequence[Box]) -> Image.Image:
    """A copy of `page` (RGB) with every box (page pixels) outlined, faintly filled and labelled."""
    out = page.convert("RGB")
    overlay = Image.new("RGBA", out.size, (0, 0, 0, 0))
    fill = ImageDraw.Draw(overlay)
    for b in boxes:
        fill.rectangle(b.xyxy, fill=label_colour(b.label) + (FILL_ALPHA,))
    out.paste(overlay, (0, 0), overlay)
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default()
    for b in boxes:
        colour = label_colour(b.label)
        draw.rectangle(b.xyxy, outline=colour, width=4 if b.label == "title" else 2)
        x, y = b.x1, max(0, b.y1 - LABEL_HEIGHT)
        left, top, right, bottom = draw.textbbox((x, y), b.label, font=font)
        draw.rectangle((left, top, right, bottom), fill=(255, 255, 255))
        draw.text((x, y), b.label, font=font, fill=colour)
    return out


def layout_path(out_dir: str | Path, stem: str) -> Path:
    return Path(out_dir) / LAYOUT_DIR / f"{stem}.jpg"


def save_layout(out_dir: str | Path, stem: str, page: Image.Image, boxes: Sequence[Box]) -> Path:
    return atomic_write_bytes(layout_path(out_dir, stem), jpeg_bytes(draw_layout(page, boxes)))


class LayoutWriter:
    """The run_batch `on_page` hook: draws each page as it is done (pages dropped for looping are not
    drawn). `catch_up` draws the pages done by an earlier run that have no layout image yet."""

    def __init__(self, out_dir: str | Path, dpi: float = DEFAULT_DPI):
        self.out_dir, self.dpi = Path(out_dir), dpi

    def __call__(self, item: WorkItem, page: Image.Image, result: PageResult) -> None:
        if not result.dropped:
            save_layout(self.out_dir, item.stem, page, result.boxes)

    def catch_up(self, items: Iterable[WorkItem]) -> int:
        """-> how many layout images were drawn from the pages' JSON records."""
        n = 0
        for item in items:
            record = self.out_dir / f"{item.stem}.json"
            if not (self.out_dir / f"{item.stem}.md").is_file() or layout_path(self.out_dir, item.stem).is_file():
                continue
            try:
                data = json.loads(record.read_text(encoding="utf-8"))
            except (OSError, ValueError):  # no readable record: nothing to draw from
                continue
            if not isinstance(data, dict) or data.get("dropped") is True:
                continue
            boxes = [Box(b["label"], *(int(v) for v in b["bbox"])) for b in data.get("boxes", [])]
            save_layout(self.out_dir, item.stem, load_page(item, self.dpi), boxes)
            n += 1
        return n
