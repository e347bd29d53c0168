"""The wheel holds every module (a subpackage missing from pyproject would silently drop out of it,
while an editable install hides that) and each module imports from the wheel alone."""
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

PACKAGE_DIRS = {"runtime": "dsocr/runtime", "export": "dsocr/export", "engines": "dsocr/engines",
                "calibration": "dsocr/calibration"}


@pytest.fixture(scope="module")
def wheel(repo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(out),
                        str(repo_root)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    (whl,) = out.glob("dsocr-*.whl")
    return whl


def _source_modules(repo_root: Path) -> set[str]:
    mods = set()
    for src, dst in PACKAGE_DIRS.items():
        for f in (repo_root / src).rglob("*.py"):
            mods.add(f"{dst}/{f.relative_to(repo_root / src).as_posix()}")
    return mods


def test_wheel_contains_every_module_and_data_file(wheel, repo_root):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted(_source_modules(repo_root) - names)
    assert not missing, f"not in the wheel (add the subpackage to pyproject): {missing}"
    assert not any(n.startswith("dsocr/__init__") for n in names)  # PEP 420 namespace
    assert "dsocr/runtime/capi/dsocr.h" in names


def test_every_module_imports_from_the_wheel_alone(wheel, repo_root, tmp_path):
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    mods = sorted(m[:-3].replace("/", ".").removesuffix(".__init__") for m in _source_modules(repo_root))
    mods = [m for m in mods if not m.endswith("__main__")]
    # -S: no site processing, so no .pth file (and no editable finder) is read; deps come from site-packages.
    code = (
        "import sys, importlib\n"
        f"sys.path[:0] = [{str(tmp_path / 'site')!r}]\nsys.path += {site.getsitepackages()!r}\n"
        f"for m in {mods!r}:\n    importlib.import_module(m)\n"
        "import dsocr.runtime as r\nprint(r.__file__)"
    )
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert str(tmp_path / "site") in out.stdout
