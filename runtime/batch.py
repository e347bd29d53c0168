"""Many pages: inputs -> work items (one per image, per PDF page, per frame of a multi-frame image)
-> OCR -> files, resumable.

Per item, in out_dir: `<stem>.md` (renamed into place last: its presence marks the page done),
`<stem>.json`, figures under images/ named `<stem>_<k>.jpg`. Stems: `name` for an image, `name_p0003`
for page index 3 (0-based) of name.pdf or frame 3 of a multi-frame TIFF/GIF. Bytes of a file name that
are not UTF-8 appear as %XX in stems and records; a stem too long for a file name is shortened with a
hash. Failures go to errors.jsonl, one JSON object a line, and the batch goes on.

The output directory is the user's: a run holds an exclusive lock on `<out>/.dsocr.lock` (a second
run on the same directory is refused with OutputBusyError), and deletes nothing but temp files of
its own name pattern (postprocess.TEMP_NAME), regular files only, never through a symlink. A write
that fails for lack of space, a read-only file system or permissions stops the batch with an
OutputError; finished pages stay.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from PIL import Image
from tqdm import tqdm

from .errors import DsocrError, InputError, OutputBusyError, OutputError, PDFError
from .inputs import IMAGE_SUFFIXES, PDF_SUFFIX, directory_pages  # noqa: F401 (IMAGE_SUFFIXES re-exported)
from .inputs import display_path, escape_bytes, is_page_source, printable
from .pdf import DEFAULT_DPI, pdf_page_count, render_pdf
from .postprocess import PageResult, is_temp_name, render_markdown, save_page
from .preprocess import image_frame_count, load_image

ERRORS_FILE = "errors.jsonl"
LOCK_FILE = ".dsocr.lock"
DEFAULT_MAX_PAGES = 10_000  # per input file (PDF pages, image frames)
MAX_STEM_BYTES = 245  # stem + ".json" or "_<k>.jpg" stays within a 255-byte file name
FATAL_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO})


def _stem_of(source: Path, page: int | None) -> str:
    base = escape_bytes(os.fsencode(source.stem))
    suffix = "" if page is None else f"_p{page:04d}"
    if len((base + suffix).encode("utf-8")) <= MAX_STEM_BYTES:
        return base + suffix
    digest = hashlib.sha256(os.fsencode(source.name)).hexdigest()[:10]
    room = MAX_STEM_BYTES - len(suffix) - len(digest) - 1
    return base.encode("utf-8")[:room].decode("utf-8", "ignore") + "~" + digest + suffix


@dataclass(frozen=True)
class WorkItem:
    source: Path
    page: int | None = None  # PDF page or image frame (0-based); None for a single image, or an unreadable file
    error: Exception | None = field(default=None, compare=False, repr=False)  # why it could not be listed

    @property
    def is_pdf(self) -> bool:
        return self.source.suffix.lower() == PDF_SUFFIX

    @property
    def stem(self) -> str:
        return _stem_of(self.source, self.page)


@dataclass
class BatchSummary:
    done: int = 0
    skipped: int = 0  # already complete from an earlier run
    failed: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)  # the records appended to errors.jsonl

    @property
    def total(self) -> int:
        return self.done + self.skipped + self.failed


def _expand(path: Path, max_pages: int) -> Iterator[WorkItem]:
    """One file -> its work items; a file that cannot be listed gives one item carrying the error."""
    try:
        count = pdf_page_count(path) if path.suffix.lower() == PDF_SUFFIX else image_frame_count(path)
    except DsocrError as e:
        yield WorkItem(path, error=e)  # fails in run_batch, which records it and goes on
        return
    except Exception as e:  # noqa: BLE001 - a parser's own error: still one record, never a stopped batch
        yield WorkItem(path, error=InputError(f"{display_path(path)}: cannot be read ({type(e).__name__}: {e})"))
        return
    if count > max_pages:
        what = "pages" if path.suffix.lower() == PDF_SUFFIX else "frames"
        yield WorkItem(path, error=InputError(
            f"{display_path(path)} has {count} {what}, more than the limit of {max_pages} (--max-pages); "
            "split the file or raise the limit"))
        return
    if count == 1 and path.suffix.lower() != PDF_SUFFIX:
        yield WorkItem(path)
        return
    for i in range(count):
        yield WorkItem(path, i)


def iter_inputs(paths: Iterable[str | Path], max_pages: int = DEFAULT_MAX_PAGES) -> Iterator[WorkItem]:
    """Files and directories -> work items. A directory gives its page files by the one rule of
    runtime.inputs (not recursive, hidden files skipped, sorted by name); a PDF gives one item per
    page and a multi-frame image one per frame, at most `max_pages` per file."""
    if isinstance(max_pages, bool) or not isinstance(max_pages, int) or max_pages < 1:
        raise InputError(f"max_pages={max_pages!r} must be a positive integer")
    for p in paths:
        p = Path(p)
        if p.is_dir():
            try:
                files = directory_pages(p)
            except OSError as e:
                raise InputError(f"{display_path(p)}: cannot list the directory ({e.strerror})") from None
            for f in files:
                yield from _expand(f, max_pages)
        elif p.is_file():
            if not is_page_source(p):
                raise InputError(f"{display_path(p)}: not a PDF or an image (.pdf, .png, .jpg, .jpeg, .webp, "
                                 ".bmp, .tif, .tiff, .gif)")
            yield from _expand(p, max_pages)
        else:
            raise InputError(f"{display_path(p)}: no such file or directory")


def collect_inputs(paths: Iterable[str | Path], max_pages: int = DEFAULT_MAX_PAGES) -> list[WorkItem]:
    """iter_inputs as a list, refusing inputs with nothing to read (InputError)."""
    paths = list(paths)
    items = list(iter_inputs(paths, max_pages))
    if not items:
        names = ", ".join(display_path(p) for p in paths[:5])
        raise InputError(f"nothing to read in {names}: no PDF or image files (.pdf, .png, .jpg, .jpeg, .webp, .bmp, "
                         ".tif, .tiff, .gif) directly inside (subfolders are not searched)")
    return items


def load_page(item: WorkItem, dpi: float = DEFAULT_DPI) -> Image.Image:
    """The RGB page image of a work item (EXIF orientation applied to images), through the one loader."""
    if item.error is not None:
        raise item.error
    if item.is_pdf:
        if item.page is None:
            pdf_page_count(item.source)  # raises the PDFError that kept it from expanding
            raise PDFError(f"{display_path(item.source)}: could not be read when the inputs were listed; run again")
        return next(render_pdf(item.source, dpi, pages=[item.page]))[1]
    return load_image(item.source, frame=item.page or 0)


def _unique(items: Iterable[WorkItem]) -> list[WorkItem]:
    """Drop repeats of the same file and page; refuse two sources that would write the same stem."""
    out, by_stem = [], {}
    for item in items:
        key = (item.source.resolve(), item.page)
        seen = by_stem.setdefault(item.stem, key)
        if seen != key:
            raise InputError(f"{display_path(seen[0])} and {display_path(item.source)} would both write "
                             f"{item.stem}.md; rename one")
        if len(by_stem) > len(out):  # a stem not seen before
            out.append(item)
    return out


# -- the output directory -------------------------------------------------------------------------
def _output_error(out_dir: Path, e: OSError, doing: str) -> OutputError:
    reason = e.strerror or str(e)
    hint = {errno.ENOSPC: "free some space", errno.EDQUOT: "free some space (quota)",
            errno.EROFS: "the file system is read-only: choose another -o"}.get(e.errno, "choose another -o")
    return OutputError(f"cannot write to {display_path(out_dir)} ({doing}): {reason}; {hint}. "
                       "Pages already finished are kept; run again to resume")


def prepare_output_dir(out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputError(f"-o {display_path(out_dir)}: exists and is not a directory") from None
    except NotADirectoryError:
        raise OutputError(f"-o {display_path(out_dir)}: a parent of it is a file, not a directory") from None
    except OSError as e:
        raise _output_error(out_dir, e, "creating the directory") from None
    if not out_dir.is_dir():
        raise OutputError(f"-o {display_path(out_dir)}: not a directory")
    return out_dir


@contextlib.contextmanager
def output_lock(out_dir: Path):
    """Hold an exclusive flock on out_dir/.dsocr.lock for the block; OutputBusyError if another run has it."""
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(out_dir / LOCK_FILE, flags, 0o666)
    except OSError as e:
        raise _output_error(out_dir, e, f"creating {LOCK_FILE}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise OutputBusyError(f"{display_path(out_dir)} is in use by another dsocr run (pid {owner}); wait for it "
                                  "to finish (run again then to resume) or use another -o") from None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays (removing it would race with a waiting run)


def remove_stale_temp(out_dir: Path, image_dir: str = "images") -> int:
    """Delete temp files an interrupted run of ours left in out_dir and out_dir/images: only names of
    our own pattern, only regular files, never following a symlink. Call it only under output_lock."""
    removed = 0
    for directory in (out_dir, out_dir / image_dir):
        if directory != out_dir and (directory.is_symlink() or not directory.is_dir()):
            continue
        with os.scandir(directory) as it:
            stale = [e for e in it if is_temp_name(e.name) and e.is_file(follow_symlinks=False)]
        for entry in stale:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed += 1
    return removed


# -- running ---------------------------------------------------------------------------------------
def _as_page_result(result: Any, image: Image.Image) -> PageResult:
    if isinstance(result, PageResult):
        return result
    if isinstance(result, str):  # raw model text
        return render_markdown(result, image)
    raise TypeError(f"ocr_fn returned {type(result).__name__}; expected a PageResult or the raw model text")


def _process(item: WorkItem, ocr_fn: Callable[[Image.Image], Any], out_dir: Path, dpi: float,
             on_page: "PageHook | None" = None) -> PageResult:
    image = load_page(item, dpi)
    result = _as_page_result(ocr_fn(image), image).with_figure_prefix(f"{item.stem}_")
    try:
        save_page(result, out_dir, item.stem, extra={"source": display_path(item.source), "page": item.page})
    except OSError as e:
        if e.errno in FATAL_WRITE_ERRNOS:
            raise _output_error(out_dir, e, f"saving {item.stem}") from e
        raise
    if on_page is not None:
        on_page(item, image, result)
    return result


def _record_error(out_dir: Path, item: WorkItem, error: BaseException) -> dict[str, Any]:
    record = {"source": display_path(item.source), "page": item.page, "stem": item.stem,
              "error": type(error).__name__, "message": printable(str(error)),
              "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
    try:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(out_dir / ERRORS_FILE, flags, 0o666)
        try:
            os.write(fd, line)  # one write per record: lines of concurrent writers never interleave
        finally:
            os.close(fd)
    except OSError as e:
        raise _output_error(out_dir, e, f"recording the failure of {item.stem} in {ERRORS_FILE}") from e
    return record


PageDone = Callable[[WorkItem, "PageResult | None"], None]
PageHook = Callable[[WorkItem, Image.Image, PageResult], None]  # called after a page's files are written


def run_batch(items: Iterable[WorkItem], ocr_fn: Callable[[Image.Image], Any], out_dir: str | Path,
              progress: bool = True, dpi: float = DEFAULT_DPI, on_page_done: PageDone | None = None,
              on_page: PageHook | None = None, status: Callable[[], str] | None = None) -> BatchSummary:
    """OCR every item not yet done (no `<stem>.md`) and write its files; a failing page is recorded in
    errors.jsonl and the batch goes on. `ocr_fn(page) -> PageResult` (or raw model text, which is
    post-processed here). `on_page(item, page, result)` runs after a page is saved (e.g. layout
    images); its failure is recorded like a page's (the page's files stay). `on_page_done(item,
    result)` is called after each page's files are in place (result None for a page done by an
    earlier run). status: extra text for the progress bar (e.g. tokens/s), asked once per page.
    KeyboardInterrupt stops the batch; run it again to resume. OutputBusyError: another run holds
    out_dir; OutputError: out_dir cannot be written."""
    items = _unique(items)
    out_dir = prepare_output_dir(out_dir)
    with output_lock(out_dir):
        try:
            remove_stale_temp(out_dir)
        except OSError as e:
            raise _output_error(out_dir, e, "removing stale temp files") from None
        return _run_locked(items, ocr_fn, out_dir, progress, dpi, on_page_done, on_page, status)


def _run_locked(items: list[WorkItem], ocr_fn, out_dir: Path, progress: bool, dpi: float,
                on_page_done: PageDone | None, on_page: PageHook | None,
                status: Callable[[], str] | None = None) -> BatchSummary:
    summary = BatchSummary()
    with tqdm(total=len(items), disable=not progress, unit="page", desc="dsocr") as bar:
        for item in items:
            bar.set_postfix_str(f"{item.stem} {status()}" if status else item.stem, refresh=False)
            result = None
            if (out_dir / f"{item.stem}.md").exists():
                summary.skipped += 1
            else:
                try:
                    result = _process(item, ocr_fn, out_dir, dpi, on_page)
                    summary.done += 1
                except OutputError:
                    raise
                except Exception as e:  # one bad page must not stop the batch
                    summary.failed += 1
                    summary.errors.append(_record_error(out_dir, item, e))
                    if progress:
                        tqdm.write(f"{item.stem}: {type(e).__name__}: {printable(str(e))}")
                    bar.update()
                    continue
            if on_page_done is not None:
                on_page_done(item, result)
            bar.update()
    return summary
