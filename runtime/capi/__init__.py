"""libdsocr: the C API of dsocr (dsocr.h), a shared library embedding CPython over this runtime.

Build it with `build_library(out_dir)` (or `make -C runtime/capi`); `ctypes_api` is a small ctypes
binding of it; `bridge` is the Python side that the C code calls.
"""
from .build import HEADER, HERE, SOURCE, VENV_ENV, BuildError, build_library, embed_env, include_dir

__all__ = ["HEADER", "HERE", "SOURCE", "VENV_ENV", "BuildError", "build_library", "embed_env", "include_dir"]
