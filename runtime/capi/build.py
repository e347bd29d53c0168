"""Build libdsocr.so with the system C compiler against this interpreter's shared libpython.

On this project's reference machine (pyenv CPython 3.11.7, configured with --enable-shared) that is
LIBDIR/libpython3.11.so, found again at run time through an rpath to LIBDIR. A Python without a
shared libpython (Py_ENABLE_SHARED = 0) cannot host libdsocr: linking its static libpython.a into
a shared library needs it built with -fPIC, and a Python host loading libdsocr would then run two
interpreters in one process; BuildError says so.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from ..errors import DsocrError

HERE = Path(__file__).resolve().parent
HEADER = HERE / "dsocr.h"
SOURCE = HERE / "dsocr.c"
LIBRARY_NAME = "libdsocr.so"


class BuildError(DsocrError):
    """libdsocr cannot be built here: no C compiler, no shared libpython, or the compiler failed."""


def include_dir() -> Path:
    """The directory holding dsocr.h (compile hosts with -I this)."""
    return HERE


def python_flags() -> tuple[list[str], list[str]]:
    """(compile flags, link flags) to embed this interpreter's shared libpython."""
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        raise BuildError(
            f"{sys.executable} has no shared libpython (Py_ENABLE_SHARED=0); libdsocr embeds Python and needs "
            "one: use a Python built with --enable-shared (pyenv: PYTHON_CONFIGURE_OPTS=--enable-shared)")
    libdir = sysconfig.get_config_var("LIBDIR")
    version = sysconfig.get_config_var("LDVERSION") or sysconfig.get_config_var("VERSION")
    return ([f"-I{sysconfig.get_paths()['include']}"],
            [f"-L{libdir}", f"-lpython{version}", f"-Wl,-rpath,{libdir}", "-pthread", "-ldl", "-lm"])


def find_compiler(cc: str | None = None) -> str:
    cc = cc or os.environ.get("CC") or "cc"
    path = shutil.which(cc)
    if path is None:
        raise BuildError(f"no C compiler {cc!r} on PATH (install gcc or clang, or pass cc=)")
    return path


def build_library(out_dir: str | Path, cc: str | None = None) -> Path:
    """Compile libdsocr.so into out_dir and return its path. The file is replaced atomically, so a
    process that already loaded an older copy keeps a consistent one."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cflags, ldflags = python_flags()
    fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{LIBRARY_NAME}.", suffix=".tmp")
    os.close(fd)
    cmd = [find_compiler(cc), "-shared", "-fPIC", "-O2", "-g", "-std=c11", "-fvisibility=hidden", "-Wall",
           "-Wextra", *cflags, f"-I{HERE}", str(SOURCE), "-o", tmp, *ldflags]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise BuildError(f"building libdsocr failed:\n{' '.join(cmd)}\n{r.stderr}")
        os.replace(tmp, out / LIBRARY_NAME)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return out / LIBRARY_NAME


def embed_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """`environ` (default os.environ) plus PYTHONHOME / PYTHONPATH that let a libdsocr host started
    from this interpreter's environment find the same stdlib and the same installed packages: the
    base prefix, and the sys.path directories outside it (a virtual environment's site-packages).
    libdsocr itself sets nothing; this is for launching hosts (tests, tools)."""
    env = dict(os.environ if environ is None else environ)
    base = os.path.realpath(sys.base_prefix)
    extra = [p for p in sys.path if p and os.path.isdir(p) and not os.path.realpath(p).startswith(base + os.sep)]
    env["PYTHONHOME"] = sys.base_prefix
    if sys.prefix != sys.base_prefix:  # a venv: its site-packages becomes the user site, so its .pth files
        env["PYTHONUSERBASE"] = sys.prefix  # (an editable install's finder) run as they do for the venv's python
        env.pop("PYTHONNOUSERSITE", None)
    if extra:
        env["PYTHONPATH"] = os.pathsep.join(extra + [env["PYTHONPATH"]] if env.get("PYTHONPATH") else extra)
    return env
