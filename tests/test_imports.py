"""The one-way import rule: runtime is the floor (no torch, no export), CLIs' --help stay light."""
import subprocess
import sys

import pytest


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


RUNTIME_MODULES = [
    "dsocr.runtime.pipeline", "dsocr.runtime.cli", "dsocr.runtime.backends.ort", "dsocr.runtime.preprocess",
    "dsocr.runtime.decoding", "dsocr.runtime.postprocess", "dsocr.runtime.pdf", "dsocr.runtime.batch",
]


def test_runtime_imports_neither_torch_nor_export():
    code = "import sys\n" + "".join(f"import {m}\n" for m in RUNTIME_MODULES) + (
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'dsocr.export', 'tensorrt')))\n"
        "print(','.join(bad))"
    )
    assert _run(code).strip() == ""


@pytest.mark.parametrize("module", ["dsocr.export.cli", "dsocr.runtime.cli"])
def test_cli_help_does_not_import_torch(module):
    code = (
        "import sys\nfrom click.testing import CliRunner\n"
        f"from {module} import main\n"
        "r = CliRunner().invoke(main, ['--help'])\nassert r.exit_code == 0, r.output\n"
        "for name in list(main.commands):\n"
        "    r = CliRunner().invoke(main, [name, '--help'])\n    assert r.exit_code == 0, (name, r.output)\n"
        "print('torch' in sys.modules, 'tensorrt' in sys.modules)"
    )
    assert _run(code).strip() == "False False"


def test_import_linter_contract(repo_root):
    pytest.importorskip("importlinter")
    out = subprocess.run(["lint-imports"], cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "KEPT" in out.stdout
