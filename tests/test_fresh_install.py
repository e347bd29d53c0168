"""A fresh machine is the truth: build the wheel, install it into empty virtual environments (no system
site-packages, nothing from the environment running the tests) and, through the CLIs only, build every
precision of the demo model (extra `export`) and OCR the sample page with each (extra `ort` alone: no
torch there). A dependency the code imports but pyproject.toml does not declare fails here.

Heavy (two installs, five builds): `slow`, run by .ci/run after the main suite."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

TORCH = "torch==2.13.0"  # the CPU build; an open range could pull a multi-GB CUDA build
PRECISIONS = ("fp32", "fp16", "int8", "int8-weight", "int4-weight")
MAX_NEW_TOKENS = 8


def clean_env(venv: Path) -> dict[str, str]:
    """The environment of a new shell with `venv` activated: no PYTHONPATH, no other virtual environment."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP", "PYTHONNOUSERSITE")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    env["PYTHONNOUSERSITE"] = "1"  # nor ~/.local
    return env


def sh(args: list, venv: Path | None, cwd: Path, timeout: int = 1800) -> subprocess.CompletedProcess:
    env = clean_env(venv) if venv else None
    t = time.monotonic()
    r = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    print(f"[{time.monotonic() - t:6.1f} s] {' '.join(str(a) for a in args)}")
    assert r.returncode == 0, f"{args} exited {r.returncode}\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return r


def make_venv(path: Path, *requirements: str, cwd: Path) -> Path:
    sh([sys.executable, "-m", "venv", path], None, cwd)  # no --system-site-packages
    sh([path / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check", *requirements],
       path, cwd)
    return path


@pytest.fixture(scope="module")
def wheel(repo_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    sh([sys.executable, "-m", "build", "--wheel", "--outdir", out, repo_root], None, out)
    (whl,) = out.glob("dsocr-*.whl")
    return whl


@pytest.fixture(scope="module")
def export_venv(wheel, tmp_path_factory):
    root = tmp_path_factory.mktemp("venv-export")
    yield make_venv(root / "venv", TORCH, f"{wheel}[export]", cwd=root)
    shutil.rmtree(root, ignore_errors=True)  # ~1.5 GB: pytest would keep it with the last 3 runs


@pytest.fixture(scope="module")
def ort_venv(wheel, tmp_path_factory):
    root = tmp_path_factory.mktemp("venv-ort")
    yield make_venv(root / "venv", f"{wheel}[ort]", cwd=root)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def bundles(export_venv, tmp_path_factory):
    """Every precision built with `dsocr-export build` in the export venv: {precision: bundle dir}."""
    work = tmp_path_factory.mktemp("bundles")
    fp32 = work / "small"
    cli = export_venv / "bin" / "dsocr-export"
    r = sh([cli, "build", "--mode", "small", "--out", fp32, "--quiet"], export_venv, work)
    assert "built-in demo checkpoint" in r.stdout
    out = {"fp32": fp32}
    for p in PRECISIONS[1:]:
        r = sh([cli, "build", "--mode", "small", "--out", fp32, "--precision", p, "--calib-pages", "2", "--quiet"],
               export_venv, work)
        assert "using the existing fp32 bundle" in r.stdout, r.stdout
        out[p] = work / f"small-{p}"
    for p, path in out.items():
        manifest = json.loads((path / "manifest.json").read_text())
        size = sum(e["bytes"] for e in manifest["files"].values())
        print(f"{p:12s} {size / 2**20:7.1f} MiB  {path}")
    yield out
    shutil.rmtree(work, ignore_errors=True)


def test_every_module_imports_in_the_export_venv(export_venv, tmp_path):
    code = ("import pkgutil, importlib, sys\n"
            "import dsocr.runtime, dsocr.calibration, dsocr.engines, dsocr.export\n"
            "pkgs = (dsocr.runtime, dsocr.calibration, dsocr.engines, dsocr.export)\n"
            "mods = [m.name for p in pkgs for m in pkgutil.walk_packages(p.__path__, p.__name__ + '.')]\n"
            "for m in mods:\n"
            "    if not m.endswith('__main__'):\n"
            "        importlib.import_module(m)\n"
            "print(len(mods), dsocr.runtime.__file__)")
    r = sh([export_venv / "bin" / "python", "-c", code], export_venv, tmp_path)
    count, where = r.stdout.split()
    assert int(count) > 40 and where.startswith(str(export_venv))  # the wheel's copy, not the work tree


def test_ort_venv_has_no_torch(ort_venv, tmp_path):
    code = ("import importlib.util, sys\nimport dsocr.runtime.pipeline, dsocr.runtime.backends.ort\n"
            "print(importlib.util.find_spec('torch') is None, importlib.util.find_spec('onnx') is None)")
    r = sh([ort_venv / "bin" / "python", "-c", code], ort_venv, tmp_path)
    assert r.stdout.split() == ["True", "True"]


@pytest.mark.parametrize("venv", ["export", "ort"])
@pytest.mark.parametrize("precision", PRECISIONS)
def test_precision_builds_and_runs_from_a_fresh_install(precision, venv, bundles, request, repo_root, tmp_path):
    """`dsocr run` on the sample page in the venv that built the bundle and in the torch-free `ort` one."""
    venv = request.getfixturevalue(f"{venv}_venv")
    bundle = bundles[precision]
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["precision"] == precision and manifest["modes"] == ["small"]
    page = repo_root / "runtime" / "data" / "sample_page.png"
    out = tmp_path / "out"
    r = sh([venv / "bin" / "dsocr", "run", "--model", bundle, page, "-o", out, "--max-new-tokens", MAX_NEW_TOKENS,
            "--quiet"], venv, tmp_path, timeout=600)
    assert "1 page(s) done, 0 already done, 0 failed" in r.stdout, r.stdout + r.stderr
    result = json.loads((out / "sample_page.json").read_text())
    assert result["n_generated"] >= 1 and result["stop_reason"] in ("max_tokens", "eos", "loop"), result
    assert (out / "sample_page.md").is_file() and not (out / "errors.jsonl").exists()
