"""The Python half of libdsocr: what each C entry point of dsocr.h calls (pure runtime, no torch).

A Model holds a bundle's verified assets and its graph sessions (ONNX Runtime: one SessionCache shared
by every backend; TensorRT: the bundle's plans), shared by every Session made from it. Every page goes
through a runtime.engine.BatchEngine: with max_batch = 0 each Session has an engine of its own (one
slot, one KV cache, as in API version 1); with max_batch = N the Sessions of a Model share one engine
with N slots, so pages of sessions on different threads are decoded together. A Session submits its
page and waits for the future (the wait releases the GIL); streamed text comes back to the calling
thread through a queue, so the host's callback runs on its own thread and a callback asking to stop
becomes BatchEngine.cancel. Exceptions are mapped to the C status codes by `status_of`.
"""
from __future__ import annotations

import enum
import queue
import re
import threading
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .. import __version__, errors
from ..backends.base import Backend
from ..decoding import GenerationOptions
from ..engine import BatchEngine
from ..manifest import FORMAT_VERSION
from ..pipeline import BACKENDS, BundleAssets, Pipeline, RunOptions, open_backend
from ..postprocess import jpeg_bytes, render_markdown
from ..preprocess import image_from_rgb, load_image

API_VERSION = 2  # DSOCR_API_VERSION in dsocr.h
VERSION = __version__  # dsocr_version()
MAX_BATCH = 256  # the most slots dsocr_model_options.max_batch may ask for
CANCELLED = "cancelled"
FIGURE_PREFIX = re.compile(r"[A-Za-z0-9._-]{0,64}")


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


# The table of dsocr.h's ERRORS comment. First match wins: subclasses before their bases.
_STATUS: tuple[tuple[type[BaseException], Status], ...] = tuple((kind, code) for kind, code in (
    (errors.ModeError, Status.MODE),
    (errors.ImageError, Status.BAD_IMAGE),
    (errors.PDFError, Status.BAD_IMAGE),
    (errors.CacheOverflowError, Status.CACHE_FULL),
    (errors.EngineMismatchError, Status.BACKEND),
    (getattr(errors, "BundleError", None), Status.BAD_BUNDLE),
    (errors.ManifestError, Status.BAD_BUNDLE),
    (errors.CheckpointError, Status.BAD_BUNDLE),
    (errors.BackendUnavailableError, Status.BACKEND),
    (errors.InputError, Status.INVALID_ARGUMENT),
    (UnicodeError, Status.INVALID_ARGUMENT),
    (MemoryError, Status.OUT_OF_MEMORY),
    (OSError, Status.IO),
) if kind is not None)

_REPR = re.compile(r"\s*<[^<>\n]*\bat 0x[0-9a-fA-F]+>")  # `<_io.BytesIO object at 0x7f...>`
_ADDRESS = re.compile(r"\b0x[0-9a-fA-F]{6,}\b")


def scrub(message: str) -> str:
    """A message without object reprs or memory addresses (they mean nothing to a C caller)."""
    return _ADDRESS.sub("an address", _REPR.sub("", message))


def status_of(exc: BaseException) -> tuple[int, str]:
    """(status code, message) for an exception raised below a C entry point."""
    for kind, code in _STATUS:
        if isinstance(exc, kind):
            return int(code), scrub(str(exc)) or type(exc).__name__
    return int(Status.INTERNAL), scrub(f"internal error, please report it: {type(exc).__name__}: {exc}")


def _count(name: str, value: int, limit: int | None = None) -> int | None:
    """A non-negative C int option; 0 means 'the default' (None)."""
    if value < 0 or (limit is not None and value > limit):
        bound = f" and <= {limit}" if limit is not None else ""
        raise errors.InputError(f"{name}={value} must be >= 0{bound} (0: the default)")
    return value or None


def run_options(mode: str | None = None, prompt: str | None = None, ref: str | None = None, max_new_tokens: int = 0,
                ngram_size: int = 0, ngram_window: int = 0, max_tiles: int = 0,
                loop_detection: int = 0, generation: Callable[..., GenerationOptions] = GenerationOptions) -> RunOptions:
    """dsocr_run_options -> RunOptions; 0 (and NULL) mean the default, as documented in dsocr.h.
    generation(**given) makes the decode options from the fields given (a Pipeline's
    generation_options: the bundle's generation_defaults for the rest)."""
    gen: dict = {}
    if n := _count("max_new_tokens", max_new_tokens):
        gen["max_new_tokens"] = n
    if ngram_size < -1:
        raise errors.InputError(f"ngram_size={ngram_size}: use 0 (the default), -1 (off) or an n-gram size")
    if ngram_size:
        gen["ngram_size"] = max(ngram_size, 0)
    if window := _count("ngram_window", ngram_window):
        gen["ngram_window"] = window
    if loop_detection not in (-1, 0, 1):
        raise errors.InputError(f"loop_detection={loop_detection}: use 0 (the default), 1 (on) or -1 (off)")
    if loop_detection:
        gen["loop_detection"] = loop_detection > 0
    tiles = _count("max_tiles", max_tiles)  # None: the mode's (OCR-1 9, OCR-2 6)
    return RunOptions(mode=mode or None, prompt=prompt or "document", ref=ref, max_tiles=tiles,
                      generation=generation(**gen))


def decode_image(data) -> object:
    """Encoded bytes -> a page. Any failure of a decoder on these bytes (NotImplementedError for some
    DDS variants, struct.error, ...) is the image's fault: ImageError."""
    try:
        return load_image(data)
    except (errors.DsocrError, MemoryError):
        raise
    except Exception as e:  # noqa: BLE001 - untrusted bytes: whatever the decoder raises
        raise errors.ImageError(f"image data could not be decoded ({type(e).__name__}: {scrub(str(e))})") from None


class Model:
    def __init__(self, bundle_dir: str, device: str | None = None, backend: str | None = None, threads: int = 0,
                 max_seq_len: int = 0, max_batch: int = 0):
        self.backend_name = backend or "ort"
        if self.backend_name not in BACKENDS:
            raise errors.InputError(f"backend={self.backend_name!r}; choose one of {', '.join(BACKENDS)}")
        if self.backend_name == "tensorrt" and device not in (None, "cuda"):
            raise errors.InputError(f"device={device!r}: the tensorrt backend runs its plans on CUDA; "
                                    "leave device NULL (or \"cuda\"), or use backend \"ort\"")
        self.device = device or ("cuda" if self.backend_name == "tensorrt" else "cpu")
        self.threads = _count("threads", threads)
        self.max_seq_len = _count("max_seq_len", max_seq_len)
        self.max_batch = _count("max_batch", max_batch, MAX_BATCH)
        path = Path(bundle_dir)
        if not path.is_dir():
            raise FileNotFoundError(f"bundle directory {path} does not exist")
        self._lock = threading.RLock()  # attach() builds the shared pipeline under it, which takes the spare
        self.assets = BundleAssets.load(path)
        self._shared: BatchEngine | None = None
        self._users = 1  # this Model plus the Sessions on the shared engine
        self._spare: Backend | None = None
        if self.backend_name == "ort":
            from ..backends.ort import SessionCache

            # graph file -> InferenceSession, shared read-only by every backend of this model
            self.sessions = SessionCache(path, self.assets.manifest, device=self.device, threads=self.threads)
            self._spare = self.backend()
            self.sessions.load_all(self._spare.graph_keys())  # every graph it runs now: failures surface here
        else:
            self._spare = self.backend()  # loads and checks the plans now; the first pipeline gets it

    def backend(self) -> Backend:
        """A backend of its own (bindings, buffers) over the model's shared graph sessions."""
        with self._lock:
            spare, self._spare = self._spare, None
        if spare is not None:
            return spare
        if self.backend_name == "ort":
            from ..backends.ort import OrtBackend

            return OrtBackend(self.assets.bundle_dir, self.assets.manifest, sessions=self.sessions)
        return open_backend(self.assets.bundle_dir, self.assets.manifest, self.backend_name, self.device, self.threads)

    def pipeline(self) -> Pipeline:
        return Pipeline.from_assets(self.assets, self.backend(), self.max_seq_len)

    def attach(self) -> BatchEngine:
        """The engine a new Session submits to: the shared one (max_batch > 0) or one of its own."""
        if not self.max_batch:
            return BatchEngine(self.pipeline(), max_batch=1).start()
        with self._lock:
            if self._shared is None:
                self._shared = BatchEngine(self.pipeline(), max_batch=self.max_batch).start()
            self._users += 1
            return self._shared

    def detach(self, engine: BatchEngine) -> None:
        """A Session (or, with engine None, this Model) is done; the last user closes the shared engine."""
        if engine is not None and engine is not self._shared:
            _close(engine)
            return
        with self._lock:
            self._users -= 1
            last, shared = self._users == 0, self._shared
            if last:
                self._shared = None
        if last and shared is not None:
            _close(shared)

    def close(self) -> None:
        """dsocr_model_destroy: Sessions still alive keep the shared engine running."""
        closed, self._closed = getattr(self, "_closed", False), True
        if not closed:
            self.detach(None)


def _close(engine: BatchEngine) -> None:
    engine.close(cancel_pending=True)
    engine.pipeline.backend.close()


@dataclass(frozen=True)
class Result:
    markdown: str
    raw: str
    stop_reason: str
    n_generated: int
    boxes: list[tuple[str, int, int, int, int]]  # (label, x1, y1, x2, y2) in page pixels
    figures: list[tuple[str, bytes, int, int]]  # (name, JPEG bytes, width, height)


_DONE = object()


class Session:
    def __init__(self, model: Model):
        self.model = model
        self.engine = model.attach()
        self.pipe = self.engine.pipeline
        self._closed = False

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.model.detach(self.engine)

    def _wait(self, future: Future, callback: Callable[[str], bool] | None, pieces: queue.SimpleQueue | None):
        """-> (raw text, stop reason, ids generated). Streams pieces to `callback` on this thread until
        the future is done; a callback asking to stop cancels the page in the engine."""
        delivered: list[str] = []
        stopped = False
        if pieces is not None:
            future.add_done_callback(lambda _: pieces.put(_DONE))
            try:
                while (piece := pieces.get()) is not _DONE:  # blocks with the GIL released
                    if stopped:
                        continue
                    delivered.append(piece)
                    if callback(piece):
                        stopped = True
                        self.engine.cancel(future)
            except BaseException:  # the callback failed: nobody waits for this page any more
                self.engine.cancel(future)
                raise
        try:
            raw, result = future.result()
        except CancelledError:  # cancelled while still queued
            return "".join(delivered), CANCELLED, 0
        if stopped or str(result.stop_reason) == CANCELLED:
            return "".join(delivered), CANCELLED, 0
        return raw, str(result.stop_reason), len(result.ids)

    def _run(self, page, options: RunOptions, figure_prefix: str | None,
             callback: Callable[[str], bool] | None) -> Result:
        pieces = queue.SimpleQueue() if callback is not None else None
        future = self.engine.submit(page, options, on_text=pieces.put if pieces is not None else None)
        raw, stop, n_generated = self._wait(future, callback, pieces)
        out = render_markdown(raw, page, prefix=figure_prefix or "")
        figures = [(name, jpeg_bytes(crop), *crop.size) for name, crop in out.figures]
        return Result(out.markdown, raw, stop, n_generated, [(b.label, *b.xyxy) for b in out.boxes], figures)

    def _options(self, figure_prefix: str | None, **options) -> RunOptions:
        if figure_prefix is not None and not FIGURE_PREFIX.fullmatch(figure_prefix):
            raise errors.InputError(f"figure_prefix={figure_prefix!r}: use at most 64 letters, digits, '.', '-' "
                                    "or '_' (it becomes part of file names)")
        return run_options(**options, generation=self.pipe.generation_options)

    def run_encoded(self, data, *, figure_prefix=None, callback=None, **options) -> Result:
        """data: a buffer over the host's bytes, valid during the call only (load_image copies it)."""
        opts = self._options(figure_prefix, **options)
        return self._run(decode_image(data), opts, figure_prefix, callback)

    def run_rgb(self, data, width: int, height: int, stride: int, *, figure_prefix=None, callback=None,
                **options) -> Result:
        """data: a buffer over the host's pixels (its length checked in C), valid during the call only
        (image_from_rgb copies it)."""
        opts = self._options(figure_prefix, **options)
        return self._run(image_from_rgb(data, width, height, stride or None), opts, figure_prefix, callback)


def bundle_format_version() -> int:
    return FORMAT_VERSION
