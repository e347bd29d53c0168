"""`dsocr serve` / `dsocr ray-run` --help stay light; the packages and extras are in pyproject (no extra needed)."""
from __future__ import annotations

import subprocess
import sys

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

HEAVY = ("fastapi", "uvicorn", "starlette", "pydantic", "prometheus_client", "ray", "pyarrow", "onnxruntime", "torch")


@pytest.mark.parametrize("command", ["serve", "ray-run"])
def test_help_imports_nothing_heavy(command):
    code = ("import sys\nfrom click.testing import CliRunner\nfrom dsocr.runtime.cli import main\n"
            f"r = CliRunner().invoke(main, [{command!r}, '--help'])\nassert r.exit_code == 0, r.output\n"
            "assert '--model' in r.output\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_serve_and_ray_packages_are_mapped(repo_root):
    cfg = tomllib.loads((repo_root / "pyproject.toml").read_text())
    tool = cfg["tool"]["setuptools"]
    assert tool["package-dir"]["dsocr.serve"] == "serve" and tool["package-dir"]["dsocr.ray"] == "raydata"
    for pkg, folder in (("dsocr.serve", "serve"), ("dsocr.ray", "raydata")):
        subpackages = {pkg + "." + ".".join(p.parent.relative_to(repo_root / folder).parts)
                       for p in (repo_root / folder).rglob("__init__.py") if p.parent != repo_root / folder}
        assert {pkg, *subpackages} <= set(tool["packages"])
    extras = cfg["project"]["optional-dependencies"]
    assert {r.split(">")[0] for r in extras["serve"]} == {"fastapi", "uvicorn", "prometheus-client"}
    assert any(r.startswith("ray[data]") for r in extras["ray"])




def test_serve_exits_1_when_the_bundle_does_not_load(tmp_path):
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    out = subprocess.run([sys.executable, "-m", "dsocr.runtime.cli", "serve", "--model", str(tmp_path), "--port", "0"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "could not be loaded" in out.stderr and "manifest" in out.stderr.lower()
