"""A small ctypes binding of libdsocr (dsocr.h), for Python hosts and for testing the C API.

Inside a Python process libdsocr finds the interpreter already running and uses it, taking the GIL
per call; load it with ctypes.CDLL (which releases the GIL during foreign calls), never PyDLL. The
process's libpython must be the shared one the library links (true for the interpreter that built it).

    lib = Library(build_library("build"))
    with lib.model("bundles/small", max_batch=4) as model, model.session() as session:
        page = session.run_encoded(png_bytes, max_new_tokens=512, on_text=print)
        for name, jpeg, width, height in page.figures: ...
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

TEXT_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_p, _pp, _s = ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p), ctypes.c_char_p
_i32, _sz = ctypes.c_int32, ctypes.c_size_t


class ModelOptions(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("device", _s), ("threads", _i32), ("max_seq_len", _i32),
                ("backend", _s), ("max_batch", _i32)]


class RunOptions(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("mode", _s), ("prompt", _s), ("ref", _s),
                ("max_new_tokens", _i32), ("on_text", TEXT_CALLBACK), ("user_data", ctypes.c_void_p),
                ("ngram_size", _i32), ("ngram_window", _i32), ("max_tiles", _i32), ("loop_detection", _i32),
                ("figure_prefix", _s)]


class Box(ctypes.Structure):
    _fields_ = [("label", _s), ("x1", _i32), ("y1", _i32), ("x2", _i32), ("y2", _i32)]


class Figure(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("name", _s), ("data", ctypes.POINTER(ctypes.c_uint8)),
                ("size", ctypes.c_size_t), ("width", _i32), ("height", _i32)]


_SIGNATURES = {  # name: (argtypes, restype)
    "dsocr_api_version": ([], ctypes.c_int),
    "dsocr_version": ([], _s),
    "dsocr_bundle_format_version": ([], ctypes.c_int),
    "dsocr_last_error": ([], _s),
    "dsocr_status_name": ([ctypes.c_int], _s),
    "dsocr_init": ([], ctypes.c_int),
    "dsocr_model_create": ([_s, ctypes.POINTER(ModelOptions), _pp], ctypes.c_int),
    "dsocr_model_destroy": ([_p], ctypes.c_int),
    "dsocr_session_create": ([_p, _pp], ctypes.c_int),
    "dsocr_session_destroy": ([_p], ctypes.c_int),
    "dsocr_session_run_encoded": ([_p, _s, _sz, ctypes.POINTER(RunOptions), _pp], ctypes.c_int),
    "dsocr_session_run_rgb": ([_p, _s, _sz, _i32, _i32, _i32, ctypes.POINTER(RunOptions), _pp], ctypes.c_int),
    "dsocr_result_markdown": ([_p], _s),
    "dsocr_result_raw": ([_p], _s),
    "dsocr_result_stop_reason": ([_p], _s),
    "dsocr_result_token_count": ([_p], _sz),
    "dsocr_result_box_count": ([_p], _sz),
    "dsocr_result_box": ([_p, _sz, ctypes.POINTER(Box)], ctypes.c_int),
    "dsocr_result_figure_count": ([_p], _sz),
    "dsocr_result_figure": ([_p, _sz, ctypes.POINTER(Figure)], ctypes.c_int),
    "dsocr_result_destroy": ([_p], ctypes.c_int),
}


class DsocrError(RuntimeError):
    """A failed libdsocr call: `status` is the dsocr_status value, `name` its enumerator name."""

    def __init__(self, status: int, name: str, message: str):
        super().__init__(f"{name}: {message}")
        self.status, self.name, self.message = status, name, message


@dataclass(frozen=True)
class Page:
    markdown: str
    raw: str
    stop_reason: str
    n_tokens: int
    boxes: list[tuple[str, int, int, int, int]]  # (label, x1, y1, x2, y2)
    figures: list[tuple[str, bytes, int, int]]  # (name, JPEG bytes, width, height)


class Library:
    def __init__(self, path: str | Path):
        self.lib = ctypes.CDLL(str(path))
        for name, (args, res) in _SIGNATURES.items():
            fn = getattr(self.lib, name)
            fn.argtypes, fn.restype = args, res

    def check(self, status: int) -> None:
        if status != 0:
            name = self.lib.dsocr_status_name(status).decode()
            raise DsocrError(status, name, self.lib.dsocr_last_error().decode("utf-8", "replace"))

    def version(self) -> str:
        return self.lib.dsocr_version().decode()

    def model(self, bundle_dir: str | Path, device: str | None = None, threads: int = 0, max_seq_len: int = 0,
              backend: str | None = None, max_batch: int = 0) -> Model:
        opts = ModelOptions(ctypes.sizeof(ModelOptions), _enc(device), threads, max_seq_len, _enc(backend), max_batch)
        handle = ctypes.c_void_p()
        self.check(self.lib.dsocr_model_create(str(bundle_dir).encode(), ctypes.byref(opts), ctypes.byref(handle)))
        return Model(self, handle)


def _enc(s: str | None) -> bytes | None:
    return s.encode() if s is not None else None


class _Handle:
    _destroy = ""

    def __init__(self, lib: Library, handle: ctypes.c_void_p):
        self._lib, self.handle = lib, handle

    def close(self) -> None:
        if self.handle:
            handle, self.handle = self.handle, None
            self._lib.check(getattr(self._lib.lib, self._destroy)(handle))

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Model(_Handle):
    _destroy = "dsocr_model_destroy"

    def session(self) -> Session:
        handle = ctypes.c_void_p()
        self._lib.check(self._lib.lib.dsocr_session_create(self.handle, ctypes.byref(handle)))
        return Session(self._lib, handle)


class Session(_Handle):
    _destroy = "dsocr_session_destroy"

    def run_encoded(self, data: bytes, **options) -> Page:
        return self._run("dsocr_session_run_encoded", (data, len(data)), **options)

    def run_rgb(self, data: bytes, width: int, height: int, stride: int = 0, **options) -> Page:
        return self._run("dsocr_session_run_rgb", (data, len(data), width, height, stride), **options)

    def _run(self, fn: str, image: tuple, mode: str | None = None, prompt: str | None = None, ref: str | None = None,
             max_new_tokens: int = 0, on_text: Callable[[str], object] | None = None, ngram_size: int = 0,
             ngram_window: int = 0, max_tiles: int = 0, loop_detection: int = 0,
             figure_prefix: str | None = None) -> Page:
        """Options as in dsocr_run_options: 0 / None mean the default."""
        opts = RunOptions(ctypes.sizeof(RunOptions), _enc(mode), _enc(prompt), _enc(ref), max_new_tokens,
                          ngram_size=ngram_size, ngram_window=ngram_window, max_tiles=max_tiles,
                          loop_detection=loop_detection, figure_prefix=_enc(figure_prefix))
        if on_text is not None:  # kept alive by `opts` for the call
            opts.on_text = TEXT_CALLBACK(lambda piece, _ud: int(bool(on_text(piece.decode("utf-8")))))
        res = ctypes.c_void_p()
        self._lib.check(getattr(self._lib.lib, fn)(self.handle, *image, ctypes.byref(opts), ctypes.byref(res)))
        try:
            return self._page(res)
        finally:
            self._lib.lib.dsocr_result_destroy(res)

    def _page(self, res: ctypes.c_void_p) -> Page:
        lib = self._lib.lib
        boxes = []
        for i in range(lib.dsocr_result_box_count(res)):
            b = Box()
            self._lib.check(lib.dsocr_result_box(res, i, ctypes.byref(b)))
            boxes.append((b.label.decode(), b.x1, b.y1, b.x2, b.y2))
        figures = []
        for i in range(lib.dsocr_result_figure_count(res)):
            f = Figure(ctypes.sizeof(Figure))
            self._lib.check(lib.dsocr_result_figure(res, i, ctypes.byref(f)))
            figures.append((f.name.decode(), ctypes.string_at(f.data, f.size), f.width, f.height))
        return Page(lib.dsocr_result_markdown(res).decode(), lib.dsocr_result_raw(res).decode(),
                    lib.dsocr_result_stop_reason(res).decode(), lib.dsocr_result_token_count(res), boxes, figures)
