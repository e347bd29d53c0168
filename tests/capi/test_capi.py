"""libdsocr: the C test program (compiled here with the system compiler), the README's C example,
and the same calls through the ctypes binding."""
import re
import shutil
import subprocess

import pytest

from dsocr.runtime.capi import HERE, build_library

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")

TESTS = HERE.parents[1] / "tests" / "capi"


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    return build_library(tmp_path_factory.mktemp("capi"))


def _compile(src, lib, out):
    cmd = ["cc", "-O1", "-Wall", "-Werror", f"-I{HERE}", str(src), "-o", str(out), f"-L{lib.parent}", "-ldsocr",
           f"-Wl,-rpath,{lib.parent}", "-lpthread"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return out


def _run_c_test(lib, demo_bundle, sample_page, cycles, tmp_path):
    exe = _compile(TESTS / "test_capi.c", lib, tmp_path / "test_capi")
    r = subprocess.run([str(exe), str(demo_bundle), str(sample_page), str(cycles)], capture_output=True, text=True,
                       timeout=3600)
    assert r.returncode == 0 and "PASS" in r.stdout, r.stdout + r.stderr
    before, after = map(int, re.search(r"RSS_KB (\d+) (\d+)", r.stdout).groups())
    return before, after


def test_c_program(lib, demo_bundle, sample_page, tmp_path):
    before, after = _run_c_test(lib, demo_bundle, sample_page, 30, tmp_path)
    assert after - before < 64 * 1024, (before, after)  # 30 create/run/destroy cycles: < 64 MiB growth


@pytest.mark.slow
def test_c_program_1000_cycles_memory_flat(lib, demo_bundle, sample_page, tmp_path):
    before, after = _run_c_test(lib, demo_bundle, sample_page, 1000, tmp_path)
    print(f"RSS before {before} KiB, after 1000 cycles {after} KiB")
    assert after - before < 32 * 1024, (before, after)


def test_readme_c_example_compiles(lib, repo_root, tmp_path):
    text = (repo_root / "README.md").read_text()
    code = re.search(r"```c\n(.*?)```", text, re.S).group(1)
    (tmp_path / "example.c").write_text(code)
    _compile(tmp_path / "example.c", lib, tmp_path / "example")


def test_ctypes_binding(lib, demo_bundle, sample_page):
    from dsocr.runtime.capi.ctypes_api import DsocrError, Library

    api = Library(lib)
    assert api.lib.dsocr_api_version() == 1 and api.lib.dsocr_bundle_format_version() == 1
    with pytest.raises(DsocrError) as e:
        api.open_model("/nonexistent")
    assert e.value.status == 2
    model = api.open_model(demo_bundle)
    session = api.create_session(model)
    pieces = []
    page = api.run_encoded(session, sample_page.read_bytes(), max_new_tokens=4, on_text=pieces.append)
    assert page.stop_reason == "max_tokens" and "".join(pieces)
    with pytest.raises(DsocrError) as e:
        api.run_encoded(session, b"\x89PNG broken", max_new_tokens=2)
    assert e.value.status == 3
    with pytest.raises(DsocrError) as e:
        api.run_encoded(session, sample_page.read_bytes(), mode="gundam")
    assert e.value.status == 5 and "rebuild" in str(e.value)
    api.lib.dsocr_session_destroy(session)
    api.lib.dsocr_model_destroy(model)
    api.lib.dsocr_session_destroy(None)
