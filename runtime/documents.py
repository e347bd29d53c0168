"""Documents, not only pages: one `<name>.md` per PDF, its pages joined by the official page-split
marker, and the keep-or-drop rule for pages whose generation looped.

The document is built from the pages' own files in the output directory (`<name>_pNNNN.md`), so it
resumes as the pages do: it is written (atomically) only once every page of the PDF is done, and
rebuilt by a later run that completes the missing pages. A page dropped for looping (its JSON says
`"dropped": true`) is left out of the document, as the official PDF script skips pages without EOS.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from .batch import WorkItem
from .errors import InputError
from .postprocess import PageResult, atomic_write_text

# The official PDF script writes `page + "\n" + "\n<--- Page Split --->" + "\n"` after every page.
PAGE_SPLIT = "\n<--- Page Split --->"
LOOPED_CHOICES = ("keep", "drop")


@dataclass(frozen=True)
class Document:
    source: Path  # the PDF
    pages: tuple[str, ...]  # page stems in page order

    @property
    def name(self) -> str:
        return self.source.stem

    @property
    def file_name(self) -> str:
        return f"{self.name}.md"


def documents(items: Iterable[WorkItem]) -> list[Document]:
    """The PDFs among the work items (only those whose pages could be listed), each with its pages."""
    pages: dict[Path, list[WorkItem]] = {}
    for item in items:
        if item.is_pdf and item.page is not None:
            pages.setdefault(item.source, []).append(item)
    return [Document(src, tuple(i.stem for i in sorted(its, key=lambda i: i.page))) for src, its in pages.items()]


def check_names(items: Iterable[WorkItem]) -> None:
    """Refuse inputs where a PDF's document `<name>.md` would overwrite a page's `<stem>.md`."""
    items = list(items)
    stems = {i.stem: i.source for i in items}
    for doc in documents(items):
        if doc.name in stems:
            raise InputError(f"{stems[doc.name]} and the document of {doc.source} would both write "
                             f"{doc.file_name}; rename one")


def join_pages(pages: Iterable[str]) -> str:
    """Page markdown texts -> one document, each page followed by the official page-split marker."""
    return "".join(f"{text.rstrip(chr(10))}\n{PAGE_SPLIT}\n" for text in pages)


def _page(out_dir: Path, stem: str) -> tuple[str, bool] | None:
    """(the page's markdown, dropped for looping) once the page is done, else None."""
    md = out_dir / f"{stem}.md"
    if not md.is_file():
        return None
    try:
        record = json.loads((out_dir / f"{stem}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        record = {}
    return md.read_text(encoding="utf-8"), isinstance(record, dict) and record.get("dropped") is True


def write_document(doc: Document, out_dir: str | Path) -> Path | None:
    """Write `<name>.md` when every page is done (unchanged content is not rewritten); -> its path or None."""
    out_dir = Path(out_dir)
    pages = [_page(out_dir, stem) for stem in doc.pages]
    if any(p is None for p in pages):
        return None
    path = out_dir / doc.file_name
    data = join_pages(text for text, dropped in pages if not dropped)
    if not path.is_file() or path.read_text(encoding="utf-8") != data:
        atomic_write_text(path, data)
    return path


def write_documents(items: Iterable[WorkItem], out_dir: str | Path) -> tuple[list[Path], list[Document]]:
    """-> (documents written or up to date, documents still waiting for pages)."""
    done, waiting = [], []
    for doc in documents(items):
        path = write_document(doc, out_dir)
        (done if path is not None else waiting).append(path or doc)
    return done, waiting


def apply_looped(result: PageResult, looped: str) -> PageResult:
    """keep: the page as generated; drop: a looped page keeps its JSON record (raw text, boxes,
    `"dropped": true`) but no markdown and no figures, and documents leave it out."""
    if looped not in LOOPED_CHOICES:
        raise InputError(f"looped={looped!r}; choose one of {', '.join(LOOPED_CHOICES)}")
    if looped == "keep" or result.stop_reason != "loop":
        return result
    return dataclasses.replace(result, markdown="", figures=[], dropped=True)
