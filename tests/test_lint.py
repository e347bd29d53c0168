"""Lint in the test run: ruff (pyflakes, pycodestyle; config in pyproject.toml) and import-linter (the
one-way layers and the torch-free floor). Both tools come with the dev extra: a missing one fails."""
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent  # the environment running the tests, activated or not


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_ruff_check_passes(repo_root):
    out = _run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."], repo_root)
    assert out.returncode == 0, out.stdout + out.stderr


def test_ruff_config_catches_an_unused_import(repo_root, tmp_path):
    """The config really selects pyflakes: a file with an unused import fails under it."""
    bad = tmp_path / "bad.py"
    bad.write_text("import os\n")
    out = _run([sys.executable, "-m", "ruff", "check", "--no-cache", "--config", str(repo_root / "pyproject.toml"),
                str(bad)], tmp_path)
    assert out.returncode == 1 and "F401" in out.stdout, out.stdout + out.stderr


def test_import_linter_contracts_are_kept(repo_root):
    exe = BIN / "lint-imports"
    assert exe.is_file(), f"{exe} missing: install the dev extra"
    out = _run([str(exe)], repo_root)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "KEPT" in out.stdout and " 0 broken" in out.stdout, out.stdout


def test_test_file_basenames_are_unique(repo_root):
    """pytest imports test modules by basename (no __init__.py in tests/): two test_x.py in different
    folders stop the whole run at collection."""
    import collections

    names = collections.Counter(p.name for p in (repo_root / "tests").rglob("test_*.py"))
    assert not [n for n, c in names.items() if c > 1]
