"""What counts as a page source, and what a directory of pages is: one rule for `dsocr run` and for
calibration's `--calib`.

A directory gives the regular files directly in it (not recursive: subfolders are not searched, so
output names can never collide across folders and a symlink loop cannot be followed) whose suffix is
a PDF or image suffix (any case), hidden files (".name") skipped, sorted by name. Symlinks to files
count as files; FIFOs, sockets and devices never do.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
PDF_SUFFIX = ".pdf"


def is_page_source(path: str | Path) -> bool:
    suffix = Path(path).suffix.lower()
    return suffix == PDF_SUFFIX or suffix in IMAGE_SUFFIXES


def _regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:  # a dangling symlink, a file removed while listing, no permission
        return False


def directory_pages(directory: str | Path) -> list[Path]:
    """The page files of a directory, by the rule above."""
    directory = Path(directory)
    with os.scandir(directory) as it:
        names = sorted(e.name for e in it if not e.name.startswith("."))
    return [directory / n for n in names if is_page_source(n) and _regular(directory / n)]


def escape_bytes(raw: bytes) -> str:
    """Bytes -> UTF-8 text, every byte that is not part of valid UTF-8 written as %XX."""
    out, i = [], 0
    while i < len(raw):
        try:
            out.append(raw[i:].decode("utf-8"))
            break
        except UnicodeDecodeError as e:
            out.append(raw[i:i + e.start].decode("utf-8"))
            out.append("".join(f"%{b:02X}" for b in raw[i + e.start:i + e.end]))
            i += e.end
    return "".join(out)


def printable(text: str) -> str:
    """Text that may hold undecodable file-name bytes (surrogate escapes) -> valid UTF-8 text."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return escape_bytes(text.encode("utf-8", "surrogateescape" if _only_escapes(text) else "backslashreplace"))


def _only_escapes(text: str) -> bool:
    return all(not 0xD800 <= ord(c) <= 0xDFFF or 0xDC80 <= ord(c) <= 0xDCFF for c in text)


def display_path(path) -> str:
    """A path as printable UTF-8 text: bytes that are not UTF-8 become %XX (never a crash on write)."""
    return escape_bytes(os.fsencode(path))
