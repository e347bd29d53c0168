"""Many pages: inputs -> work items (one per image, one per PDF page) -> OCR -> files, resumable.

Per item, in out_dir: `<stem>.md` (written last: its presence marks the page done), `<stem>.json`,
figures under images/ named `<stem>_<k>.jpg`. Stems: `name` for an image, `name_p0003` for page
index 3 (0-based) of name.pdf. Failures go to errors.jsonl, one JSON object a line, and the batch goes on.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from PIL import Image, ImageOps
from tqdm import tqdm

from .errors import ImageError, InputError, PDFError
from .pdf import DEFAULT_DPI, pdf_page_count, render_pdf
from .postprocess import PageResult, render_markdown, save_page

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
PDF_SUFFIX = ".pdf"
ERRORS_FILE = "errors.jsonl"


@dataclass(frozen=True)
class WorkItem:
    source: Path
    page: int | None = None  # PDF page index (0-based); None for an image, or for a PDF that would not open

    @property
    def is_pdf(self) -> bool:
        return self.source.suffix.lower() == PDF_SUFFIX

    @property
    def stem(self) -> str:
        return self.source.stem if self.page is None else f"{self.source.stem}_p{self.page:04d}"


@dataclass
class BatchSummary:
    done: int = 0
    skipped: int = 0  # already complete from an earlier run
    failed: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)  # the records appended to errors.jsonl

    @property
    def total(self) -> int:
        return self.done + self.skipped + self.failed


def _supported(path: Path) -> bool:
    suffix = path.suffix.lower()
    return suffix == PDF_SUFFIX or suffix in IMAGE_SUFFIXES


def _expand(path: Path) -> Iterator[WorkItem]:
    if path.suffix.lower() != PDF_SUFFIX:
        yield WorkItem(path)
        return
    try:
        count = pdf_page_count(path)
    except PDFError:
        yield WorkItem(path)  # fails again in run_batch, which records it and goes on
        return
    for i in range(count):
        yield WorkItem(path, i)


def iter_inputs(paths: Iterable[str | Path]) -> Iterator[WorkItem]:
    """Files and directories -> work items. A directory gives its images and PDFs (by extension,
    sorted by name, not recursive, hidden files skipped); a PDF gives one item per page."""
    for p in paths:
        p = Path(p)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith(".") and _supported(f))
            for f in files:
                yield from _expand(f)
        elif p.is_file():
            if not _supported(p):
                raise InputError(f"{p}: not a PDF or an image ({', '.join(sorted(IMAGE_SUFFIXES))})")
            yield from _expand(p)
        else:
            raise InputError(f"{p}: no such file or directory")


def load_page(item: WorkItem, dpi: float = DEFAULT_DPI) -> Image.Image:
    """The RGB page image of a work item (EXIF orientation applied to images)."""
    if item.is_pdf:
        if item.page is None:
            pdf_page_count(item.source)  # raises the PDFError that kept it from expanding
            raise PDFError(f"{item.source}: could not be read when the inputs were listed; run again")
        return next(render_pdf(item.source, dpi, pages=[item.page]))[1]
    try:
        with Image.open(item.source) as im:
            return ImageOps.exif_transpose(im).convert("RGB")
    except Exception as e:  # UnidentifiedImageError, truncated data, decompression bomb, ...
        raise ImageError(f"{item.source}: cannot read the image ({type(e).__name__}: {e})") from e


def _unique(items: Iterable[WorkItem]) -> list[WorkItem]:
    """Drop repeats of the same file and page; refuse two sources that would write the same stem."""
    out, by_stem = [], {}
    for item in items:
        key = (item.source.resolve(), item.page)
        seen = by_stem.setdefault(item.stem, key)
        if seen != key:
            raise InputError(f"{seen[0]} and {item.source} would both write {item.stem}.md; rename one")
        if len(by_stem) > len(out):  # a stem not seen before
            out.append(item)
    return out


def remove_stale_temp(out_dir: Path) -> int:
    """Delete temp files (`.name.XXXX.tmp`) an interrupted run left in out_dir or its subfolders."""
    stale = [*out_dir.glob(".*.tmp"), *out_dir.glob("*/.*.tmp")]
    for f in stale:
        f.unlink(missing_ok=True)
    return len(stale)


def _as_page_result(result: Any, image: Image.Image) -> PageResult:
    if isinstance(result, PageResult):
        return result
    if isinstance(result, str):  # raw model text
        return render_markdown(result, image)
    raise TypeError(f"ocr_fn returned {type(result).__name__}; expected a PageResult or the raw model text")


def _process(item: WorkItem, ocr_fn: Callable[[Image.Image], Any], out_dir: Path, dpi: float) -> None:
    image = load_page(item, dpi)
    result = _as_page_result(ocr_fn(image), image).with_figure_prefix(f"{item.stem}_")
    save_page(result, out_dir, item.stem, extra={"source": str(item.source), "page": item.page})


def _record_error(out_dir: Path, item: WorkItem, error: Exception) -> dict[str, Any]:
    record = {"source": str(item.source), "page": item.page, "stem": item.stem,
              "error": type(error).__name__, "message": str(error),
              "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    with open(out_dir / ERRORS_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return record


def run_batch(items: Iterable[WorkItem], ocr_fn: Callable[[Image.Image], Any], out_dir: str | Path,
              progress: bool = True, dpi: float = DEFAULT_DPI,
              status: Callable[[], str] | None = None) -> BatchSummary:
    """OCR every item not yet done (no `<stem>.md`) and write its files; a failing page is recorded in
    errors.jsonl and the batch goes on. `ocr_fn(page) -> PageResult` (or raw model text, which is
    post-processed here). KeyboardInterrupt stops the batch; run it again to resume.
    status: extra text for the progress bar (e.g. tokens/s), asked once per page."""
    items = _unique(items)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temp(out_dir)
    summary = BatchSummary()
    with tqdm(total=len(items), disable=not progress, unit="page", desc="dsocr") as bar:
        for item in items:
            bar.set_postfix_str(f"{item.stem} {status()}" if status else item.stem, refresh=False)
            if (out_dir / f"{item.stem}.md").exists():
                summary.skipped += 1
            else:
                try:
                    _process(item, ocr_fn, out_dir, dpi)
                    summary.done += 1
                except Exception as e:  # one bad page must not stop the batch
                    summary.failed += 1
                    summary.errors.append(_record_error(out_dir, item, e))
                    if progress:
                        tqdm.write(f"{item.stem}: {type(e).__name__}: {e}")
            bar.update()
    return summary
