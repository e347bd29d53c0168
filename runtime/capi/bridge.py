"""The Python half of libdsocr: what each C entry point of dsocr.h calls (pure runtime, no torch).

A Model holds a bundle's verified assets and its ONNX Runtime InferenceSessions, shared read-only by
every Session made from it (InferenceSession.run is thread-safe); a Session owns a Pipeline with its
own KV cache and IOBinding.
All graphs load when the Model is created. Exceptions are mapped to the C status codes by `status_of`.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .. import errors
from ..backends.ort import OrtBackend, SessionCache
from ..manifest import FORMAT_VERSION
from ..pipeline import BundleAssets, Pipeline, RunOptions
from ..postprocess import render_markdown
from ..preprocess import image_from_rgb, load_image

API_VERSION = 1  # DSOCR_API_VERSION in dsocr.h


class Status(enum.IntEnum):
    """Mirrors enum dsocr_status in dsocr.h (a test compares the two)."""

    OK = 0
    INVALID_ARGUMENT = 1
    IO = 2
    BAD_IMAGE = 3
    BAD_BUNDLE = 4
    MODE = 5
    BACKEND = 6
    CACHE_FULL = 7
    INTERNAL = 8
    PYTHON = 9
    OUT_OF_MEMORY = 10
    BUSY = 11


# First match wins: subclasses before their bases.
_STATUS: tuple[tuple[type[BaseException], Status], ...] = (
    (errors.ModeError, Status.MODE),
    (errors.ImageError, Status.BAD_IMAGE),
    (errors.PDFError, Status.BAD_IMAGE),
    (errors.CacheOverflowError, Status.CACHE_FULL),
    (errors.ManifestError, Status.BAD_BUNDLE),
    (errors.CheckpointError, Status.BAD_BUNDLE),
    (errors.BackendUnavailableError, Status.BACKEND),
    (errors.InputError, Status.INVALID_ARGUMENT),
    (MemoryError, Status.OUT_OF_MEMORY),
    (OSError, Status.IO),
)


def status_of(exc: BaseException) -> tuple[int, str]:
    """(status code, message) for an exception raised below a C entry point."""
    for kind, code in _STATUS:
        if isinstance(exc, kind):
            return int(code), str(exc) or type(exc).__name__
    return int(Status.INTERNAL), f"{type(exc).__name__}: {exc}"


def _count(name: str, value: int) -> int | None:
    """A non-negative C int option; 0 means 'the default' (None)."""
    if value < 0:
        raise errors.InputError(f"{name}={value} must be >= 0 (0: the default)")
    return value or None


class Model:
    def __init__(self, bundle_dir: str, device: str | None = None, threads: int = 0, max_seq_len: int = 0):
        path = Path(bundle_dir)
        if not path.is_dir():
            raise FileNotFoundError(f"bundle directory {path} does not exist")
        self.device = device or "cpu"
        self.threads = _count("threads", threads)
        self.max_seq_len = _count("max_seq_len", max_seq_len)
        self.assets = BundleAssets.load(path)
        # graph file -> InferenceSession, shared read-only by every Session of this model
        self.sessions = SessionCache(path, self.assets.manifest, device=self.device, threads=self.threads)
        self.sessions.load_all()  # every graph now: failures surface here, not mid-page

    def backend(self) -> OrtBackend:
        """A backend of its own (IOBinding, logits buffer) over the shared sessions."""
        return OrtBackend(self.assets.bundle_dir, self.assets.manifest, sessions=self.sessions)


class _Stop(Exception):
    """The host's streaming callback asked to stop."""


@dataclass(frozen=True)
class Result:
    markdown: str
    raw: str
    stop_reason: str
    n_generated: int
    boxes: list[tuple[str, int, int, int, int]]  # (label, x1, y1, x2, y2) in page pixels


class Session:
    def __init__(self, model: Model):
        self.pipe = Pipeline.from_assets(model.assets, model.backend(), model.max_seq_len)

    def _run(self, page, mode: str | None, prompt: str | None, ref: str | None, max_new_tokens: int,
             callback: Callable[[str], bool] | None) -> Result:
        n = _count("max_new_tokens", max_new_tokens)
        gen = self.pipe.generation_options(max_new_tokens=n)  # 0 (None): the bundle's default
        options = RunOptions(mode=mode or None, prompt=prompt or "document", ref=ref, generation=gen)
        streamed: list[str] = []

        def on_text(piece: str) -> None:
            streamed.append(piece)
            if callback is not None and callback(piece):
                raise _Stop

        try:
            raw, result = self.pipe.generate(page, options, on_text=on_text)
            stop, n_generated = str(result.stop_reason), len(result.ids)
        except _Stop:
            raw, stop, n_generated = "".join(streamed), "cancelled", 0
        out = render_markdown(raw, page)
        return Result(out.markdown, raw, stop, n_generated, [(b.label, *b.xyxy) for b in out.boxes])

    def run_encoded(self, data, mode, prompt, ref, max_new_tokens, callback) -> Result:
        """data: a buffer over the host's bytes, valid during the call only (load_image copies it)."""
        return self._run(load_image(data), mode, prompt, ref, max_new_tokens, callback)

    def run_rgb(self, data, width: int, height: int, stride: int, mode, prompt, ref, max_new_tokens,
                callback) -> Result:
        """data: a buffer over the host's pixels, valid during the call only (image_from_rgb copies it)."""
        page = image_from_rgb(data, width, height, stride or None)
        return self._run(page, mode, prompt, ref, max_new_tokens, callback)


def bundle_format_version() -> int:
    return FORMAT_VERSION
