"""Grounded model output -> a clean markdown page, labelled boxes in page pixels, figure crops.

Grounding format: `<|ref|>LABEL<|/ref|><|det|>[[x1, y1, x2, y2], ...]<|/det|>`, coordinates in 0..999
bins of the original page (no correction for padding). Pixels: x = int(v / 999 * W), y = int(v / 999 * H)
(truncation), clamped to the page. Boxes are (x1, y1, x2, y2) with x1 <= x2, y1 <= y2.
"""
from __future__ import annotations

import ast
import dataclasses
import io
import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

EOS_TEXT = "<｜end▁of▁sentence｜>"
FIGURE_LABEL = "image"
BINS = 999
JPEG_QUALITY = 95
GROUNDING = re.compile(r"<\|ref\|>(.*?)<\|/ref\|><\|det\|>(.*?)<\|/det\|>", re.DOTALL)
STRAY_TAGS = re.compile(r"<\|/?(?:ref|det|grounding)\|>")  # tags left over from unmatched blocks
MANY_NEWLINES = re.compile(r"\n{3,}")


@dataclass(frozen=True)
class Box:
    label: str
    x1: int
    y1: int
    x2: int
    y2: int

    @property
    def xyxy(self) -> tuple[int, int, int, int]:
        return self.x1, self.y1, self.x2, self.y2

    @property
    def area(self) -> int:
        return (self.x2 - self.x1) * (self.y2 - self.y1)

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "bbox": list(self.xyxy)}


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def parse_coords(det_text: str) -> list[tuple[float, float, float, float]]:
    """The text between <|det|> and <|/det|> -> boxes in bins. Read with ast.literal_eval (never eval);
    a malformed list gives []; malformed entries inside a good list are skipped. A bare [x1,y1,x2,y2]
    counts as one box."""
    try:
        value = ast.literal_eval(det_text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return []
    if not isinstance(value, (list, tuple)):
        return []
    if len(value) == 4 and all(_is_number(v) for v in value):
        value = [value]
    return [tuple(float(v) for v in c) for c in value
            if isinstance(c, (list, tuple)) and len(c) == 4 and all(_is_number(v) for v in c)]


def to_box(label: str, coords: tuple[float, float, float, float], size: tuple[int, int] | None) -> Box:
    """Bins -> page pixels (size = (W, H)); size None keeps integer bins in 0..999."""
    w, h = size if size is not None else (BINS, BINS)
    scale = (lambda v, n: int(v / BINS * n)) if size is not None else (lambda v, n: int(v))
    x1, x2 = sorted(min(max(scale(v, w), 0), w) for v in (coords[0], coords[2]))
    y1, y2 = sorted(min(max(scale(v, h), 0), h) for v in (coords[1], coords[3]))
    return Box(label, x1, y1, x2, y2)


@dataclass(frozen=True)
class PageResult:
    markdown: str  # clean text: grounding tags removed, figures referenced as ![](image_dir/name)
    raw: str  # the model's text as generated
    boxes: list[Box]  # every grounded box, in page pixels (bins when no page was given)
    figures: list[tuple[str, Image.Image]]  # (file name under image_dir, crop), one per figure box
    width: int | None = None  # page size in pixels
    height: int | None = None
    image_dir: str = "images"
    stop_reason: str | None = None  # from the generation, when known
    n_generated: int | None = None

    def with_generation(self, result) -> PageResult:
        """Record a GenerationResult's stop reason and length."""
        return dataclasses.replace(self, stop_reason=str(result.stop_reason), n_generated=len(result.ids))

    def with_figure_prefix(self, prefix: str) -> PageResult:
        """Rename every figure to prefix + name and rewrite its references in the markdown."""
        if not prefix or not self.figures:
            return self
        names = {name: prefix + name for name, _ in self.figures}
        alternatives = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
        ref = re.compile(r"\]\(" + re.escape(self.image_dir) + "/(" + alternatives + r")\)")
        markdown = ref.sub(lambda m: f"]({self.image_dir}/{names[m.group(1)]})", self.markdown)
        figures = [(names[name], crop) for name, crop in self.figures]
        return dataclasses.replace(self, markdown=markdown, figures=figures)

    def to_dict(self) -> dict[str, Any]:
        return {
            "width": self.width,
            "height": self.height,
            "boxes": [b.to_dict() for b in self.boxes],
            "figures": [f"{self.image_dir}/{name}" for name, _ in self.figures],
            "stop_reason": self.stop_reason,
            "n_generated": self.n_generated,
            "raw": self.raw,
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=indent)


def strip_eos(text: str) -> str:
    body = text.rstrip()
    return body[: -len(EOS_TEXT)] if body.endswith(EOS_TEXT) else text


def clean_text(text: str) -> str:
    """Remove stray grounding tags, fix the two LaTeX colon macros, collapse 3+ newlines to two."""
    text = STRAY_TAGS.sub("", text)
    text = text.replace("\\coloneqq", ":=").replace("\\eqqcolon", "=:")
    text = MANY_NEWLINES.sub("\n\n", text).strip("\n")
    return text + "\n" if text.strip() else ""


def render_markdown(raw_text: str, page: Image.Image | None, image_dir_name: str = "images",
                    prefix: str = "") -> PageResult:
    """Raw grounded output -> PageResult.

    Each `image` box is cropped from `page` and its whole tag is replaced by one
    `![](image_dir_name/{prefix}{k}.jpg)\\n` line per box, k counting figures (so crops and references
    never diverge). Every other tag is deleted and the text between tags kept. With page None, boxes
    stay in bins and no figure is cropped or referenced; empty figure boxes are not cropped either.
    """
    size = page.size if page is not None else None  # (W, H)
    boxes: list[Box] = []
    figures: list[tuple[str, Image.Image]] = []

    def replace(match: re.Match) -> str:
        label = match.group(1).strip()
        refs = []
        for coords in parse_coords(match.group(2)):
            box = to_box(label, coords, size)
            boxes.append(box)
            if label == FIGURE_LABEL and page is not None and box.area > 0:
                name = f"{prefix}{len(figures)}.jpg"
                figures.append((name, page.crop(box.xyxy)))
                refs.append(f"![]({image_dir_name}/{name})\n")
        return "".join(refs)

    text = GROUNDING.sub(replace, strip_eos(raw_text))
    return PageResult(markdown=clean_text(text), raw=raw_text, boxes=boxes, figures=figures,
                      width=size[0] if size else None, height=size[1] if size else None,
                      image_dir=image_dir_name)


# -- writing ---------------------------------------------------------------------------------------
TEMP_PREFIX, TEMP_SUFFIX = ".dsocr-", ".tmp"  # temp names of our own: .dsocr-<12 hex>.tmp (22 bytes)
TEMP_NAME = re.compile(r"\.dsocr-[0-9a-f]{12}\.tmp\Z")


def is_temp_name(name: str) -> bool:
    """Whether `name` is one of the temp names this module creates (the only files a cleanup may delete)."""
    return TEMP_NAME.match(name) is not None


def _write_temp(directory: Path, data: bytes) -> Path:
    """data -> a new temp file in directory (short name of our own, never an existing file or a symlink),
    created with the umask's permissions as open() would, written and fsync'ed."""
    directory.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    while True:
        tmp = directory / f"{TEMP_PREFIX}{secrets.token_hex(6)}{TEMP_SUFFIX}"
        try:
            fd = os.open(tmp, flags, 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write to a temp file in the same directory, fsync, then os.replace: readers see the old file
    or the whole new one, never a part. The temp file is removed if anything fails."""
    path = Path(path)
    tmp = _write_temp(path.parent, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def jpeg_bytes(image: Image.Image, quality: int = JPEG_QUALITY) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def save_page(result: PageResult, out_dir: str | Path, stem: str, extra: dict[str, Any] | None = None) -> Path:
    """Write a page's figures (out_dir/image_dir/*.jpg), `stem.json` (boxes and metadata, plus `extra`)
    and `stem.md`: all under temp names first, then renamed into place, `stem.md` last, so an existing
    `stem.md` means the page is complete; on any failure no temp file is left. -> the .md path."""
    out_dir = Path(out_dir)
    record = {**(extra or {}), **result.to_dict()}
    staged: list[tuple[Path, Path]] = []  # (temp, final), renamed in this order
    try:
        for name, crop in result.figures:
            final = out_dir / result.image_dir / name
            staged.append((_write_temp(final.parent, jpeg_bytes(crop)), final))
        text = json.dumps(record, ensure_ascii=False, indent=2) + "\n"
        staged.append((_write_temp(out_dir, text.encode("utf-8")), out_dir / f"{stem}.json"))
        staged.append((_write_temp(out_dir, result.markdown.encode("utf-8")), out_dir / f"{stem}.md"))
        for tmp, final in staged:
            os.replace(tmp, final)
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(out_dir)
    return out_dir / f"{stem}.md"
