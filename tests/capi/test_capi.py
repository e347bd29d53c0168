"""libdsocr (runtime/capi): the C test program and an init probe compiled here with the system
compiler, the README's C example, the header against the bridge and the exported symbols, and the
same calls through the ctypes binding."""
from __future__ import annotations

import ctypes
import importlib.util
import io
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from dsocr.runtime.capi import HEADER, HERE, VENV_ENV, build_library, embed_env

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")

TESTS = Path(__file__).resolve().parent
MiB = 1024  # in kB


@pytest.fixture(scope="module")
def lib(tmp_path_factory) -> Path:
    return build_library(tmp_path_factory.mktemp("capi"))


def compile_host(src: Path, lib: Path, out: Path) -> Path:
    cmd = ["cc", "-O1", "-Wall", "-Wextra", "-Werror", f"-I{HERE}", str(src), "-o", str(out),
           f"-L{lib.parent}", "-ldsocr", f"-Wl,-rpath,{lib.parent}", "-pthread"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return out


def run_host(args: list, timeout: int, **env) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout,
                          env=embed_env() | env)


def rss_samples(stdout: str, phase: str) -> dict[int, int]:
    return {int(c): int(kb) for c, kb in re.findall(rf"^RSS_KB {phase} (\d+) (\d+)$", stdout, re.M)}


def has_tensorrt() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


def run_c_test(lib, demo_bundle, sample_page, tmp_path, cycles: int, model_cycles: int = 0) -> str:
    exe = compile_host(TESTS / "test_capi.c", lib, tmp_path / "test_capi")
    flags = {} if has_tensorrt() else {"DSOCR_TEST_NO_TENSORRT": "1"}
    r = run_host([exe, demo_bundle, sample_page, cycles, model_cycles], timeout=7200, **flags)
    assert r.returncode == 0 and r.stdout.rstrip().endswith("PASS"), r.stdout[-4000:] + r.stderr[-4000:]
    return r.stdout


def test_c_program_and_memory_over_50_cycles(lib, demo_bundle, sample_page, tmp_path):
    rss = rss_samples(run_c_test(lib, demo_bundle, sample_page, tmp_path, 50), "session")
    print(f"\nRSS after warm-up {rss[0]} kB, after 50 session cycles {rss[50]} kB")
    assert rss[50] - rss[0] < 48 * MiB, rss  # generous: a leak of a KV cache per cycle would be GBs


@pytest.mark.slow
def test_memory_flat_over_1000_cycles(lib, demo_bundle, sample_page, tmp_path):
    out = run_c_test(lib, demo_bundle, sample_page, tmp_path, 1000, model_cycles=20)
    rss, models = rss_samples(out, "session"), rss_samples(out, "model")
    print("\n" + "\n".join(line for line in out.splitlines() if line.startswith("RSS_KB")))
    growth = rss[1000] - rss[0]
    late = rss[1000] - rss[500]  # a steady leak shows in the second half too
    print(f"session cycles: +{growth} kB over 1000 (+{late} kB over the last 500); "
          f"model cycles: +{models[20] - models[0]} kB over 20")
    assert growth < 16 * MiB and late < 4 * MiB, rss
    assert models[20] - models[0] < 64 * MiB, models


def test_init_failure_is_a_status_not_an_abort(lib, demo_bundle, tmp_path):
    exe = compile_host(TESTS / "probe_init.c", lib, tmp_path / "probe_init")
    r = run_host([exe, demo_bundle], timeout=120, PYTHONHOME=str(tmp_path / "no-python-here"))
    assert r.returncode == 0, r.stderr  # not SIGABRT
    first, second, fmt = r.stdout.splitlines()
    assert first.startswith("DSOCR_ERR_PYTHON | cannot start the embedded Python") and first == second
    assert fmt == "format -1"
    r = run_host([exe, demo_bundle], timeout=300)
    assert r.stdout.splitlines() == ["DSOCR_OK | ", "DSOCR_OK | ", "format 1"], r.stdout + r.stderr


def readme_c_example(repo_root: Path) -> str:
    text = (repo_root / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## C API\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```c\n(.*?)```", section, re.S).group(1)


def test_readme_c_example_compiles_and_runs(lib, repo_root, demo_bundle, sample_page, tmp_path):
    code = readme_c_example(repo_root)
    assert len(code.strip().splitlines()) <= 20  # stays a short example
    (tmp_path / "ocr.c").write_text(code)
    exe = compile_host(tmp_path / "ocr.c", lib, tmp_path / "ocr")
    r = run_host([exe, tmp_path / "missing-bundle", sample_page], timeout=300)
    assert r.returncode == 1 and "does not exist" in r.stderr, r.stderr
    r = run_host([exe, demo_bundle, sample_page], timeout=600)
    assert r.returncode == 0 and r.stdout.strip(), r.stderr


def test_header_status_codes_match_the_bridge():
    from dsocr.runtime.capi.bridge import API_VERSION, Status

    text = HEADER.read_text()
    enum = dict(re.findall(r"DSOCR_(OK|ERR_\w+) = (\d+)", text))
    assert {k.removeprefix("ERR_"): int(v) for k, v in enum.items()} == {s.name: s.value for s in Status}
    assert int(re.search(r"#define DSOCR_API_VERSION (\d+)", text).group(1)) == API_VERSION


def test_exports_are_exactly_the_header_functions(lib):
    if shutil.which("nm") is None:
        pytest.skip("no nm")
    declared = set(re.findall(r"^DSOCR_API [^(]*?\b(dsocr_\w+)\(", HEADER.read_text(), re.M))
    out = subprocess.run(["nm", "-D", "--defined-only", str(lib)], capture_output=True, text=True).stdout
    exported = set(re.findall(r" T (\w+)$", out, re.M))
    assert declared and exported == declared


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_makefile_builds(tmp_path):
    # pythonX.Y-config sits with the base interpreter (BINDIR), not in a virtual environment's bin/
    config = Path(sysconfig.get_config_var("BINDIR")) / f"python{sysconfig.get_config_var('VERSION')}-config"
    assert config.is_file(), f"no {config}: libdsocr needs a Python with its development files"
    r = subprocess.run(["make", "-C", str(HERE), f"OUT={tmp_path}", f"PYTHON={sys.executable}", f"PYCONFIG={config}"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and (tmp_path / "libdsocr.so").is_file(), r.stdout + r.stderr
    from dsocr.runtime import __version__
    from dsocr.runtime.capi.ctypes_api import Library

    assert Library(tmp_path / "libdsocr.so").version() == __version__  # the Makefile compiles it in too


def test_ctypes_binding_in_process(lib, demo_bundle, sample_page):
    """The interpreter is already running here: libdsocr must use it, not start another."""
    from dsocr.runtime import __version__
    from dsocr.runtime.capi.ctypes_api import DsocrError, Library

    api = Library(lib)
    assert api.lib.dsocr_api_version() == 2 and api.lib.dsocr_bundle_format_version() == 1
    assert api.version() == __version__
    with pytest.raises(DsocrError) as e:
        api.model("/nonexistent")
    assert e.value.name == "DSOCR_ERR_IO"
    png = sample_page.read_bytes()
    with api.model(demo_bundle, max_seq_len=512) as model, model.session() as session:
        pieces: list[str] = []
        page = session.run_encoded(png, max_new_tokens=4, on_text=pieces.append)
        assert page.stop_reason == "max_tokens" and page.n_tokens == 4 and "".join(pieces)
        stopped = session.run_encoded(png, max_new_tokens=40, on_text=lambda piece: True)
        assert stopped.stop_reason == "cancelled"
        for data, mode, status in ((b"\x89PNG broken", None, "BAD_IMAGE"), (png, "gundam", "MODE")):
            with pytest.raises(DsocrError) as e:
                session.run_encoded(data, mode=mode, max_new_tokens=2)
            assert e.value.name == f"DSOCR_ERR_{status}"
        rgb = session.run_rgb(bytes(32 * 24 * 3), 32, 24, max_new_tokens=2)
        assert rgb.n_tokens == 2
        with pytest.raises(DsocrError) as e:
            session.run_rgb(bytes(32 * 24 * 3), 32, 24, stride=50)
        assert e.value.name == "DSOCR_ERR_BAD_IMAGE" and "stride" in e.value.message
        with pytest.raises(DsocrError) as e:  # the length is checked before Python sees the buffer
            session.run_rgb(bytes(16), 10000, 10000)
        assert e.value.name == "DSOCR_ERR_INVALID_ARGUMENT" and "holds 16 bytes" in e.value.message
    assert api.lib.dsocr_session_destroy(None) == 0 and api.lib.dsocr_model_destroy(None) == 0
    assert api.lib.dsocr_model_destroy(ctypes.c_void_p(0x5000)) == 1  # made up: refused, not dereferenced


def test_double_destroy_is_refused(lib, demo_bundle):
    from dsocr.runtime.capi.ctypes_api import DsocrError, Library

    api = Library(lib)
    model = api.model(demo_bundle, max_seq_len=128)
    handle = model.handle
    model.close()
    assert api.lib.dsocr_model_destroy(handle) == 1  # DSOCR_ERR_INVALID_ARGUMENT, not a crash
    assert "destroyed already" in api.lib.dsocr_last_error().decode()
    with pytest.raises(DsocrError) as e:
        api.check(api.lib.dsocr_session_create(handle, ctypes.byref(ctypes.c_void_p())))
    assert e.value.name == "DSOCR_ERR_INVALID_ARGUMENT" and "not a live dsocr_model" in e.value.message


LOOPING = ("Some text\n<|ref|>image<|/ref|><|det|>[[100, 200, 600, 700]]<|/det|>\nsi si si si",
           ["Some", " text", "\n", "si", " si"])


@pytest.fixture
def scripted_engine(monkeypatch):
    """BatchEngine.submit resolving to a fixed page that ends in a loop and holds one figure, streamed
    piece by piece on another thread (the engine's thread, as in the real engine)."""
    import threading
    from concurrent.futures import Future

    from dsocr.runtime.decoding import GenerationResult
    from dsocr.runtime.engine import BatchEngine

    def submit(self, image, options, on_text=None):
        self.pipeline.mode(options.mode)
        future = Future()

        def work():
            for piece in LOOPING[1]:
                if on_text is not None:
                    on_text(piece)
            future.set_result((LOOPING[0], GenerationResult(ids=list(range(300)), stop_reason="loop", n_prompt=9)))
        threading.Thread(target=work).start()
        return future

    monkeypatch.setattr(BatchEngine, "submit", submit)


def test_loop_stop_reason_and_figure_bytes(lib, demo_bundle, sample_page, scripted_engine):
    from PIL import Image

    from dsocr.runtime.capi.ctypes_api import Library

    api = Library(lib)
    with api.model(demo_bundle, max_seq_len=512) as model, model.session() as session:
        pieces: list[str] = []
        page = session.run_encoded(sample_page.read_bytes(), on_text=pieces.append, figure_prefix="p3_")
    assert page.stop_reason == "loop" and page.n_tokens == 300 and pieces == LOOPING[1]
    assert page.raw == LOOPING[0] and "<|ref|>" not in page.markdown
    (name, jpeg, width, height), = page.figures
    assert name == "p3_0.jpg" and f"](images/{name})" in page.markdown
    w, h = Image.open(sample_page).size
    crop = Image.open(io.BytesIO(jpeg))
    assert crop.format == "JPEG" and crop.size == (width, height)
    assert (width, height) == (int(600 / 999 * w) - int(100 / 999 * w), int(700 / 999 * h) - int(200 / 999 * h))
    assert page.boxes == [("image", int(100 / 999 * w), int(200 / 999 * h), int(600 / 999 * w), int(700 / 999 * h))]


def test_max_batch_shares_one_engine(demo_bundle, sample_page):
    """max_batch = N: every Session of the Model submits to one BatchEngine with N slots, closed when
    the Model and its last Session are gone; max_batch = 0: an engine per Session."""
    from dsocr.runtime import errors
    from dsocr.runtime.capi import bridge
    from dsocr.runtime.engine import EngineClosedError

    model = bridge.Model(str(demo_bundle), max_seq_len=256, max_batch=3)
    a, b = bridge.Session(model), bridge.Session(model)
    assert a.engine is b.engine and a.engine.max_batch == 3 and a.engine.stats().slots == 3
    page = a.run_encoded(sample_page.read_bytes(), max_new_tokens=2)
    assert page.n_generated == 2 and a.engine.stats().pages_done == 1
    model.close()
    a.close()
    assert b.run_encoded(sample_page.read_bytes(), max_new_tokens=1).n_generated == 1  # b keeps it alive
    b.close()
    with pytest.raises(EngineClosedError):
        b.engine.submit(None)
    alone = bridge.Model(str(demo_bundle), max_seq_len=256)
    c, d = bridge.Session(alone), bridge.Session(alone)
    assert c.engine is not d.engine and c.engine.max_batch == 1
    for s in (c, d, alone):
        s.close()
    with pytest.raises(errors.InputError):
        bridge.Model(str(demo_bundle), max_batch=bridge.MAX_BATCH + 1)


def test_tensorrt_backend_is_reached(lib, demo_bundle, monkeypatch):
    """backend "tensorrt" builds runtime.backends.trt.TrtBackend; without TensorRT: DSOCR_ERR_BACKEND."""
    from dsocr.runtime.backends import trt
    from dsocr.runtime.capi.ctypes_api import DsocrError, Library

    api = Library(lib)
    if not has_tensorrt():
        with pytest.raises(DsocrError) as e:
            api.model(demo_bundle, backend="tensorrt")
        assert e.value.name == "DSOCR_ERR_BACKEND"
        assert "TensorRT is not installed" in e.value.message and "dsocr[trt]" in e.value.message
    seen = []

    def refuse(bundle_dir, manifest, engines_dir=None):
        seen.append(Path(bundle_dir))
        raise trt.EngineMismatchError("plan built for another GPU")

    monkeypatch.setattr(trt, "TrtBackend", refuse)
    with pytest.raises(DsocrError) as e:
        api.model(demo_bundle, backend="tensorrt")
    assert seen == [Path(demo_bundle)] and e.value.name == "DSOCR_ERR_BACKEND" and "another GPU" in e.value.message


@pytest.mark.parametrize("exc, status", [
    (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), "INVALID_ARGUMENT"),
    (PermissionError("permission denied: manifest.json"), "IO"),
    (MemoryError(), "OUT_OF_MEMORY"),
    (KeyError("x"), "INTERNAL"),
])
def test_status_table(exc, status):
    from dsocr.runtime.capi import bridge

    code, message = bridge.status_of(exc)
    assert bridge.Status(code).name == status and message


def test_messages_carry_no_reprs():
    from dsocr.runtime.capi import bridge

    from dsocr.runtime import errors

    code, message = bridge.status_of(errors.ImageError("cannot identify image file <_io.BytesIO object at 0x7f3a2b1c0d90>"))
    assert message == "cannot identify image file" and code == bridge.Status.BAD_IMAGE
    assert "0x" not in bridge.status_of(KeyError("<function f at 0x7f00deadbeef>"))[1]


def dds_unknown_fourcc() -> bytes:
    """A DDS header whose FourCC Pillow does not implement: its plugin raises NotImplementedError."""
    header = bytearray(128)
    header[:4], header[4] = b"DDS ", 124  # magic, header size
    header[12] = header[16] = 8  # height, width
    header[76], header[80], header[84:88] = 32, 4, b"ZZZZ"  # pixel format size, DDPF_FOURCC, FourCC
    return bytes(header)


def test_decoder_not_implemented_is_a_bad_image():
    from PIL import Image

    from dsocr.runtime import errors
    from dsocr.runtime.capi import bridge

    with pytest.raises(NotImplementedError):  # what Pillow does with these bytes
        Image.open(io.BytesIO(dds_unknown_fourcc())).load()
    with pytest.raises(errors.ImageError) as e:
        bridge.decode_image(dds_unknown_fourcc())
    assert bridge.status_of(e.value)[0] == bridge.Status.BAD_IMAGE and "not a readable image" in str(e.value)


def test_readme_recipe_with_an_editable_venv(lib, repo_root, demo_bundle, sample_page, tmp_path):
    """README's C API recipe: a fresh venv with dsocr installed editable (pip install -e), a C program
    linked against libdsocr, run with DSOCR_PYTHON_VENV and nothing else, OCRs the demo bundle."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    packages = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    deps = sorted({p for p in sys.path if p.endswith("site-packages") and os.path.isdir(p)})
    (packages / "deps.pth").write_text("\n".join(deps) + "\n")  # numpy, onnxruntime, ...: not dsocr (no .pth there)
    r = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "-e", str(repo_root)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert list(packages.glob("__editable__*.pth"))  # an editable install: a .pth and a finder, not a path
    (tmp_path / "ocr.c").write_text(readme_c_example(repo_root))
    exe = compile_host(tmp_path / "ocr.c", lib, tmp_path / "ocr")
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", VENV_ENV, "VIRTUAL_ENV")}
    # an embedded Python finds its prefix through a `python3` on PATH: drop activated venvs' bin/ (CI runs in one)
    clean["PATH"] = os.pathsep.join(d for d in clean.get("PATH", os.defpath).split(os.pathsep)
                                    if not (Path(d).parent / "pyvenv.cfg").is_file())

    def run(env):
        return subprocess.run([str(exe), str(demo_bundle), str(sample_page)], capture_output=True, text=True,
                              timeout=600, env=env, cwd=tmp_path)

    r = run(clean | {VENV_ENV: str(venv)})
    assert r.returncode == 0 and r.stdout.strip(), r.stderr
    r = run(clean | {"PYTHONPATH": str(packages)})  # the old recipe: site-packages as a plain path
    assert r.returncode == 1 and "No module named 'dsocr'" in r.stderr and VENV_ENV in r.stderr, r.stderr
    r = run(clean | {VENV_ENV: str(tmp_path)})  # not a venv
    assert r.returncode == 1 and "has no pyvenv.cfg" in r.stderr, r.stderr
    (venv / "pyvenv.cfg").write_text((venv / "pyvenv.cfg").read_text().replace(
        f"version = {sys.version_info.major}.{sys.version_info.minor}", "version = 3.2"))
    r = run(clean | {VENV_ENV: str(venv)})
    assert r.returncode == 1 and "was made by Python 3.2" in r.stderr, r.stderr
