"""A small ctypes binding of libdsocr, for Python hosts and tests of the C API.

Inside a Python process libdsocr finds the interpreter already running and uses it (the process's
libpython must be the shared one the library links).
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path

TEXT_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)


class RunOptions(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("mode", ctypes.c_char_p), ("prompt", ctypes.c_char_p),
                ("max_new_tokens", ctypes.c_int32), ("on_text", TEXT_CALLBACK), ("user_data", ctypes.c_void_p)]


class Box(ctypes.Structure):
    _fields_ = [("label", ctypes.c_char_p), ("x1", ctypes.c_int32), ("y1", ctypes.c_int32),
                ("x2", ctypes.c_int32), ("y2", ctypes.c_int32)]


class DsocrError(RuntimeError):
    def __init__(self, status: int, message: str):
        super().__init__(f"dsocr status {status}: {message}")
        self.status = status


@dataclass
class Page:
    markdown: str
    stop_reason: str
    boxes: list[tuple[str, int, int, int, int]]


class Library:
    def __init__(self, path: str | Path):
        lib = self.lib = ctypes.CDLL(str(path))
        vp, pp = ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)
        sigs = {
            "dsocr_api_version": ([], ctypes.c_int), "dsocr_bundle_format_version": ([], ctypes.c_int),
            "dsocr_last_error": ([], ctypes.c_char_p), "dsocr_model_open": ([ctypes.c_char_p, pp], ctypes.c_int),
            "dsocr_model_destroy": ([vp], None), "dsocr_session_create": ([vp, pp], ctypes.c_int),
            "dsocr_session_destroy": ([vp], None),
            "dsocr_session_run_encoded": ([vp, ctypes.c_char_p, ctypes.c_size_t, ctypes.POINTER(RunOptions), pp],
                                          ctypes.c_int),
            "dsocr_session_run_rgb": ([vp, ctypes.c_char_p, ctypes.c_int32, ctypes.c_int32, ctypes.c_int32,
                                       ctypes.POINTER(RunOptions), pp], ctypes.c_int),
            "dsocr_result_markdown": ([vp], ctypes.c_char_p), "dsocr_result_stop_reason": ([vp], ctypes.c_char_p),
            "dsocr_result_box_count": ([vp], ctypes.c_size_t),
            "dsocr_result_box": ([vp, ctypes.c_size_t, ctypes.POINTER(Box)], ctypes.c_int),
            "dsocr_result_destroy": ([vp], None),
        }
        for name, (args, res) in sigs.items():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = args, res

    def check(self, status: int) -> None:
        if status != 0:
            raise DsocrError(status, self.lib.dsocr_last_error().decode("utf-8", "replace"))

    def open_model(self, bundle: str | Path) -> ctypes.c_void_p:
        h = ctypes.c_void_p()
        self.check(self.lib.dsocr_model_open(str(bundle).encode(), ctypes.byref(h)))
        return h

    def create_session(self, model: ctypes.c_void_p) -> ctypes.c_void_p:
        h = ctypes.c_void_p()
        self.check(self.lib.dsocr_session_create(model, ctypes.byref(h)))
        return h

    def run_encoded(self, session, data: bytes, mode: str | None = None, max_new_tokens: int = 0,
                    on_text=None) -> Page:
        opts = RunOptions(ctypes.sizeof(RunOptions), mode.encode() if mode else None, None, max_new_tokens)
        if on_text is not None:
            opts.on_text = TEXT_CALLBACK(lambda piece, _ud: int(bool(on_text(piece.decode("utf-8")))))
        res = ctypes.c_void_p()
        self.check(self.lib.dsocr_session_run_encoded(session, data, len(data), ctypes.byref(opts), ctypes.byref(res)))
        try:
            return self._page(res)
        finally:
            self.lib.dsocr_result_destroy(res)

    def _page(self, res) -> Page:
        boxes = []
        for i in range(self.lib.dsocr_result_box_count(res)):
            b = Box()
            self.check(self.lib.dsocr_result_box(res, i, ctypes.byref(b)))
            boxes.append((b.label.decode(), b.x1, b.y1, b.x2, b.y2))
        return Page(self.lib.dsocr_result_markdown(res).decode("utf-8"),
                    self.lib.dsocr_result_stop_reason(res).decode(), boxes)
