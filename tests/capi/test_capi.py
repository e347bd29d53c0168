"""libdsocr (runtime/capi): the C test program and an init probe compiled here with the system
compiler, the README's C example, the header against the bridge and the exported symbols, and the
same calls through the ctypes binding."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from dsocr.runtime.capi import HEADER, HERE, build_library, embed_env

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


def run_c_test(lib, demo_bundle, sample_page, tmp_path, cycles: int, model_cycles: int = 0) -> str:
    exe = compile_host(TESTS / "test_capi.c", lib, tmp_path / "test_capi")
    r = run_host([exe, demo_bundle, sample_page, cycles, model_cycles], timeout=7200)
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


def test_ctypes_binding_in_process(lib, demo_bundle, sample_page):
    """The interpreter is already running here: libdsocr must use it, not start another."""
    from dsocr.runtime.capi.ctypes_api import DsocrError, Library

    api = Library(lib)
    assert api.lib.dsocr_api_version() == 1 and api.lib.dsocr_bundle_format_version() == 1
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
    api.lib.dsocr_session_destroy(None)
    api.lib.dsocr_model_destroy(None)
