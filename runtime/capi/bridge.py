"""The Python half of libdsocr: what each C entry point calls (pure runtime, no torch).

A Model holds a bundle's verified assets and its ONNX Runtime sessions, shared read-only by every
Session made from it (ORT sessions are thread-safe for run); a Session owns a Pipeline (KV cache,
IOBinding). Errors are mapped to the C status codes by `status_of`.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from .. import errors
from ..backends.ort import OrtBackend
from ..decoding import GenerationOptions
from ..manifest import FORMAT_VERSION
from ..pipeline import BundleAssets, Pipeline, RunOptions
from ..postprocess import render_markdown
from ..preprocess import image_from_rgb, load_image

API_VERSION = 1

# Mirrors enum dsocr_status in dsocr.h.
OK, INVALID_ARGUMENT, IO, BAD_IMAGE, BAD_BUNDLE, MODE, BACKEND, CACHE_FULL, INTERNAL = range(9)
_STATUS = (
    (errors.ModeError, MODE),
    (errors.ImageError, BAD_IMAGE),
    (errors.PDFError, BAD_IMAGE),
    (errors.CacheOverflowError, CACHE_FULL),
    (errors.ManifestError, BAD_BUNDLE),
    (errors.CheckpointError, BAD_BUNDLE),
    (errors.BackendUnavailableError, BACKEND),
    (errors.InputError, INVALID_ARGUMENT),
    (FileNotFoundError, IO),
    (OSError, IO),
    (ValueError, INVALID_ARGUMENT),
    (TypeError, INVALID_ARGUMENT),
)


def status_of(exc: BaseException) -> tuple[int, str]:
    """(status code, message) for an exception raised below a C entry point."""
    for kind, code in _STATUS:
        if isinstance(exc, kind):
            return code, str(exc) or type(exc).__name__
    return INTERNAL, f"{type(exc).__name__}: {exc}"


class _SharedSessions(OrtBackend):
    """An OrtBackend whose InferenceSessions come from (and go to) its Model's shared cache."""

    def __init__(self, model: "Model"):
        self._model = model
        super().__init__(model.assets.bundle_dir, model.assets.manifest, threads=model.threads)

    def _session(self, file: str):
        with self._model.lock:
            if file not in self._model.sessions:
                self._model.sessions[file] = self._ort.InferenceSession(
                    str(self.bundle_dir / file), sess_options=self._options, providers=self._providers)
            return self._model.sessions[file]


class Model:
    def __init__(self, bundle_dir: str, threads: int = 0):
        path = Path(bundle_dir)
        if not path.is_dir():
            raise FileNotFoundError(f"bundle directory {path} does not exist")
        self.assets = BundleAssets.load(path)
        self.threads = threads or None
        self.sessions: dict[str, object] = {}
        self.lock = threading.Lock()


class _Stop(Exception):
    """The host's streaming callback asked to stop."""


@dataclass
class Result:
    markdown: str
    boxes: list  # (label, x1, y1, x2, y2)
    stop_reason: str


class Session:
    def __init__(self, model: Model, max_seq_len: int = 0):
        self.pipe = Pipeline.from_assets(model.assets, _SharedSessions(model), max_seq_len or None)

    def _run(self, page, mode, prompt, max_new_tokens, callback) -> Result:
        gen = GenerationOptions(max_new_tokens=max_new_tokens) if max_new_tokens > 0 else GenerationOptions()
        options = RunOptions(mode=mode or None, prompt=prompt or "document", generation=gen)
        streamed: list[str] = []

        def on_text(piece: str) -> None:
            streamed.append(piece)
            if callback is not None and callback(piece):
                raise _Stop

        try:
            raw, result = self.pipe.generate(page, options, on_text=on_text)
            stop = str(result.stop_reason)
        except _Stop:
            raw, stop = "".join(streamed), "cancelled"
        out = render_markdown(raw, page)
        return Result(out.markdown, [(b.label, b.x1, b.y1, b.x2, b.y2) for b in out.boxes], stop)

    def run_encoded(self, data: bytes, mode, prompt, max_new_tokens, callback) -> Result:
        if not data:
            raise errors.ImageError("empty image buffer")
        return self._run(load_image(bytes(data)), mode, prompt, max_new_tokens, callback)

    def run_rgb(self, data: bytes, width: int, height: int, stride: int, mode, prompt, max_new_tokens,
                callback) -> Result:
        page = image_from_rgb(bytes(data), width, height, stride or None)
        return self._run(page, mode, prompt, max_new_tokens, callback)


def bundle_format_version() -> int:
    return FORMAT_VERSION
