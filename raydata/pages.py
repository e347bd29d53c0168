"""Inputs -> page rows (the `flat_map` step): PDFs rendered with pymupdf at the same DPI and page
limits as `dsocr run` (runtime.batch.load_page), images passed through as their file bytes.

A row: source (str), page (int; -1 for an image), stem (the name `dsocr run` gives the page), image
(PNG or the image file's bytes; b"" when there is none), error ("" or "ErrorType: message"),
status ("todo", "skipped" when out_dir already holds the page, "error").
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Iterable

from dsocr.runtime.batch import IMAGE_SUFFIXES, PDF_SUFFIX, WorkItem, iter_inputs, load_page
from dsocr.runtime.errors import InputError
from dsocr.runtime.pdf import DEFAULT_DPI

NO_PAGE = -1


def list_pages(sources: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Files -> {"path", "page", "stem"} rows, one per PDF page (the driver opens each PDF to count
    its pages; a PDF that will not open stays one row, page -1, and becomes an error row later)."""
    return [{"path": str(item.source), "page": NO_PAGE if item.page is None else item.page, "stem": item.stem}
            for item in iter_inputs(sources)]


def list_sources(paths: Iterable[str | Path]) -> list[str]:
    """Files and directories -> the image and PDF files, as `dsocr run` takes them (a directory: its
    supported files sorted by name, not recursive, hidden ones skipped). Opens nothing."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out += [str(f) for f in sorted(p.iterdir()) if f.is_file() and not f.name.startswith(".")
                    and (f.suffix.lower() == PDF_SUFFIX or f.suffix.lower() in IMAGE_SUFFIXES)]
        elif p.is_file():
            out.append(str(p))
        else:
            raise InputError(f"{p}: no such file or directory")
    return out


def _row(item: WorkItem, image: bytes = b"", error: str = "", status: str = "todo") -> dict[str, Any]:
    return {"source": str(item.source), "page": NO_PAGE if item.page is None else item.page, "stem": item.stem,
            "image": image, "error": error, "status": status}


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def pages_of(row: dict[str, Any], dpi: float = DEFAULT_DPI, out_dir: str | None = None) -> list[dict[str, Any]]:
    """{"path": file} -> one row per page ({"path": pdf, "page": i} -> that page only). A file that
    cannot be read (a corrupt PDF, an unsupported file) gives one error row instead of failing the
    job; pages whose `<stem>.md` is already in out_dir are "skipped" rows without an image."""
    path = Path(row.get("path") or row["source"])
    page = row.get("page")
    try:
        if page is not None and int(page) != NO_PAGE:
            items = [WorkItem(path, int(page))]
        else:
            items = list(iter_inputs([path]))
    except InputError as e:
        return [_row(WorkItem(path), error=f"{type(e).__name__}: {e}", status="error")]
    rows = []
    for item in items:
        if out_dir is not None and (Path(out_dir) / f"{item.stem}.md").exists():
            rows.append(_row(item, status="skipped"))
            continue
        try:
            image = _png(load_page(item, dpi)) if item.is_pdf else item.source.read_bytes()
            rows.append(_row(item, image=image))
        except Exception as e:  # noqa: BLE001 - PDFError, ImageError, OSError: one error row, the job goes on
            rows.append(_row(item, error=f"{type(e).__name__}: {e}", status="error"))
    return rows
