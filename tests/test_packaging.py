"""The wheel holds every module (a subpackage missing from pyproject would silently drop out of it,
while an editable install hides that) and each module imports from the wheel alone."""
import re
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


def readme_test_command(repo_root: Path) -> str:
    text = (repo_root / "README.md").read_text(encoding="utf-8")
    block = text.split("\nTests:\n", 1)[1]
    return re.search(r"```bash\n(.*?)\n```", block, re.S).group(1).strip()


def test_ci_runs_the_readme_test_command_in_a_fresh_venv(repo_root):
    """.ci/run makes its own virtual environment (never --system-site-packages), installs the CPU torch
    first, runs the README's test command verbatim inside it, then the fresh-install tier."""
    command = readme_test_command(repo_root)
    assert command.startswith('pip install "torch==2.13.0"') and "python -m pytest" in command
    lines = [ln.strip() for ln in (repo_root / ".ci" / "run").read_text().splitlines() if not ln.lstrip().startswith("#")]
    script = "\n".join(lines)
    assert "--system-site-packages" not in script
    venv = next(i for i, ln in enumerate(lines) if re.match(r"python3? -m venv ", ln))
    activate = next(i for i, ln in enumerate(lines) if ln.startswith("source ") and ln.endswith('/bin/activate"'))
    torch = next(i for i, ln in enumerate(lines) if 'pip install -q "torch==2.13.0"' in ln)
    readme = next(i for i, ln in enumerate(lines) if command in ln)
    slow = next(i for i, ln in enumerate(lines) if "-m slow tests/test_fresh_install.py" in ln)
    assert venv < activate < torch < readme < slow
    assert "-eq 5" in script  # pytest's exit 5 (no test ran) is turned into a failure
