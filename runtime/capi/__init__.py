"""libdsocr: the C API (dsocr.h) over the Python runtime, built with the system compiler."""
from __future__ import annotations

import subprocess
import sysconfig
from pathlib import Path

from ..errors import BackendUnavailableError

HERE = Path(__file__).resolve().parent
HEADER = HERE / "dsocr.h"
SOURCE = HERE / "dsocr.c"


def compile_flags() -> tuple[list[str], list[str]]:
    """(compile flags, link flags) to build against this interpreter's libpython (shared)."""
    inc = sysconfig.get_paths()["include"]
    libdir = sysconfig.get_config_var("LIBDIR")
    ver = sysconfig.get_config_var("LDVERSION") or sysconfig.get_config_var("VERSION")
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        raise BackendUnavailableError("this Python has no shared libpython: libdsocr needs one to embed it")
    return [f"-I{inc}", f"-I{HERE}"], [f"-L{libdir}", f"-lpython{ver}", f"-Wl,-rpath,{libdir}", "-lpthread", "-ldl", "-lm"]


def build_library(out_dir: str | Path, cc: str = "cc") -> Path:
    """Compile libdsocr.so into out_dir and return its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lib = out / "libdsocr.so"
    cflags, ldflags = compile_flags()
    cmd = [cc, "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", *cflags, str(SOURCE),
           "-o", str(lib), *ldflags]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise BackendUnavailableError(f"building libdsocr failed: {' '.join(cmd)}\n{r.stderr}")
    return lib
